"""`userctl demo` — the main job: a heterogeneous simulated fleet learns, live.

Starts the broker (unless ``USER_KAFKA_BOOTSTRAP`` names a cluster) and the topics, runs
the demo topology (controller, Delta sink, reward job, learner, agents of two robot types
at two sites) under the supervisor, submits the bundled experiment under a fresh name,
shows live progress, stops at the target success or the time bound, and writes a report
under ``runs/<experiment>/``.  Ctrl-C stops everything cleanly; everything produced stays
inspectable (``userctl history``, ``userctl tail``, ``infra/bin/kafka-*``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from infra import supervisor
from infra.broker import REPO, Broker
from infra.cmd_fleet import load_spec
from infra.progress import Progress, render, write_report
from pipeline.fleet import Fleet
from schemas import events as ev
from schemas.experiment import ExperimentSpec, TakeoverSpec
from schemas.transitions import RewardedTransitionBatch
from topics import admin, catalog
from topics.follow import Follower
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted

DEFAULT_SPEC = REPO / "examples" / "demo.yaml"
DEFAULT_TOPOLOGY = REPO / "infra" / "topology.yaml"
log = logging.getLogger("userctl.demo")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the whole system: a simulated fleet learns, live")
    p.add_argument("--experiment", type=Path, default=DEFAULT_SPEC,
                   help="experiment spec (default examples/demo.yaml)")
    p.add_argument("--topology", type=Path, default=DEFAULT_TOPOLOGY,
                   help="processes to run (default infra/topology.yaml)")
    p.add_argument("--name", help="experiment name (default: the spec's name + a timestamp)")
    p.add_argument("--max-wall-s", type=float, help="override the spec's time bound")
    p.add_argument("--runs", type=Path, default=REPO / "runs", help="where reports go")
    p.set_defaults(func=_demo)


def _topology_for(topo: supervisor.Topology, template_name: str, name: str,
                  takeover: TakeoverSpec | None = None) -> supervisor.Topology:
    """The topology with the experiment's name put where the template's name stood, and
    the experiment's takeover device (``takeover``) given to every agent role."""
    roles = {}
    for role_name, role in topo.roles.items():
        args = [name if a == template_name else a for a in (role.userctl or [])]
        roles[role_name] = role.model_copy(update={"userctl": args}) if role.userctl else role
        if takeover is not None and takeover.kind != "none" and args[:1] == ["agent"]:
            env = {**role.env, "USER_AGENT_TAKEOVER": takeover.model_dump_json()}
            roles[role_name] = roles[role_name].model_copy(update={"env": env})
    return topo.model_copy(update={"roles": roles, "name": f"{topo.name}-{name}"})


def _fleet_rows(fleet: Fleet, name: str) -> list[list[str]]:
    now = time.time()
    rows = [["ROBOT", "TYPE", "SITE", "STATE", "EXPERIMENT", "HEARTBEAT", "STEPS/S", "POLICY"]]
    for r in sorted(fleet.robots.values(), key=lambda r: (r.site, r.robot_id)):
        if r.state is ev.RobotState.LOST and now - r.last_seen > 60:
            continue  # robots of earlier runs
        rows.append([r.robot_id, r.robot_type, r.site, r.state.value,
                     r.experiment_id or "-", f"{now - r.last_seen:.0f}s",
                     f"{r.steps_per_s:.1f}",
                     "-" if r.policy_version is None else str(r.policy_version)])
    return rows


def _demo(args: argparse.Namespace) -> int:
    spec = load_spec(args.experiment)
    topo = supervisor.load_topology(args.topology)
    name = args.name or f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    stop_spec = spec.stop
    if args.max_wall_s is not None:
        stop_spec = stop_spec.model_copy(update={"max_wall_s": args.max_wall_s})
    spec = spec.model_copy(update={"name": name, "stop": stop_spec})
    run_topo = _topology_for(topo, topo_template_name(topo, args.experiment), name,
                             spec.takeover)

    from infra import security

    if security.requested():  # USER_SECURE=1: SASL_SSL + ACLs; this process is the operator
        security.ensure_cluster(say=lambda m: print(m, file=sys.stderr))
        run_topo = security.for_topology(run_topo)
    elif not os.environ.get("USER_KAFKA_BOOTSTRAP"):
        started = Broker().start(say=lambda m: print(m, file=sys.stderr))
        if not started.already_running:
            print(f"started Kafka (pid {started.pid})")
    kafka = KafkaSettings()
    admin.ensure_topics(kafka)

    home = Path(os.environ["USER_HOME"])
    # The learner role writes TensorBoard files under the same runs directory as the
    # report (unless USER_TENSORBOARD_RUNS says otherwise), not under its working directory.
    os.environ.setdefault("USER_TENSORBOARD_RUNS", str(args.runs.resolve()))
    sup = supervisor.Supervisor(run_topo, home)
    sup_thread = threading.Thread(target=sup.run, name="supervisor", daemon=True)
    interrupted = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        interrupted.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # Submitted first: the learner reads its spec at start, and the controller leases
    # each robot as soon as it announces itself.
    producer = EventProducer(kafka, role="demo")
    producer.send(catalog.EXPERIMENTS, ev.ExperimentSubmittedV1(
        experiment_id=spec.name, spec=spec.model_dump(mode="json"),
        submitted_by="userctl demo"))
    producer.flush(30.0)
    print(f"submitted experiment {name} ({args.experiment})")
    print(f"starting {len(run_topo.roles)} roles: {', '.join(run_topo.roles)} "
          f"(logs in {home / 'logs' / run_topo.name})")
    print(f"watch it: `userctl dashboard` (a web page), `userctl tensorboard {name} "
          f"--runs {os.environ['USER_TENSORBOARD_RUNS']}`")
    sup_thread.start()
    reason = "interrupted (Ctrl-C)"
    progress = Progress(name, window=stop_spec.success_window)
    try:
        reason = _watch(kafka, spec, progress, interrupted) or reason
    finally:
        print(f"\nstopping: {reason}")
        producer = EventProducer(kafka, role="demo")
        producer.send(catalog.EXPERIMENTS, ev.ExperimentStatusV1(
            experiment_id=name, state=ev.ExperimentState.COMPLETED, detail=reason[:1000]))
        producer.flush(30.0)
        sup.stop()
        sup_thread.join(timeout=120)
        out = write_report(progress, args.runs / name, reason=reason, stop=stop_spec)
        print(f"report: {out}/README.md (curves.png, summary.json)")
        print(f"inspect: userctl history success {name} --reward {spec.reward}; "
              f"userctl tail transitions --limit 5; userctl experiments show {name}")
    return 0 if not interrupted.is_set() else 130


def topo_template_name(topo: supervisor.Topology, spec_path: Path) -> str:
    """The experiment name the topology's roles were written for (the spec's own name)."""
    return load_spec(spec_path).name


def _watch(kafka: KafkaSettings, spec: ExperimentSpec, progress: Progress,
           interrupted: threading.Event) -> str | None:
    fleet = Fleet(heartbeat_timeout_s=5.0)
    follower = Follower(kafka, {
        catalog.ROBOTS: "beginning", catalog.EXPERIMENTS: "beginning",
        catalog.ASSIGNMENTS: "beginning", catalog.HEARTBEATS: "end",
        catalog.TRANSITIONS: "end", catalog.LEARNER_METRICS: "end",
    }, role="demo")
    types = tuple(r.robot_type for r in spec.robots)
    tty = sys.stdout.isatty()
    next_draw = 0.0
    try:
        while not interrupted.is_set():
            for item in follower.poll(0.2):
                if not isinstance(item, Accepted):
                    continue
                event = item.event
                if isinstance(event, RewardedTransitionBatch):
                    if event.reward_fn == spec.reward:
                        progress.on_rewarded(event)
                elif isinstance(event, ev.LearnerMetricsV1):
                    progress.on_metrics(event)
                elif isinstance(event, ev.Envelope):
                    fleet.apply(event, event.produced_at.timestamp())
            now = time.time()
            reason = progress.stop_reason(spec.stop, types, now)
            if reason:
                return reason
            if now >= next_draw:
                view = render(progress, _fleet_rows(fleet, spec.name), spec.stop)
                if tty:
                    sys.stdout.write("\x1b[2J\x1b[H" + view + "\n")
                else:
                    sys.stdout.write(
                        f"[{now - progress.started:6.0f}s] steps {progress.steps} "
                        f"policy v{progress.policy_version} " + " ".join(
                            f"{t}:{'-' if s.success_rate is None else f'{s.success_rate:.0%}'}"
                            for t, s in sorted(progress.types.items())) + "\n")
                sys.stdout.flush()
                next_draw = now + (1.0 if tty else 10.0)
        return None
    finally:
        follower.close()
