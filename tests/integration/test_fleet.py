"""The fleet end to end: real broker, real agent and controller processes, real MuJoCo.

The module runs on a broker of its own: the scheduler serves every experiment it finds
in the log, so experiments left by other runs on a shared broker would take this
module's robots.  Each test also names its own sites and cancels its experiments.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from agents import spool
from infra.broker import Broker
from schemas import events as ev
from schemas.transitions import TransitionBatch
from tests.conftest import Processes, catalog_broker
from topics import admin, catalog, serde
from topics.follow import Follower
from topics.settings import KafkaSettings, SiteMap
from topics.validation import Accepted

HEARTBEAT_TIMEOUT_S = 3.0
T = TypeVar("T")


class Watch:
    """Everything on the fleet's topics since the test began, read as it arrives."""

    def __init__(self, kafka: KafkaSettings, specs: tuple[catalog.TopicSpec, ...]) -> None:
        self.follower = Follower(kafka, dict.fromkeys(specs, "beginning"), role="test-watch")
        self.events: list[object] = []

    def pump(self) -> None:
        for item in self.follower.poll(0.2):
            if isinstance(item, Accepted):
                self.events.append(item.event)

    def of(self, kind: type[T]) -> list[T]:
        return [e for e in self.events if isinstance(e, kind)]

    def wait_for(self, what: str, check: Callable[[], T | None], timeout_s: float = 60.0) -> T:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pump()
            found = check()
            if found:
                return found
        raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")

    def close(self) -> None:
        self.follower.close()


def site_env(kafka: KafkaSettings, sites: dict[str, tuple[int, ...]], home: Path
             ) -> dict[str, str]:
    return {
        **os.environ,
        "USER_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "USER_KAFKA_SITES": ";".join(f"{s}={','.join(map(str, p))}" for s, p in sites.items()),
        "USER_HOME": str(home),
        "USER_CONTROLLER_HEARTBEAT_TIMEOUT_S": str(HEARTBEAT_TIMEOUT_S),
        "USER_AGENT_FLUSH_MS": "200",
    }


def write_experiment(path: Path, name: str, robots: list[dict[str, object]]) -> Path:
    path.write_text(yaml.safe_dump({"name": name, "robots": robots}))
    return path


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory, kafka_libs: Path
          ) -> Iterator[KafkaSettings]:
    """A broker for this module alone, with the catalog created."""
    yield from catalog_broker(tmp_path_factory.mktemp("fleet-kafka"), kafka_libs)


@pytest.fixture
def sites(unique: str, kafka: KafkaSettings) -> dict[str, tuple[int, ...]]:
    """Two sites of this test's own, laid over the catalog's partitions."""
    halves = SiteMap().sites
    return {f"a-{unique}": halves["lab-a"], f"b-{unique}": halves["lab-b"]}


@pytest.fixture
def watch(kafka: KafkaSettings) -> Iterator[Watch]:
    w = Watch(kafka, (catalog.ROBOTS, catalog.ASSIGNMENTS, catalog.EXPERIMENTS))
    try:
        yield w
    finally:
        w.close()


def cancel(processes: Processes, env: dict[str, str], name: str) -> None:
    proc = processes.userctl("cancel", "experiments", "cancel", name, env=env)
    proc.wait(timeout=60)


def test_two_robot_types_at_two_sites_are_leased_to_one_experiment(
    kafka: KafkaSettings, sites: dict[str, tuple[int, ...]], unique: str,
    processes: Processes, watch: Watch, tmp_path: Path,
) -> None:
    site_a, site_b = sites
    env = site_env(kafka, sites, tmp_path / "home")
    processes.userctl("controller", "controller", env=env)
    processes.userctl("agent-a", "agent", "--robot-type", "reacher2d", "--site", site_a,
                      "--robot-id", f"reacher-{unique}", env=env)
    processes.userctl("agent-b", "agent", "--robot-type", "arm7", "--site", site_b,
                      "--robot-id", f"arm-{unique}", env=env)
    name = f"two-arms-{unique}"
    spec = write_experiment(tmp_path / "exp.yaml", name, [
        {"robot_type": "reacher2d", "sites": [site_a]},
        {"robot_type": "arm7", "sites": [site_b]},
    ])
    watch.wait_for("both robots to announce", lambda: {
        e.robot_id for e in watch.of(ev.RobotAnnouncedV1)
    } >= {f"reacher-{unique}", f"arm-{unique}"})
    submit = processes.userctl("submit", "experiments", "submit", str(spec), env=env)
    assert submit.wait(timeout=60) == 0, processes.log("submit")
    try:
        def both_leased() -> list[ev.LeaseGrantedV1] | None:
            mine = [e for e in watch.of(ev.LeaseGrantedV1) if e.experiment_id == name]
            return mine if len(mine) == 2 else None

        leases = watch.wait_for("both leases", both_leased)
        assert {(e.robot_id, e.site) for e in leases} == {
            (f"reacher-{unique}", site_a), (f"arm-{unique}", site_b)}
        status = watch.wait_for("the experiment to run", lambda: [
            e for e in watch.of(ev.ExperimentStatusV1)
            if e.experiment_id == name and e.state is ev.ExperimentState.RUNNING])
        assert status

        # Both robots run episodes for the experiment, each on its own site's partitions.
        data = Watch(kafka, (catalog.TRANSITIONS_RAW,))
        try:
            wanted = {f"reacher-{unique}", f"arm-{unique}"}

            def from_both() -> list[TransitionBatch] | None:
                mine = [b for b in data.of(TransitionBatch) if b.event.experiment_id == name]
                return mine if {b.event.robot_id for b in mine} == wanted else None

            batches = data.wait_for("transitions from both robots", from_both)
        finally:
            data.close()
        for batch in batches:
            assert batch.event.site == (site_a if batch.event.robot_id.startswith("reacher")
                                        else site_b)
            assert batch.event.robot_type == ("reacher2d" if batch.event.site == site_a
                                              else "arm7")

        # An operator's e-stop reaches the robot through the commands topic.
        robot = f"reacher-{unique}"
        order = processes.userctl("estop", "command", robot, "estop", env=env)
        assert order.wait(timeout=60) == 0, processes.log("estop")
        episodes = Watch(kafka, (catalog.EPISODES,))
        try:
            episodes.wait_for("the e-stopped episode's end", lambda: [
                e for e in episodes.of(ev.EpisodeEndedV1)
                if e.robot_id == robot and e.reason is ev.EpisodeEndReason.ESTOPPED])
        finally:
            episodes.close()
    finally:
        cancel(processes, env, name)

    robots = processes.userctl("robots", "robots", env=env)
    assert robots.wait(timeout=60) == 0
    table = processes.log("robots")
    assert f"reacher-{unique}" in table and "reacher2d" in table and site_a in table


def test_a_killed_agent_is_replaced_within_the_timeout_and_rejoins_when_restarted(
    kafka: KafkaSettings, sites: dict[str, tuple[int, ...]], unique: str,
    processes: Processes, watch: Watch, tmp_path: Path,
) -> None:
    site_a, site_b = sites
    env = site_env(kafka, sites, tmp_path / "home")
    main_id, spare_id = f"r1-{unique}", f"r2-{unique}"  # the scheduler takes r1 first
    processes.userctl("controller", "controller", env=env)
    agent_args = ("agent", "--robot-type", "reacher2d", "--site", site_a,
                  "--robot-id", main_id)
    victim = processes.userctl("agent-main", *agent_args, env=env)
    watch.wait_for("the main robot to announce", lambda: [
        e for e in watch.of(ev.RobotAnnouncedV1) if e.robot_id == main_id])
    name = f"replace-{unique}"
    spec = write_experiment(tmp_path / "exp.yaml", name,
                            [{"robot_type": "reacher2d", "sites": [site_a, site_b]}])
    assert processes.userctl("submit", "experiments", "submit", str(spec),
                             env=env).wait(timeout=60) == 0
    try:
        watch.wait_for("the main robot's lease", lambda: [
            e for e in watch.of(ev.LeaseGrantedV1) if e.robot_id == main_id])
        processes.userctl("agent-spare", "agent", "--robot-type", "reacher2d", "--site",
                          site_b, "--robot-id", spare_id, env=env)
        watch.wait_for("the spare to announce", lambda: [
            e for e in watch.of(ev.RobotAnnouncedV1) if e.robot_id == spare_id])

        os.killpg(victim.pid, signal.SIGKILL)
        killed_at = time.time()
        victim.wait(timeout=30)
        released = watch.wait_for("the lost robot's lease to be released", lambda: [
            e for e in watch.of(ev.LeaseReleasedV1)
            if e.robot_id == main_id and e.reason is ev.LeaseReleaseReason.ROBOT_LOST])
        spare = watch.wait_for("the spare's lease", lambda: [
            e for e in watch.of(ev.LeaseGrantedV1)
            if e.robot_id == spare_id and e.experiment_id == name])
        replaced_after = spare[0].produced_at.timestamp() - killed_at
        assert released[0].produced_at.timestamp() - killed_at >= HEARTBEAT_TIMEOUT_S - 1.0
        assert replaced_after <= HEARTBEAT_TIMEOUT_S + 2.0, (
            f"replaced {replaced_after:.1f} s after the kill")

        # The robot comes back: it re-announces and is idle, not lost, and not leased
        # (the experiment is satisfied by the spare).
        processes.userctl("agent-main-again", *agent_args, env=env)
        rejoined = watch.wait_for("the main robot to re-announce", lambda: [
            e for e in watch.of(ev.RobotAnnouncedV1)
            if e.robot_id == main_id and e.produced_at.timestamp() > killed_at])
        assert rejoined
        view = processes.userctl("robots-json", "robots", "--json", env=env)
        assert view.wait(timeout=60) == 0
        rows = [json.loads(line) for line in processes.log("robots-json").splitlines()
                if line.startswith("{")]
        state = {r["robot_id"]: r for r in rows}
        assert state[main_id]["state"] == "idle"
        assert state[spare_id]["experiment"] == name
    finally:
        cancel(processes, env, name)


def test_an_agent_running_through_a_broker_restart_loses_no_step(
    private_broker: Broker, processes: Processes, tmp_path: Path,
) -> None:
    private_broker.start()
    kafka = KafkaSettings(bootstrap=private_broker.settings.bootstrap)
    admin.ensure_topics(kafka)
    home = tmp_path / "home"
    env = site_env(kafka, dict(SiteMap().sites), home)
    processes.userctl("controller", "controller", env=env)
    agent = processes.userctl("agent", "agent", "--robot-type", "reacher2d", "--site",
                              "lab-a", "--robot-id", "steady", env=env)
    spec = write_experiment(tmp_path / "exp.yaml", "outage", [{"robot_type": "reacher2d"}])
    watch = Watch(kafka, (catalog.ROBOTS,))
    watch.wait_for("the robot to announce", lambda: watch.of(ev.RobotAnnouncedV1))
    watch.close()
    assert processes.userctl("submit", "experiments", "submit", str(spec),
                             env=env).wait(timeout=60) == 0
    data = Watch(kafka, (catalog.TRANSITIONS_RAW,))
    data.wait_for("the first transitions", lambda: data.of(TransitionBatch))
    data.close()

    spool_dir = home / "agents" / "lab-a" / "steady" / "spool"

    def spooled_since(began_ns: int) -> int:
        """Steps the agent has recorded into its spool since ``began_ns`` (whatever the
        batch sizes)."""
        return sum(int((batch.observed_ns > began_ns).sum())
                   for rec in spool.scan(spool_dir) if rec.topic == catalog.TRANSITIONS_RAW.name
                   for batch in [serde.decode(catalog.TRANSITIONS_RAW, rec.value, rec.headers)]
                   if isinstance(batch, TransitionBatch))

    private_broker.stop()
    outage_began = time.time_ns()
    # The robot keeps working: its spool grows while the broker is away.  The outage
    # lasts until 30 steps were recorded during it.
    deadline = time.monotonic() + 60
    while spooled_since(outage_began) < 30 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert spooled_since(outage_began) >= 30, "the agent stopped recording during the outage"
    outage_ended = time.time_ns()
    private_broker.start()

    # Let it run on a little after the broker returns, then stop it gracefully: it ends
    # its episode and delivers everything.
    data = Watch(kafka, (catalog.TRANSITIONS_RAW,))
    data.wait_for("transitions recorded after the outage", lambda: [
        b for b in data.of(TransitionBatch) if b.observed_ns.min() > outage_ended])
    data.close()
    os.killpg(agent.pid, signal.SIGTERM)
    assert agent.wait(timeout=60) == 0, processes.log("agent")

    everything = Watch(kafka, (catalog.TRANSITIONS_RAW, catalog.EPISODES))
    ended: list[ev.EpisodeEndedV1] = []

    def all_ended() -> bool:
        ended[:] = everything.of(ev.EpisodeEndedV1)
        return everything.follower.caught_up() and bool(ended)

    everything.wait_for("every record", all_ended)
    batches = everything.of(TransitionBatch)
    everything.close()

    rows = [(str(e), int(s), int(t)) for b in batches
            for e, s, t in zip(b.episode_id, b.step, b.observed_ns, strict=True)]
    keys = [(e, s) for e, s, _ in rows]
    assert len(keys) == len(set(keys)), "a step was delivered twice"
    by_episode: dict[str, set[int]] = {}
    for episode, step, _ in rows:
        by_episode.setdefault(episode, set()).add(step)
    assert {e.episode_id for e in ended} == set(by_episode)
    for episode in ended:
        assert by_episode[episode.episode_id] == set(range(episode.steps)), episode.episode_id
    during = [t for _, _, t in rows if outage_began < t < outage_ended]
    assert len(during) >= 20, "no step was recorded during the outage"


class FakeMirror:
    """MirrorMaker 2's heartbeats from each of ``sites``, in MM2's own record format, once
    every half second into ``topic`` (the controller's
    ``USER_CONTROLLER_MIRROR_HEARTBEATS_TOPIC``) until :meth:`cut`."""

    def __init__(self, kafka: KafkaSettings, topic: str, sites: tuple[str, ...]) -> None:
        import struct
        import threading

        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        admin_client = AdminClient({"bootstrap.servers": kafka.bootstrap})
        admin_client.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=30)
        self._producer = Producer({"bootstrap.servers": kafka.bootstrap})
        self._keys = {site: b"".join(struct.pack(">h", len(s)) + s
                                     for s in (site.encode(), b"cloud")) for site in sites}
        self._cut: set[str] = set()
        self._topic = topic
        self._stop = threading.Event()
        self._pack = struct.Struct(">hq").pack
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for site, key in list(self._keys.items()):
                if site not in self._cut:
                    self._producer.produce(self._topic, key=key,
                                           value=self._pack(0, int(time.time() * 1000)))
            self._producer.flush(5.0)
            self._stop.wait(0.5)

    def cut(self, site: str) -> None:
        self._cut.add(site)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_a_cut_off_site_keeps_its_leases_for_the_hold_then_gives_them_back(
    kafka: KafkaSettings, sites: dict[str, tuple[int, ...]], unique: str,
    processes: Processes, watch: Watch, tmp_path: Path,
) -> None:
    """A cut link silences a site's robots and its MirrorMaker at once, while the other
    site's mirror is still heard: the site is unreachable, not its robots lost.  Nothing is
    released within the hold; when the hold has passed, the robot is lost and its lease
    released as any silent robot's."""
    site_a, site_b = sites
    hold = 15.0
    topic = f"mm2-heartbeats-{unique}"
    env = {**site_env(kafka, sites, tmp_path / "home"),
           "USER_CONTROLLER_MIRROR_HEARTBEATS_TOPIC": topic,
           "USER_CONTROLLER_SITE_HOLD_S": str(hold)}
    mirror = FakeMirror(kafka, topic, (site_a, site_b))
    robot_id = f"cut-{unique}"
    processes.userctl("controller", "controller", env=env)
    victim = processes.userctl("agent-cut", "agent", "--robot-type", "reacher2d", "--site",
                               site_a, "--robot-id", robot_id, env=env)
    name = f"cut-{unique}"
    spec = write_experiment(tmp_path / "exp.yaml", name,
                            [{"robot_type": "reacher2d", "sites": [site_a]}])
    assert processes.userctl("submit", "experiments", "submit", str(spec),
                             env=env).wait(timeout=60) == 0
    try:
        watch.wait_for("the robot's lease", lambda: [
            e for e in watch.of(ev.LeaseGrantedV1) if e.robot_id == robot_id])

        mirror.cut(site_a)  # the link goes: its mirror's heartbeats and the robot's stop
        os.killpg(victim.pid, signal.SIGKILL)
        cut_at = time.time()
        victim.wait(timeout=30)
        released = watch.wait_for("the held lease to be released after the hold", lambda: [
            e for e in watch.of(ev.LeaseReleasedV1) if e.robot_id == robot_id],
            timeout_s=hold + 60)
        after = released[0].produced_at.timestamp() - cut_at
        assert after >= hold - 1.0, f"released {after:.1f} s after the cut, within the hold"
        assert released[0].reason is ev.LeaseReleaseReason.ROBOT_LOST
        lost = [e for e in watch.of(ev.RobotStateChangedV1)
                if e.robot_id == robot_id and e.state is ev.RobotState.LOST]
        assert lost and "unreachable" in lost[0].reason
        assert "unreachable" in processes.log("controller")

        view = processes.userctl("robots-json", "robots", "--json", env=env)
        assert view.wait(timeout=60) == 0
        rows = {r["robot_id"]: r for r in map(json.loads, (
            line for line in processes.log("robots-json").splitlines() if line.startswith("{")))}
        assert rows[robot_id]["site_unreachable"] is True
    finally:
        mirror.close()
        cancel(processes, env, name)
