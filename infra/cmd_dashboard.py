"""`userctl dashboard` — a live web page of the fleet (127.0.0.1, port configurable).

Fleet, learning curves per robot type, camera thumbnails, consumer lag, Delta tables and
dead letters, read from the topics and the Delta log; pause/resume/e-stop buttons publish
the same commands as `userctl command`.  See ``infra/dashboard/``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import socket
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from topics import tables
from topics.settings import KafkaSettings

log = logging.getLogger("userctl.dashboard")


class DashboardSettings(BaseSettings):
    """The dashboard server (environment prefix ``USER_DASHBOARD_``)."""

    model_config = SettingsConfigDict(env_prefix="USER_DASHBOARD_", frozen=True,
                                      extra="ignore")

    host: str = Field("127.0.0.1", description="address to bind; keep it local")
    port: int = Field(8765, ge=0, le=65535, description="TCP port")
    poll_s: float = Field(3.0, gt=0, description="consumer-lag and Delta refresh period")
    thumbnail_px: int = Field(160, ge=16, le=1024, description="camera thumbnail size")
    delta_root: Path = Field(default_factory=tables.default_root,
                             description="the sink's Delta root (for table versions)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("dashboard", help="a live web page of the fleet (127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 8765, USER_DASHBOARD_PORT)")
    p.add_argument("--host", help="address to bind (default 127.0.0.1)")
    p.set_defaults(func=_dashboard)


def _dashboard(args: argparse.Namespace) -> int:
    import uvicorn

    from infra.cmd_fleet import send_command
    from infra.dashboard import Watch, build_app
    from schemas import events as ev
    from topics.producer import EventProducer

    overrides = {k: v for k, v in (("port", args.port), ("host", args.host)) if v is not None}
    settings = DashboardSettings(**overrides)
    kafka = KafkaSettings()
    log.info("dashboard settings: %s", settings.model_dump(mode="json"))
    log.info("kafka settings: %s", kafka.redacted())
    _check_port(settings.host, settings.port)
    producer = EventProducer(kafka, role="dashboard")

    def send(robot_id: str, order: ev.CommandKind, reason: str) -> ev.CommandV1:
        return send_command(producer, robot_id, order, reason=reason,
                            issued_by="dashboard")

    watch = Watch(kafka, delta_root=settings.delta_root, poll_s=settings.poll_s,
                  thumbnail_px=settings.thumbnail_px)
    app = build_app(watch, send)
    print(f"dashboard: http://{settings.host}:{settings.port}/ (Ctrl-C stops it)", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning")
    return 0


def _check_port(host: str, port: int) -> None:
    """Fail in one line when the port is taken (uvicorn would print a traceback)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise SystemExit(f"userctl dashboard: port {port} on {host} is in use; "
                                 "choose another with --port") from None
            raise SystemExit(f"userctl dashboard: cannot listen on {host}:{port}: "
                             f"{exc.strerror}") from None
