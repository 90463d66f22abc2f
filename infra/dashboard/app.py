"""The dashboard's web application (Starlette + Jinja2; no build step, no vendored JS).

Routes:

* ``GET /`` — the page (``templates/index.html``); ``static/dashboard.js`` polls
  ``/api/state`` every second and redraws the fleet, curves, lag and dead letters.
* ``GET /api/state`` — :meth:`~infra.dashboard.state.Watch.snapshot` as JSON.
* ``GET /camera/{robot_id}.png`` — the robot's latest camera frame, downscaled.
* ``POST /api/command`` — ``{"robot_id", "command": pause|resume|stop|estop, "reason"}``:
  publishes the same ``CommandV1`` as ``userctl command`` (one code path,
  :func:`infra.cmd_fleet.send_command`).  JSON bodies only, so a form on another site
  cannot post one (a cross-origin JSON request needs a CORS pre-flight, which this app
  never grants).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from infra.dashboard.state import Watch
from schemas import events as ev

HERE = Path(__file__).resolve().parent

#: Publishes one command; returns the event sent (the CLI's code path in production).
CommandSender = Callable[[str, ev.CommandKind, str], ev.CommandV1]


def build_app(watch: Watch, send: CommandSender, *, title: str = "USER fleet",
              start_watch: bool = True) -> Starlette:
    """The ASGI app over ``watch``; starts and stops the watch with the server."""
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    async def index(request: Request) -> Response:
        return templates.TemplateResponse(request, "index.html", {
            "title": title, "bootstrap": watch.kafka.bootstrap,
            "commands": [c.value for c in ev.CommandKind]})

    async def state(request: Request) -> Response:
        return JSONResponse(watch.snapshot())

    async def camera(request: Request) -> Response:
        robot_id = request.path_params["robot_id"]
        found = await run_in_threadpool(watch.thumbnail, robot_id)
        if found is None:
            return JSONResponse({"error": f"no camera frame from {robot_id!r} yet"},
                                status_code=404)
        png, seq = found
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "no-store", "X-Frame-Seq": str(seq)})

    async def command(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send JSON (Content-Type: application/json)"},
                                status_code=415)
        try:
            body = await request.json()
            robot_id = str(body["robot_id"])
            order = ev.CommandKind(body["command"])
            reason = str(body.get("reason") or "from the dashboard")[:1000]
        except (ValueError, KeyError, TypeError) as exc:
            return JSONResponse({"error": f"bad command: {exc}"}, status_code=400)
        try:
            sent = await run_in_threadpool(send, robot_id, order, reason)
        except ValidationError as exc:
            return JSONResponse({"error": exc.errors()[0]["msg"]}, status_code=400)
        except (TimeoutError, RuntimeError) as exc:
            return JSONResponse({"error": f"not sent: {exc}"}, status_code=503)
        return JSONResponse({"sent": sent.model_dump(mode="json")})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if start_watch:
            watch.start()
        try:
            yield
        finally:
            if start_watch:
                await run_in_threadpool(watch.stop)

    return Starlette(routes=[
        Route("/", index),
        Route("/api/state", state),
        Route("/api/command", command, methods=["POST"]),
        Route("/camera/{robot_id}.png", camera),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ], lifespan=lifespan)
