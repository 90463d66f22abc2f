"""The two-site topology learns the demo task through MirrorMaker 2 while one site is cut
off the WAN for 60 s; after the heal everything arrives, exactly once (issue 15).

Runs ``infra/topology-sites.yaml`` itself with ``userctl up -d`` — the cloud's broker, one
broker per site, MirrorMaker 2 at each edge dialling the cloud's mutual-TLS WAN listener
through the WAN fault proxy (Toxiproxy), controller, Delta sink, reward job, learner and
simulated reachers at both sites — on free ports under a private directory (every port of
the file is mapped to a free one; ``.user/sites/`` becomes the private directory), and
submits the demo's SAC reach experiment for the topology's reachers (2 at lab-a, 1 at
lab-b: the demo's three).

Once the learner is training and the cloud has ``--cut-after-steps`` rewarded env steps,
``--cut-site``'s link is cut at the proxy (``userctl mirror cut``) for ``--cut-s``
seconds, then healed.  Recorded every 10 s: rewarded env steps and success rate (last 50
episodes, the learner's rule) per site as the cloud sees them, policy version and learner
updates, MirrorMaker's per-site lag (``userctl status``'s figure, and its output twice:
during the cut and after the heal).  The run stops at the target success after the heal,
or at the wall bound; then the experiment is cancelled, the robots stop, the mirror and
the sink drain, and Delta's step identities are compared with what the agents wrote to
their edge brokers: none missing, none twice, none extra.  Then the topology goes down.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from infra.bench import report

HELP = ("the two-site topology (userctl up, MM2 over the WAN proxy) learns reach while a "
        "site is cut off 60 s; Delta exact after the heal")
TEMPLATE_EXPERIMENT = "demo-reach"
#: Ports written in the topology file (mapped to free ones for a private run).
PORT = re.compile(r"\b19[0-9]{3}\b")
SITES_DIR = ".user/sites/"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from infra.broker import INFRA

    p.add_argument("--topology", type=Path, default=INFRA / "topology-sites.yaml")
    p.add_argument("--experiment", type=Path, default=INFRA.parent / "examples" / "demo.yaml",
                   help="the experiment (its reacher2d robots only; default the demo's)")
    p.add_argument("--cut-site", default="lab-a", help="the site cut off (default lab-a)")
    p.add_argument("--cut-s", type=float, default=60.0, help="cut length (default 60 s)")
    p.add_argument("--cut-after-steps", type=int, default=12_000,
                   help="cut once the cloud has this many rewarded env steps (default 12000)")
    p.add_argument("--max-wall-s", type=float, default=1200.0,
                   help="the whole run's bound, start-up and drain included (default 1200)")
    p.add_argument("--target", type=float, default=0.8, help="target success (default 0.8)")
    p.add_argument("--window", type=int, default=50, help="episodes per success figure")
    p.add_argument("--root", type=Path, help="private directory (default: a new temp dir)")
    p.add_argument("--json", type=Path, help="also write every sample here")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)
    p.add_argument("--no-write", action="store_true", help="print only")


def private_topology(text: str, root: Path, experiment: str,
                     free_port: Callable[[], int]) -> tuple[dict[str, object], dict[int, int]]:
    """The topology file ``text`` for a private run: every port of it (19xxx) mapped to a
    free one, ``.user/sites/`` to ``root``, the template experiment to ``experiment``.
    Returns the topology (as YAML data) and the port map."""
    data = yaml.safe_load(text)
    ports: dict[int, int] = {}

    def fix(s: str) -> str:
        s = PORT.sub(lambda m: str(ports.setdefault(int(m.group()), free_port())), s)
        s = s.replace(SITES_DIR, f"{root}/")
        return experiment if s == TEMPLATE_EXPERIMENT else s

    def walk(node: object) -> object:
        if isinstance(node, str):
            return fix(node)
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items()}
        return node

    out = walk(data)
    assert isinstance(out, dict)
    out["name"] = f"{data['name']}-{experiment}"
    return out, ports


@dataclass
class Sample:
    t: float
    phase: str
    steps: dict[str, int]
    success: dict[str, float | None]
    overall: float | None
    policy_version: int
    learner_step: int
    lag_up: dict[str, int | None]
    lag_down: dict[str, int | None]


@dataclass
class Marks:
    """What happened when (seconds since the experiment was submitted)."""

    cut_at: float | None = None
    heal_at: float | None = None
    drained_at: float | None = None
    target_at: float | None = None
    at_cut: dict[str, object] = field(default_factory=dict)
    at_heal: dict[str, object] = field(default_factory=dict)
    ends_at_cut: dict[int, int] = field(default_factory=dict)
    #: The cut site's up-lag counted as caught up: twice the most seen before the cut
    #: (MM2 records its offsets every flush interval, so a live flow is never at 0).
    steady_lag: int = 50
    ends_at_heal: dict[int, int] = field(default_factory=dict)
    cut_site_collected: int = 0
    status_in_cut: str = ""
    status_after: str = ""
    #: Seconds from the bench's start to the submission (the roles coming up).
    startup_s: float = 0.0
    cut_clock: str = ""
    heal_clock: str = ""
    #: The controller's lease decisions about the cut site's robots, from its log.
    controller: list[str] = field(default_factory=list)


def agent_counts(topo: dict[str, object]) -> dict[str, int]:
    """Simulated reachers per site in the topology's agent roles."""
    out: dict[str, int] = {}
    roles = topo["roles"]
    assert isinstance(roles, dict)
    for role in roles.values():
        argv = role.get("userctl") or []
        if argv[:1] == ["agent"]:
            site = argv[argv.index("--site") + 1]
            n = int(argv[argv.index("--count") + 1]) if "--count" in argv else 1
            out[site] = out.get(site, 0) + n
    return out


def _role_arg(topo: dict[str, object], role: str, flag: str) -> str:
    roles = topo["roles"]
    assert isinstance(roles, dict)
    argv = roles[role]["userctl"]
    return str(argv[argv.index(flag) + 1])


def run(args: argparse.Namespace) -> int:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    from infra import cmd_mirror, mirror, supervisor, wan, wan_proxy
    from infra.broker import REPO
    from infra.plane import free_port
    from infra.progress import Progress
    from pipeline import sink
    from schemas import events as ev
    from schemas.experiment import ExperimentSpec, StopSpec
    from schemas.transitions import RewardedTransitionBatch, TransitionBatch
    from topics import catalog
    from topics import tables as contract
    from topics.consumer import TopicReader
    from topics.follow import Follower
    from topics.producer import EventProducer
    from topics.settings import KafkaSettings
    from topics.validation import Accepted

    t_start = time.monotonic()
    deadline = t_start + args.max_wall_s
    load_start = os.getloadavg()
    root = (args.root or Path(tempfile.mkdtemp(prefix="user-bench-sites-"))).resolve()
    root.mkdir(parents=True, exist_ok=True)
    name = f"sites-reach-{time.strftime('%Y%m%d-%H%M%S')}"
    topo, ports = private_topology(args.topology.read_text(), root, name, free_port)
    topo_file = root / "topology.yaml"
    topo_file.write_text(yaml.safe_dump(topo, sort_keys=False))
    topology = supervisor.load_topology(topo_file)  # validates it
    env_t = topology.env
    site_map = env_t["USER_KAFKA_SITES"]
    os.environ["USER_KAFKA_SITES"] = site_map  # the lag probe's partitions per site
    cloud_bs = env_t["USER_KAFKA_BOOTSTRAP"]
    edges = {s: _role_arg(topo, f"mirror-{s}", "--edge") for s in ("lab-a", "lab-b")}
    sites = tuple(edges)
    api = wan_proxy.ToxiproxyApi(int(_role_arg(topo, "wan-proxy", "--api-port")))
    cloud = KafkaSettings(bootstrap=cloud_bs, sites=site_map)
    home = root / mirror.CLOUD
    cli_env = {**os.environ, "USER_HOME": str(home), "USER_KAFKA_BOOTSTRAP": cloud_bs,
               "USER_KAFKA_LIBS": str(REPO / env_t["USER_KAFKA_LIBS"]),
               "PYTHONPATH": str(REPO)}

    def userctl(*argv: str, timeout: float = 120) -> str:
        proc = subprocess.run([sys.executable, "-m", "infra.cli", *argv], env=cli_env,
                              cwd=REPO, capture_output=True, text=True, timeout=timeout)
        return proc.stdout + proc.stderr

    def say(msg: str) -> None:
        print(f"[{time.monotonic() - t_start:6.0f}s] {msg}", flush=True)

    robots = agent_counts(topo)
    spec_data = yaml.safe_load(args.experiment.read_text())
    spec_data.update(name=name, robots=[{"robot_type": "reacher2d",
                                         "count": sum(robots.values()),
                                         "sites": list(sites)}])
    spec = ExperimentSpec.model_validate(spec_data)
    stop = StopSpec(target_success=args.target, success_window=args.window)
    say(f"private run in {root}; ports {ports}")
    wan.make_certs(home, sites)  # the `certs` role finds them; the cloud broker needs them
    samples: list[Sample] = []
    marks = Marks()
    sent: dict[str, set[tuple[str, str, int]]] = {}
    got: list[tuple[str, str, int]] = []
    reason = "not started"
    follower: Follower | None = None
    try:
        say(userctl("up", str(topo_file), "-d").strip())
        # The cloud's topics exist once its broker and `topics-cloud` have run.
        while True:
            try:
                c = Consumer(cloud.consumer_config("bench", role="bench") | {"log_level": 0})
                try:
                    have = set(c.list_topics(timeout=5).topics)
                finally:
                    c.close()
                if {catalog.EXPERIMENTS.name, catalog.TRANSITIONS.name,
                        catalog.LEARNER_METRICS.name} <= have:
                    break
            except KafkaException:
                pass
            if time.monotonic() > deadline - 300:
                raise SystemExit("userctl: the cloud broker and its topics did not come up; "
                                 f"see {home}/logs/{topology.name}/")
            time.sleep(2)
        producer = EventProducer(cloud, role="bench")
        producer.send(catalog.EXPERIMENTS, ev.ExperimentSubmittedV1(
            experiment_id=name, spec=spec.model_dump(mode="json"),
            submitted_by="userctl bench sites"))
        producer.flush(30)
        t0 = time.time()
        marks.startup_s = time.monotonic() - t_start
        say(f"submitted {name}: reacher2d {robots}, SAC "
            f"{spec.policy.hidden} (the demo's); waiting for the robots and the learner")
        progress = Progress(name, window=args.window, started=t0)
        per_site = {s: Progress(name, window=args.window, started=t0) for s in sites}
        follower = Follower(cloud, {catalog.TRANSITIONS: "beginning",
                                    catalog.LEARNER_METRICS: "beginning"}, role="bench")
        learn_until = deadline - 240  # left for the drain and the Delta check
        next_sample = 0.0
        healed_ok = False

        def lags() -> tuple[dict[str, int | None], dict[str, int | None]]:
            up: dict[str, int | None] = {}
            down: dict[str, int | None] = {}
            for s in sites:
                try:
                    u, d = cmd_mirror.site_lag(s, edges[s], cloud_bs)
                    up[s], down[s] = u.total, d.total
                except Exception:  # a probe that failed is a missing figure, not a stop
                    up[s] = down[s] = None
            return up, down

        def snapshot(phase: str) -> Sample:
            up, down = lags()
            return Sample(round(time.time() - t0, 1), phase,
                          {s: p.steps for s, p in per_site.items()},
                          {s: p.types["reacher2d"].success_rate if "reacher2d" in p.types
                           else None for s, p in per_site.items()},
                          progress.types["reacher2d"].success_rate
                          if "reacher2d" in progress.types else None,
                          progress.policy_version, progress.learner_step, up, down)

        def site_steps(site: str) -> tuple[set[tuple[str, str, int]], list[tuple[int, int, int]]]:
            """Every step identity the site's agents wrote to their edge broker, and
            (partition, offset, steps) of each batch."""
            out: set[tuple[str, str, int]] = set()
            batches: list[tuple[int, int, int]] = []
            with TopicReader(KafkaSettings(bootstrap=edges[site], sites=site_map),
                             catalog.TRANSITIONS_RAW, start="beginning", sites=[site]) as r:
                for item in r.read():
                    if isinstance(item, Accepted) and isinstance(item.event, TransitionBatch):
                        b = item.event
                        out.update((b.robot_id, b.event.incarnation, int(s)) for s in b.seq)
                        batches.append((item.record.partition, item.record.offset, len(b)))
            return out, batches

        def edge_ends(site: str) -> dict[int, int]:
            c = Consumer(KafkaSettings(bootstrap=edges[site], sites=site_map)
                         .consumer_config("bench", role="bench") | {"log_level": 0})
            try:
                return {p: c.get_watermark_offsets(
                    TopicPartition(catalog.TRANSITIONS_RAW.name, p), timeout=10)[1]
                    for p in cloud.sites.partitions_of(site)}
            finally:
                c.close()

        def progress_now() -> dict[str, object]:
            return {"env_steps": progress.steps, "learner_step": progress.learner_step,
                    "policy_version": progress.policy_version,
                    "success": progress.types["reacher2d"].success_rate
                    if "reacher2d" in progress.types else None}

        def fault() -> None:
            """The cut, timed on its own thread: `--cut-s` exactly, whatever the
            sampling loop is doing."""
            marks.ends_at_cut = edge_ends(args.cut_site)
            api.cut(args.cut_site)
            cut_m = time.monotonic()
            marks.cut_at = time.time() - t0
            marks.cut_clock = time.strftime("%H:%M:%S")
            marks.at_cut = progress_now()
            say(f"CUT {args.cut_site} at {marks.at_cut['env_steps']} env steps (learner "
                f"update {marks.at_cut['learner_step']}, policy "
                f"v{marks.at_cut['policy_version']})")
            def status_mid_cut() -> None:
                if not stopping.wait(args.cut_s / 2):
                    marks.status_in_cut = userctl("status", str(topo_file))

            threading.Thread(target=status_mid_cut, daemon=True).start()
            stopping.wait(max(0.0, cut_m + args.cut_s - time.monotonic()))
            api.heal(args.cut_site)
            marks.heal_at = time.time() - t0
            marks.heal_clock = time.strftime("%H:%M:%S")
            marks.ends_at_heal = edge_ends(args.cut_site)
            marks.at_heal = progress_now()
            say(f"HEAL {args.cut_site} after {marks.heal_at - marks.cut_at:.1f} s")

        stopping = threading.Event()
        fault_thread = threading.Thread(target=fault, name="fault", daemon=True)
        while True:
            for item in follower.poll(0.5):
                if not isinstance(item, Accepted):
                    continue
                e = item.event
                if isinstance(e, RewardedTransitionBatch) and e.reward_fn == spec.reward:
                    progress.on_rewarded(e)
                    if e.event.site in per_site:
                        per_site[e.event.site].on_rewarded(e)
                elif isinstance(e, ev.LearnerMetricsV1):
                    progress.on_metrics(e)
            now_m = time.monotonic()
            if not fault_thread.is_alive() and marks.cut_at is None and (
                    progress.steps >= args.cut_after_steps and progress.learner_step > 0):
                fault_thread.start()
                while marks.cut_at is None and fault_thread.is_alive():
                    time.sleep(0.1)
            phase = ("before cut" if marks.cut_at is None else
                     "cut" if marks.heal_at is None else "healed")
            if now_m >= next_sample:
                s = snapshot(phase)
                samples.append(s)
                next_sample = now_m + 10
                lag = s.lag_up.get(args.cut_site)
                if marks.cut_at is None and lag is not None:
                    marks.steady_lag = max(marks.steady_lag, 2 * lag)
                if (marks.heal_at is not None and marks.drained_at is None
                        and lag is not None and lag <= marks.steady_lag):
                    marks.drained_at = s.t
                    marks.status_after = userctl("status", str(topo_file))
                say(f"{phase:10} steps " + " ".join(
                    f"{k}={v}" for k, v in s.steps.items()) + " success " + " ".join(
                    f"{k}={'-' if v is None else f'{v:.0%}'}" for k, v in s.success.items())
                    + f" all={'-' if s.overall is None else f'{s.overall:.0%}'} "
                    f"v{s.policy_version} upd {s.learner_step} lag-up {s.lag_up}")
            reached = progress.stop_reason(stop, ("reacher2d",))
            if reached and "target" in reached and marks.heal_at is not None:
                marks.target_at = time.time() - t0
                healed_ok = True
                reason = f"{reached} at {progress.steps} env steps, after the heal"
                break
            if time.monotonic() > learn_until:
                reason = (f"wall bound: {progress.steps} env steps in "
                          f"{time.time() - t0:.0f} s since the submission")
                break
        stopping.set()  # a cut still on is healed now
        if fault_thread.is_alive():
            fault_thread.join(60)
        samples.append(snapshot("end"))
        say(f"stopping: {reason}")
        # The robots stop; what they wrote must all reach Delta, once.
        producer.send(catalog.EXPERIMENTS, ev.ExperimentStatusV1(
            experiment_id=name, state=ev.ExperimentState.CANCELLED,
            detail=f"userctl bench sites: {reason}"[:1000]))
        producer.flush(30)
        follower.close()
        follower = None

        drain_until = deadline - 30
        last, stable_since = {s: edge_ends(s) for s in sites}, time.monotonic()
        while time.monotonic() - stable_since < 15 and time.monotonic() < drain_until:
            time.sleep(3)
            now_ends = {s: edge_ends(s) for s in sites}
            if now_ends != last:
                last, stable_since = now_ends, time.monotonic()
        say(f"robots stopped (edge transitions.raw ends {last}); reading what they sent")
        read = {s: site_steps(s) for s in sites}
        sent = {s: ids for s, (ids, _) in read.items()}
        if marks.ends_at_cut and marks.ends_at_heal:
            marks.cut_site_collected = sum(
                n for p, off, n in read[args.cut_site][1]
                if marks.ends_at_cut.get(p, 0) <= off < marks.ends_at_heal.get(p, 0))
        table_path = contract.table_path(home / "delta", contract.TRANSITIONS_RAW)
        while True:
            dt = sink.open_table(table_path)
            if dt is not None:
                table = dt.to_pyarrow_dataset().to_table(columns=list(contract.STEP_ID))
                got = list(zip(*(table.column(c).to_pylist() for c in contract.STEP_ID),
                               strict=True))
                if set(got) == set().union(*sent.values()):
                    break
            if time.monotonic() > drain_until:
                say("the sink did not hold every step by the bound")
                break
            time.sleep(5)
    finally:
        if follower is not None:
            follower.close()
        marks.controller = _lease_lines(home / "logs" / topology.name / "controller.log",
                                        args.cut_site)
        down = userctl("down", str(topo_file), timeout=150)
        print(down.strip(), flush=True)
        _kill_leftovers(home, topology.name, root)
    load_end = os.getloadavg()
    body, summary = _report(args, name, samples, marks, sent, got, reason, healed_ok,
                            load_start, load_end, time.monotonic() - t_start, robots)
    print(body)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "samples": [
            s.__dict__ for s in samples]}, indent=1, default=str))
    if not args.no_write:
        report.write_section("sites", body, args.out)
        print(f"\nwritten to {args.out}")
    return 0 if summary["delta_exact"] else 1


def _lease_lines(log: Path, site: str) -> list[str]:
    """The controller's "lost" / "leased" / "released" lines about ``site``'s robots."""
    if not log.exists():
        return []
    return [f"{line[:8]} {line.split(' INFO pipeline.controller: ', 1)[-1]}"
            for line in log.read_text(errors="replace").splitlines()
            if f"-{site}-" in line and (" is lost " in line or "leased " in line
                                     or "released " in line)]


def _kill_leftovers(home: Path, topology: str, root: Path) -> None:
    """SIGKILL any role the supervisor left behind: its recorded pids, each only while it
    still leads its own process group and runs with an environment under ``root``."""
    from infra import supervisor

    state = supervisor.read_state(home, topology) or {}
    roles = state.get("roles", [])
    for r in roles if isinstance(roles, list) else []:
        pid = int(r.get("pid") or 0)
        try:
            ours = pid > 0 and os.getpgid(pid) == pid and str(root).encode() in Path(
                f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        if ours:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)


def _pct(v: object) -> str:
    return "–" if not isinstance(v, float) else f"{v:.0%}"


def _report(args: argparse.Namespace, name: str, samples: list[Sample], marks: Marks,
            sent: dict[str, set[tuple[str, str, int]]], got: list[tuple[str, str, int]],
            reason: str, healed_ok: bool, load_start: tuple[float, float, float],
            load_end: tuple[float, float, float], wall: float, robots: dict[str, int]
            ) -> tuple[str, dict[str, object]]:
    sites = list(sent) or ["lab-a", "lab-b"]
    all_sent = set().union(*sent.values()) if sent else set()
    got_set = set(got)
    per_site = {s: {"sent": len(sent.get(s, ())),
                    "in_delta": len(sent.get(s, set()) & got_set),
                    "missing": len(sent.get(s, set()) - got_set)} for s in sites}
    # A private plane: every row in its Delta is a step of this run.
    dupes = len(got) - len(got_set)
    extra = len(got_set - all_sent)
    exact = bool(all_sent) and got_set == all_sent and dupes == 0
    summary: dict[str, object] = {
        "experiment": name, "reason": reason, "target_after_heal": healed_ok,
        "cut": {"site": args.cut_site, "at_s": marks.cut_at, "heal_s": marks.heal_at,
                "lag_drained_s": marks.drained_at, "steady_lag": marks.steady_lag,
                "at_cut": marks.at_cut,
                "at_heal": marks.at_heal, "collected_in_cut": marks.cut_site_collected},
        "target_at_s": marks.target_at, "delta": per_site, "duplicates": dupes, "extra": extra,
        "delta_exact": exact, "wall_s": round(wall), "load_start": load_start,
        "load_end": load_end}
    last = samples[-1] if samples else None
    robots_line = ", ".join(f"{n} at {site}" for site, n in robots.items())
    cut_len = (marks.heal_at or 0.0) - (marks.cut_at or 0.0)
    per_robot_hz = (marks.cut_site_collected / cut_len / robots.get(args.cut_site, 1)
                    if cut_len > 0 else 0.0)
    lines = [
        "## Two sites learn through MirrorMaker 2 across a 60 s site cut (`userctl bench "
        "sites`)",
        "",
        *report.machine_lines(),
        f"- load average (1/5/15 min): {load_start[0]:.1f}/{load_start[1]:.1f}/"
        f"{load_start[2]:.1f} at the start, {load_end[0]:.1f}/{load_end[1]:.1f}/"
        f"{load_end[2]:.1f} at the end (2 cores shared with other work)",
        f"- topology: `infra/topology-sites.yaml` under `userctl up` on free ports — 3 Kafka "
        "brokers (cloud, lab-a, lab-b), MirrorMaker 2 at each edge over mutual TLS through "
        "the WAN proxy (Toxiproxy), controller, Delta sink, reward job, learner; simulated "
        f"reacher2d at 20 Hz: {robots_line}; experiment: the demo's SAC reach (64×64 MLP, UTD 1, "
        "`reach_dense@1`), target "
        f"{args.target:.0%} over {args.window} episodes; run time {wall:.0f} s",
        f"- cut: {args.cut_site}'s WAN link disabled at the proxy at "
        f"{_s(marks.cut_at)} [{marks.cut_clock}] "
        f"({marks.at_cut.get('env_steps', '–')} env steps, learner update "
        f"{marks.at_cut.get('learner_step', '–')}, policy "
        f"v{marks.at_cut.get('policy_version', '–')}), healed at {_s(marks.heal_at)} "
        f"[{marks.heal_clock}] "
        f"({marks.at_heal.get('env_steps', '–')} env steps in the cloud, update "
        f"{marks.at_heal.get('learner_step', '–')}); {args.cut_site} collected "
        f"{marks.cut_site_collected:,} steps into its edge broker while cut off "
        f"({per_robot_hz:.1f} steps/s per robot, 20 Hz control); its up-lag back to "
        f"its pre-cut level (≤ {marks.steady_lag} records) at {_s(marks.drained_at)}",
        f"- t: seconds since the experiment was submitted (the 16 roles came up in the "
        f"{marks.startup_s:.0f} s before: brokers, then roles restarting until their topics "
        "exist)",
        f"- end: {reason}" + (f"; final: policy v{last.policy_version}, learner update "
                               f"{last.learner_step}" if last else ""),
        "",
        "| t (s) | phase | env steps lab-a | env steps lab-b | success lab-a | success lab-b"
        " | success all | policy | learner updates | MM2 lag up lab-a / lab-b (records) |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    shown: list[Sample] = []
    for i, s in enumerate(samples):
        prev = samples[i - 1].phase if i else None
        if i == 0 or s.phase != prev or i == len(samples) - 1 or (
                shown and s.t - shown[-1].t >= 60) or s.phase == "cut":
            shown.append(s)
    for s in shown:
        lines.append(
            f"| {s.t:.0f} | {s.phase} | {s.steps.get('lab-a', 0):,} | "
            f"{s.steps.get('lab-b', 0):,} | {_pct(s.success.get('lab-a'))} | "
            f"{_pct(s.success.get('lab-b'))} | {_pct(s.overall)} | v{s.policy_version} | "
            f"{s.learner_step:,} | {_n(s.lag_up.get('lab-a'))} / {_n(s.lag_up.get('lab-b'))} |")
    lines += ["", "Delta (`transitions_raw`) against what the agents wrote to their edge "
              "brokers, by step identity (robot, incarnation, seq):", "",
              "| site | steps sent | in Delta | missing |", "|---|---:|---:|---:|"]
    lines += [f"| {s} | {v['sent']:,} | {v['in_delta']:,} | {v['missing']:,} |"
              for s, v in per_site.items()]
    lines += ["", f"- duplicates in Delta: {dupes}; rows no agent sent: {extra}; Delta exact: "
              f"{'yes' if exact else 'NO'}"]
    if marks.controller:
        lines += ["", f"The controller's lease decisions on {args.cut_site}'s robots "
                  "(wall-clock times; the cut silences their heartbeats in the cloud):", "",
                  "```", *marks.controller, "```"]
    for title, text in (("`userctl status` during the cut", marks.status_in_cut),
                        ("`userctl status` after the heal", marks.status_after)):
        repl = [ln.strip() for ln in text.splitlines() if "replication" in ln]
        if repl:
            lines += ["", f"{title} (replication lines):", "", "```", *repl, "```"]
    return "\n".join(lines), summary


def _s(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f} s"


def _n(v: int | None) -> str:
    return "?" if v is None else f"{v:,}"
