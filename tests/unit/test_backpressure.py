"""A full spool holds the robot instead of crashing its loop, and no recorded row is lost
(failing input 3, unit level: a real worker, real MuJoCo, a real on-disk spool)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import registry
from agents.policies import RandomPolicy
from agents.spool import Spool, SpooledRecord, SpoolFull, human_bytes
from agents.worker import Lease, RobotWorker
from schemas import events as ev
from schemas.transitions import TransitionBatch
from topics import catalog, serde
from topics.settings import KafkaSettings

LEASE = Lease("exp-1", "lease-1")
SPOOL_LIMIT = 256 * 1024


class SpoolSink:
    """What the outbox does on the robot's side — encode and append to the spool — with
    no forwarder: the broker is unreachable."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.sites = KafkaSettings().sites

    def send(self, spec: catalog.TopicSpec, payload: serde.Payload, *,
             over_budget: bool = False) -> None:
        rec = serde.encode(spec, payload, sites=self.sites)
        self.spool.append(SpooledRecord(rec.topic, rec.key, rec.value, tuple(rec.headers),
                                        rec.partition), over_budget=over_budget)


class CountingHolds:
    """Counts the robot's holds (the worker's only way to keep it still)."""

    def __init__(self, worker: RobotWorker) -> None:
        self.count = 0
        hold = worker.robot.hold

        def counted():  # type: ignore[no-untyped-def]
            self.count += 1
            return hold()

        worker.robot.hold = counted  # type: ignore[method-assign]


def drain(spool: Spool) -> list[SpooledRecord]:
    """Everything spooled, acknowledged as if the broker took it."""
    out: list[SpooledRecord] = []
    while batch := spool.peek(500):
        spool.ack(len(batch))
        out.extend(batch)
    return out


def steps(records: list[SpooledRecord]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for rec in records:
        if rec.topic != catalog.TRANSITIONS_RAW.name:
            continue
        batch = serde.decode(catalog.TRANSITIONS_RAW, rec.value, rec.headers)
        assert isinstance(batch, TransitionBatch)
        out += [(str(e), int(s)) for e, s in zip(batch.episode_id, batch.step, strict=True)]
    return out


@pytest.fixture
def worker(tmp_path: Path) -> RobotWorker:
    robot = registry.make_robot("reacher2d", seed=5)
    policy = RandomPolicy(robot.spec.action, seed=5)
    return RobotWorker(robot, robot_id="r1", site="lab-a",
                       sink=SpoolSink(Spool(tmp_path / "spool", max_bytes=SPOOL_LIMIT)),
                       policy=lambda: (policy, 0), flush_steps=50, flush_s=60.0)


def test_a_full_spool_holds_the_robot_and_resumes_without_losing_a_row(
    worker: RobotWorker,
) -> None:
    sink = worker.sink
    assert isinstance(sink, SpoolSink)
    holds = CountingHolds(worker)
    for _ in range(2000):  # well past the ~470 periods after which it used to crash
        worker.tick(LEASE, [])
    assert worker.spool_full
    assert worker.state is ev.RobotState.RUNNING  # its intent; the hold is the flag
    beat = worker.heartbeat(1, 1.0, spool_bytes=sink.spool.pending_bytes)
    assert beat.spool_full and beat.spool_bytes > SPOOL_LIMIT * 0.8
    taken = worker.steps_total
    assert 0 < taken < 2000
    held = holds.count
    for _ in range(20):
        worker.tick(LEASE, [])
    assert worker.steps_total == taken, "a step was taken that the spool could not keep"
    assert holds.count == held + 20, "the robot was not held while the spool was full"

    delivered = drain(sink.spool)  # the broker is back: the spool empties
    for _ in range(120):
        worker.tick(LEASE, [])
    assert not worker.spool_full and worker.steps_total == taken + 120
    worker.tick(None, [])  # lease released: the episode ends and is flushed
    delivered += drain(sink.spool)

    recorded = steps(delivered)
    assert len(recorded) == len(set(recorded)) == worker.steps_total
    ended = [serde.decode(catalog.EPISODES, r.value, r.headers) for r in delivered
             if r.topic == catalog.EPISODES.name]
    ends = [e for e in ended if isinstance(e, ev.EpisodeEndedV1)]
    by_episode: dict[str, list[int]] = {}
    for episode, step in recorded:
        by_episode.setdefault(episode, []).append(step)
    assert {e.episode_id: list(range(e.steps)) for e in ends} == by_episode


def test_the_spool_full_message_gives_sizes_in_their_units(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=SPOOL_LIMIT)
    record = SpooledRecord("transitions.raw", b"k", b"x" * 10_000)
    with pytest.raises(SpoolFull) as caught:
        while True:
            spool.append(record)
    message = str(caught.value)
    assert f"holds {human_bytes(spool.pending_bytes)} of its 256.0 KiB limit" in message
    assert "0 MiB" not in message
    assert human_bytes(spool.pending_bytes).endswith(" KiB")
    assert [human_bytes(n) for n in (512, 1536, 3 << 20, 5 << 30)] == [
        "512 B", "1.5 KiB", "3.00 MiB", "5.00 GiB"]


def test_at_shutdown_a_held_batch_is_kept_past_the_budget(worker: RobotWorker) -> None:
    sink = worker.sink
    assert isinstance(sink, SpoolSink)
    while not worker.spool_full:
        worker.tick(LEASE, [])
    taken = worker.steps_total
    worker.close()
    assert len(steps(drain(sink.spool))) == taken
