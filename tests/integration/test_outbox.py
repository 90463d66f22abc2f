"""The agent's outbox on the real broker: a record the broker refuses is dead-lettered and
its neighbours arrive (failing input 2); a full spool holds the robot and, once the broker
is reachable, every recorded row arrives (failing input 3)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from agents import registry
from agents.outbox import Outbox
from agents.policies import RandomPolicy
from agents.worker import Lease, RobotWorker
from schemas import events as ev
from schemas import samples
from schemas.transitions import TransitionBatch
from tests.conftest import free_port
from topics import admin, catalog, limits, serde
from topics.settings import KafkaSettings

LIMIT = 4096


def make_topics(kafka: KafkaSettings, suffix: str, *, limit_of: dict[str, int]) -> None:
    specs = [catalog.TRANSITIONS_RAW, catalog.EPISODES, catalog.DLQ]
    admin.ensure_topics(kafka, [s.model_copy(update={
        "name": s.name + suffix,
        "max_message_bytes": limit_of.get(s.name, s.max_message_bytes)}) for s in specs])


def read(kafka: KafkaSettings, topic: str) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """Every record of ``topic`` (value, headers), partition by partition."""
    c = Consumer(kafka.consumer_config(f"read-{topic}", role="test"))
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
                for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        left = sum(ends.values())
        deadline = time.monotonic() + 30
        while left > 0 and time.monotonic() < deadline:
            for msg in c.consume(100, 1.0):
                if msg.error():
                    continue
                left -= 1
                out.append((msg.value() or b"", list(msg.headers() or [])))
        assert left == 0, f"{left} records of {topic} did not come back"
        return out
    finally:
        c.close()


def letters(kafka: KafkaSettings, suffix: str) -> list[ev.DeadLetterV1]:
    out = []
    for value, headers in read(kafka, catalog.DLQ.name + suffix):
        letter = serde.decode(catalog.DLQ, value, headers)
        assert isinstance(letter, ev.DeadLetterV1)
        out.append(letter)
    return out


@pytest.fixture
def suffix(unique: str) -> str:
    return f".o{unique}"


@pytest.mark.parametrize("limits_known", [True, False], ids=["limit-asked", "limit-unknown"])
def test_a_refused_record_is_dead_lettered_with_its_bytes_and_its_neighbours_arrive(
    kafka: KafkaSettings, suffix: str, tmp_path: Path, limits_known: bool,
) -> None:
    make_topics(kafka, suffix, limit_of={catalog.TRANSITIONS_RAW.name: LIMIT})
    # limit-unknown: the broker's limits cannot be asked, so the broker itself refuses the
    # record (and, in the same produce request, its neighbours).
    blind = limits.TopicLimits(KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}"),
                               timeout_s=1.0, topic_suffix=suffix)
    outbox = Outbox(kafka, tmp_path / "spool", role="agent-test", topic_suffix=suffix,
                    topic_limits=None if limits_known else blind)
    topic = catalog.TRANSITIONS_RAW.name
    values = [b"a" * 100, b"b" * 20_000, b"c" * 100]
    try:
        for value in values:
            outbox.send_record(serde.Encoded(topic, b"r1", value, [], 0))
        assert outbox.drain(60.0), "records stayed in the spool"
    finally:
        outbox.close()
    assert [v for v, _ in read(kafka, topic + suffix)] == [values[0], values[2]]
    [letter] = letters(kafka, suffix)
    assert letter.reason is ev.RejectReason.OVERSIZE
    assert letter.source_topic == topic + suffix and letter.source_offset == -1
    assert letter.original_value() == values[1] and not letter.truncated
    assert outbox.dead_letters == 1 and len(outbox.spool) == 0
    assert not outbox.dead_letter_file.exists()


def test_a_transition_batch_too_large_for_its_topic_arrives_split(
    kafka: KafkaSettings, suffix: str, tmp_path: Path,
) -> None:
    spec = samples.robot_spec(obs_dim=6, act_dim=2)
    batch = samples.batch(spec, 130, robot_id="r1", experiment_id="exp-1")
    # The limit is set from what a record weighs here (the Arrow schema alone is ~4 kB, and
    # it grows with the schema): one step fits, the whole batch needs about four records.
    one, whole = (limits.record_bytes(serde.encode(catalog.TRANSITIONS_RAW, samples.batch(
        spec, n, robot_id="r1", experiment_id="exp-1"))) for n in (1, 130))
    make_topics(kafka, suffix, limit_of={catalog.TRANSITIONS_RAW.name: one + (whole - one) // 4})
    outbox = Outbox(kafka, tmp_path / "spool", role="agent-test", topic_suffix=suffix)
    try:
        outbox.send(catalog.TRANSITIONS_RAW, batch)
        assert outbox.drain(60.0)
    finally:
        outbox.close()
    def rows_of(value: bytes, headers: list[tuple[str, bytes]]) -> list[tuple[str, int]]:
        part = serde.decode(catalog.TRANSITIONS_RAW, value, headers)
        assert isinstance(part, TransitionBatch)
        return list(zip(part.episode_id.tolist(), part.step.tolist(), strict=True))

    records = read(kafka, catalog.TRANSITIONS_RAW.name + suffix)
    assert len(records) > 1, "the batch was not split"
    arrived = [row for value, headers in records for row in rows_of(value, headers)]
    # A step that does not fit even alone would be dead-lettered with its bytes: every row
    # is either on the topic or on dlq, once.
    refused = [row for letter in letters(kafka, suffix) for row in rows_of(
        letter.original_value(), [(k, v.encode()) for k, v in letter.headers.items()])]
    everything = list(zip(batch.episode_id.tolist(), batch.step.tolist(), strict=True))
    assert sorted(arrived + refused) == sorted(everything)
    assert arrived == [row for row in everything if row not in refused]  # in order
    assert len(arrived) > len(refused) and outbox.dead_letters == len(refused)


class Proxy:
    """A TCP forwarder on ``port`` to the broker, started when the test says so: until
    then the outbox's bootstrap address is a closed port."""

    def __init__(self, port: int, upstream: str) -> None:
        host, _, up_port = upstream.rpartition(":")
        self.upstream = (host, int(up_port))
        self.server = socket.create_server(("127.0.0.1", port))
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.upstream)
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.server.close()
        for conn in self.conns:
            conn.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    yield free_port()


def test_a_full_spool_holds_the_robot_then_resumes_and_every_row_arrives(
    kafka: KafkaSettings, suffix: str, tmp_path: Path, closed_port: int,
) -> None:
    make_topics(kafka, suffix, limit_of={})
    unreachable = KafkaSettings(bootstrap=f"127.0.0.1:{closed_port}")
    outbox = Outbox(unreachable, tmp_path / "spool", max_bytes=256 * 1024,
                    role="agent-test", topic_suffix=suffix,
                    topic_limits=limits.TopicLimits(unreachable, timeout_s=1.0,
                                                    topic_suffix=suffix))
    robot = registry.make_robot("reacher2d", seed=11)
    policy = RandomPolicy(robot.spec.action, seed=11)
    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=outbox,
                         policy=lambda: (policy, 0), flush_steps=50, flush_s=60.0)
    lease = Lease("exp-1", "lease-1")
    proxy: Proxy | None = None
    try:
        for _ in range(2000):
            worker.tick(lease, [])  # used to raise SpoolFull after ~470 periods
        assert worker.spool_full and outbox.backlog > 0
        beat = worker.heartbeat(3, 1.0, spool_bytes=outbox.spool_bytes)
        assert beat.spool_full and beat.spool_bytes > 200 * 1024
        held_at = worker.steps_total
        for _ in range(50):
            worker.tick(lease, [])
        assert worker.steps_total == held_at

        proxy = Proxy(closed_port, kafka.bootstrap)  # the broker is reachable again
        deadline = time.monotonic() + 90
        while worker.spool_full and time.monotonic() < deadline:
            worker.tick(lease, [])
            outbox.drain(0.05)
        assert not worker.spool_full, "episodes did not resume once the spool had room"
        for _ in range(100):
            worker.tick(lease, [])
        assert worker.steps_total > held_at
        worker.tick(None, [])  # lease released: the open episode ends and is flushed
        assert outbox.drain(90.0), f"{outbox.backlog} records never left the spool"
    finally:
        outbox.close()
        if proxy is not None:
            proxy.close()

    steps = []
    for value, headers in read(kafka, catalog.TRANSITIONS_RAW.name + suffix):
        batch = serde.decode(catalog.TRANSITIONS_RAW, value, headers)
        assert isinstance(batch, TransitionBatch)
        steps += list(zip(batch.episode_id.tolist(), batch.step.tolist(), strict=True))
    assert len(steps) == len(set(steps)) == worker.steps_total
    ended = [e for v, h in read(kafka, catalog.EPISODES.name + suffix)
             if isinstance(e := serde.decode(catalog.EPISODES, v, h), ev.EpisodeEndedV1)]
    by_episode: dict[str, list[int]] = {}
    for episode, step in steps:
        by_episode.setdefault(episode, []).append(step)
    assert {e.episode_id: list(range(e.steps)) for e in ended} == by_episode
