"""Watching a fleet learn: TensorBoard files, the dashboard's app and view, `history compare`,
and what `userctl status` adds per role (no processes, no network)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from PIL import Image
from starlette.testclient import TestClient

from infra import cli, cmd_compare, role_status
from infra.dashboard import Watch, build_app
from infra.supervisor import RoleSpec
from learners import tensorboard
from schemas import events as ev
from schemas import samples
from topics import tables
from topics.settings import KafkaSettings
from topics.validation import Accepted, Record


def _accepted(event: object) -> Accepted:
    return Accepted(Record("t", 0, 0, b""), event)  # type: ignore[arg-type]


def _metrics(stream: str, step: int, **metrics: float | None) -> ev.LearnerMetricsV1:
    return ev.LearnerMetricsV1(experiment_id=stream, learner_step=step, policy_version=step // 10,
                               metrics=metrics)


# -- TensorBoard ---------------------------------------------------------------------------


def test_learner_metrics_become_tensorboard_scalars_per_robot_type(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = tensorboard.TensorBoardMetrics(tmp_path / "runs", "exp-1", flush_s=1)
    for step in (10, 20, 30):
        sink.send(_metrics("exp-1.reacher2d", step, **{
            "losses/critic": 1.0 / step, "charts/success_rate": step / 100,
            "replay/version_lag_mean": None}))
    sink.send(_metrics("exp-1.arm7", 5, **{"losses/critic": 2.0}))
    sink.close()

    root = tmp_path / "runs" / "exp-1" / "tb"
    assert sorted(p.name for p in root.iterdir()) == ["arm7", "reacher2d"]
    acc = EventAccumulator(str(root / "reacher2d"))
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert {"losses/critic", "charts/success_rate", "weights/policy_version"} <= set(scalars)
    assert "replay/version_lag_mean" not in scalars  # None is a gap, not a zero
    got = [(e.step, round(e.value, 6)) for e in acc.Scalars("charts/success_rate")]
    assert got == [(10, 0.1), (20, 0.2), (30, 0.3)]


def test_userctl_tensorboard_names_the_experiments_that_have_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "exp-1" / "tb" / "reacher2d").mkdir(parents=True)
    assert cli.main(["tensorboard", "exp-1", "--runs", str(tmp_path), "--print-logdir"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "exp-1" / "tb")
    assert cli.main(["tensorboard", "nope", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no TensorBoard files for 'nope'" in err and "exp-1" in err and "\n" not in err


# -- the dashboard -----------------------------------------------------------------------------


@pytest.fixture
def watch() -> Watch:
    w = Watch(KafkaSettings())
    spec = samples.robot_spec(obs_dim=4, act_dim=2, cameras=("overhead",), image_hw=(8, 8))
    for event in (
        ev.RobotAnnouncedV1(site="lab-a", robot_id="r1", spec=spec),
        ev.HeartbeatV1(site="lab-a", robot_id="r1", seq=0, state=ev.RobotState.IDLE,
                       steps_total=10, spool_bytes=2048),
        _metrics("exp-1.reacher", 100, **{"charts/env_steps": 1000.0,
                                           "charts/success_rate": 0.25}),
    ):
        w._apply(_accepted(event))
    w._apply(_accepted(samples.batch(spec, 3, robot_id="r1")))
    return w


def test_the_state_has_the_robot_its_spool_its_frame_and_the_curve(watch: Watch) -> None:
    snap = watch.snapshot()
    (robot,) = snap["robots"]  # type: ignore[misc]
    assert robot["robot_id"] == "r1" and robot["spool_bytes"] == 2048
    assert robot["cameras"] == ["overhead"] and robot["frame"]["seq"] == 1
    (learner,) = snap["learners"]  # type: ignore[misc]
    assert learner["robot_type"] == "reacher" and learner["success_rate"] == 0.25


def test_a_thumbnail_is_a_png_enlarged_from_a_tiny_camera(watch: Watch) -> None:
    found = watch.thumbnail("r1")
    assert found is not None
    png, seq = found
    picture = Image.open(io.BytesIO(png))
    assert picture.format == "PNG" and seq == 1 and max(picture.size) >= 64
    assert watch.thumbnail("nobody") is None


def test_the_app_serves_state_camera_and_takes_json_commands_only(watch: Watch) -> None:
    sent: list[ev.CommandV1] = []

    def send(robot_id: str, order: ev.CommandKind, reason: str) -> ev.CommandV1:
        sent.append(ev.CommandV1(robot_id=robot_id, command=order, reason=reason))
        return sent[-1]

    with TestClient(build_app(watch, send, start_watch=False)) as client:
        assert "E-STOP" not in client.get("/").text  # the buttons are drawn by the script
        assert client.get("/api/state").json()["robots"][0]["robot_id"] == "r1"
        camera = client.get("/camera/r1.png")
        assert camera.headers["content-type"] == "image/png"
        assert client.get("/camera/r9.png").status_code == 404
        assert client.post("/api/command", data={"robot_id": "r1", "command": "estop"}
                           ).status_code == 415
        assert client.post("/api/command", json={"robot_id": "r1", "command": "explode"}
                           ).status_code == 400
        ok = client.post("/api/command", json={"robot_id": "r1", "command": "estop"})
        assert ok.status_code == 200 and ok.json()["sent"]["command"] == "estop"
        assert client.get("/static/dashboard.js").status_code == 200
    assert [c.command for c in sent] == [ev.CommandKind.ESTOP]


# -- history compare ---------------------------------------------------------------------------


def _transitions(root: Path) -> None:
    """Two experiments: ``fast`` succeeds from its 3rd episode on, ``slow`` never."""
    rows: dict[str, list[object]] = {k: [] for k in (
        "experiment_id", "robot_id", "episode_id", "success", "observed_ns", "reward_fn")}
    for exp, good_from in (("fast", 2), ("slow", 99)):
        for ep in range(6):
            for step in range(10):
                rows["experiment_id"].append(exp)
                rows["robot_id"].append("r1")
                rows["episode_id"].append(f"ep-{ep}")
                rows["success"].append(ep >= good_from and step == 9)
                rows["observed_ns"].append((ep * 10 + step) * 50_000_000)
                rows["reward_fn"].append("reach_dense@1")
    write_deltalake(str(tables.table_path(root, tables.TRANSITIONS)), pa.table(rows))


def test_compare_computes_success_vs_steps_and_wall_clock_from_delta(tmp_path: Path) -> None:
    _transitions(tmp_path)
    fast, slow = cmd_compare.series(tmp_path, ["fast", "slow"], "reach_dense@1", window=2)
    assert fast.episodes == 6 and list(fast.env_steps) == [10, 20, 30, 40, 50, 60]
    assert list(fast.success_rate) == [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    assert np.allclose(fast.wall_s, [0.45, 0.95, 1.45, 1.95, 2.45, 2.95])
    assert list(slow.success_rate) == [0.0] * 6


def test_userctl_history_compare_prints_and_plots(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _transitions(tmp_path)
    out = tmp_path / "cmp.png"
    assert cli.main(["history", "--root", str(tmp_path), "compare", "fast", "slow", "none",
                     "--window", "2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fast" in printed and "100%" in printed and "(no episodes for none)" in printed
    assert Image.open(out).format == "PNG"


def test_rolling_mean_uses_fewer_values_at_the_start() -> None:
    assert list(cmd_compare.rolling_mean(np.array([1, 0, 1, 1]), 3)) == [1.0, 0.5, 2 / 3, 2 / 3]


# -- userctl status per role -------------------------------------------------------------------


def test_roles_map_to_the_consumer_groups_they_commit_under() -> None:
    assert role_status.role_group(RoleSpec(userctl=["sink"]), {}) == tables.DEFAULT_SINK_NAME
    assert role_status.role_group(RoleSpec(userctl=["sink"]), {"USER_SINK_NAME": "s2"}) == "s2"
    assert role_status.role_group(RoleSpec(userctl=["rewards", "run", "reach_dense@1"]),
                                  {}) == "rewards-reach_dense-1"
    assert role_status.role_group(RoleSpec(userctl=["controller"]), {}) is None


def test_the_last_error_of_a_role_log_is_its_newest_error_or_exception(tmp_path: Path) -> None:
    log = tmp_path / "role.log"
    assert role_status.last_error(log) == ""
    log.write_text("12:00:00 INFO x: fine\n12:00:01 ERROR x: disk full\n12:00:02 INFO x: ok\n")
    assert role_status.last_error(log) == "12:00:01 ERROR x: disk full"
    with log.open("a") as f:
        f.write('Traceback (most recent call last):\n  File "x.py", line 1\n'
                "ValueError: bad spec\n")
    assert role_status.last_error(log) == "ValueError: bad spec"
