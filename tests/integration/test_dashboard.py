"""`userctl dashboard` in a real browser: headless Debian Chromium driven by Playwright.

A broker of this module's own (the scheduler serves every experiment in the log), a real
controller, a real agent hosting a simulated reacher with an ``overhead`` camera, and the
dashboard process.  A learner's metrics are published to ``learner.metrics`` by the test
(as the learner does) so a curve has something to draw.  Screenshots are kept under the
test's tmp dir and, with ``CI=true``, under ``test-artifacts/`` (ignored by git).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from schemas import events as ev
from tests.conftest import REPO, Processes, catalog_broker, free_port
from topics import catalog
from topics.follow import Follower
from topics.producer import EventProducer
from topics.settings import KafkaSettings, SiteMap
from topics.validation import Accepted

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout_s: float = 90.0) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)  # polling a condition, not synchronising on time
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory, kafka_libs: Path
          ) -> Iterator[KafkaSettings]:
    yield from catalog_broker(tmp_path_factory.mktemp("dashboard-kafka"), kafka_libs)


def save_screenshot(page: object, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
    if os.environ.get("CI") == "true":
        out = REPO / "test-artifacts"
        out.mkdir(exist_ok=True)
        shutil.copy(path, out / path.name)
    return path


def test_the_dashboard_shows_the_fleet_a_curve_a_live_camera_and_its_estop_stops_a_robot(
    kafka: KafkaSettings, unique: str, processes: Processes, tmp_path: Path,
) -> None:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: `make browser` installs it"
    site = f"dash-{unique}"
    robot = f"cam-{unique}"
    env = {
        **os.environ, "USER_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "USER_KAFKA_SITES": f"{site}={','.join(map(str, SiteMap().sites['lab-a']))}",
        "USER_HOME": str(tmp_path / "home"), "USER_AGENT_FLUSH_MS": "200",
        "USER_AGENT_CAMERAS": '["overhead"]', "USER_AGENT_CAMERA_SIZE": "[48, 48]",
        "USER_DASHBOARD_POLL_S": "1",
    }
    port = free_port()
    processes.userctl("controller", "controller", env=env)
    processes.userctl("agent", "agent", "--robot-type", "reacher2d", "--site", site,
                      "--robot-id", robot, env=env)
    dashboard = processes.userctl("dashboard", "dashboard", "--port", str(port), env=env)
    name = f"dash-{unique}"
    spec = tmp_path / "exp.yaml"
    spec.write_text(json.dumps({"name": name, "robots": [
        {"robot_type": "reacher2d", "sites": [site]}]}))
    base = f"http://127.0.0.1:{port}"

    def state() -> dict[str, object] | None:
        assert dashboard.poll() is None, processes.log("dashboard")
        try:
            with urllib.request.urlopen(f"{base}/api/state", timeout=5) as res:
                return dict(json.loads(res.read()))
        except OSError:
            return None

    def my_robot() -> dict[str, object] | None:
        s = state()
        robots = s["robots"] if s else []
        assert isinstance(robots, list)
        return next((r for r in robots if r["robot_id"] == robot), None)

    wait_for("the robot in the dashboard's state", my_robot)
    submit = processes.userctl("submit", "experiments", "submit", str(spec), env=env)
    assert submit.wait(timeout=60) == 0, processes.log("submit")
    wait_for("the robot to run", lambda: (r := my_robot()) and r["state"] == "running"
             and r["frame"])

    # What a learner publishes every few seconds, per robot type (its weights stream).
    metrics = EventProducer(kafka, role="test-learner")
    for i in range(1, 6):
        metrics.send(catalog.LEARNER_METRICS, ev.LearnerMetricsV1(
            experiment_id=f"{name}.reacher2d", learner_step=100 * i, policy_version=i,
            metrics={"charts/env_steps": 500.0 * i, "charts/success_rate": 0.15 * i,
                     "losses/critic": 1.0 / i, "charts/updates_per_s": 20.0}))
    metrics.flush(30.0)

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(base + "/")
            row = page.locator(f'tr[data-robot="{robot}"]')
            row.wait_for(timeout=60_000)
            assert "reacher2d" in row.inner_text() and site in row.inner_text()
            page.locator(f'tr[data-robot="{robot}"] [data-state="running"]').wait_for(
                timeout=60_000)

            # A curve renders: the success line of the reacher, five points.
            line = page.locator(f'svg.chart-success_rate polyline[data-stream="{name}.reacher2d"]')
            line.wait_for(timeout=60_000)
            assert len((line.get_attribute("points") or "").split()) == 5

            # The camera thumbnail is a decoded image and it updates.
            thumb = row.locator("img.thumb")
            thumb.wait_for(timeout=60_000)
            first = int(thumb.get_attribute("data-seq") or 0)
            page.wait_for_function(
                """([id, seq]) => {
                     const img = document.querySelector(`tr[data-robot="${id}"] img.thumb`);
                     return img && Number(img.dataset.seq) > seq && img.complete
                            && img.naturalWidth > 0; }""",
                arg=[robot, first], timeout=60_000)
            assert thumb.evaluate("img => img.naturalWidth") >= 48
            shot = save_screenshot(page, tmp_path, "dashboard-running")
            assert shot.stat().st_size > 10_000

            # The e-stop button stops the robot.
            page.once("dialog", lambda d: d.dismiss())
            row.locator('button[data-command="estop"]').click()
            page.locator(f'tr[data-robot="{robot}"] [data-state="estopped"]').wait_for(
                timeout=60_000)
            page.locator(f'#commands li[data-command="estop"][data-robot="{robot}"]').wait_for(
                timeout=30_000)
            save_screenshot(page, tmp_path, "dashboard-estopped")
        finally:
            browser.close()

    # On the commands topic: the same event `userctl command` sends.
    follower = Follower(kafka, {catalog.COMMANDS: "beginning"}, role="test-commands")
    try:
        def estop() -> list[ev.CommandV1]:
            return [i.event for i in follower.poll(0.5) if isinstance(i, Accepted)
                    and isinstance(i.event, ev.CommandV1) and i.event.robot_id == robot
                    and i.event.command is ev.CommandKind.ESTOP]
        sent = wait_for("the e-stop on the commands topic", estop)
    finally:
        follower.close()
    assert sent[0].issued_by == "dashboard"
    robots = processes.userctl("robots", "robots", "--json", env=env)
    assert robots.wait(timeout=60) == 0
    listed = [json.loads(line) for line in processes.log("robots").splitlines()
              if line.startswith("{")]
    assert {r["robot_id"]: r["state"] for r in listed}.get(robot) == "estopped"
    cancel = processes.userctl("cancel", "experiments", "cancel", name, env=env)
    cancel.wait(timeout=60)
