"""`userctl agent`, `userctl controller`, `userctl robots`, `userctl experiments …`."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from agents import spool as agent_spool
from infra._yaml import load_model
from pipeline.controller import Controller, ControllerSettings
from pipeline.fleet import Fleet
from schemas import events as ev
from schemas.experiment import ExperimentSpec
from topics import catalog
from topics.follow import Follower
from topics.producer import EventProducer
from topics.settings import KafkaSettings
from topics.validation import Accepted, Rejected

log = logging.getLogger("userctl")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("agent", help="run robots at a site (simulated or real drivers)")
    p.add_argument("--robot-type", required=True, help="registered robot type")
    p.add_argument("--task", help="task the robots are set up for (default reach); "
                                  "experiments with this task lease them")
    p.add_argument("--site", required=True, help="the site the robots are at")
    p.add_argument("--robot-id", help="robot id (with --count > 1: prefix of <id>-<n>)")
    p.add_argument("--count", type=int, default=1, help="robots hosted by this process")
    p.add_argument("--policy", choices=("random", "scripted"), default=None,
                   help="what drives a robot until learned weights exist (default random)")
    p.add_argument("--control-hz", type=float, help="override the robot's control rate")
    p.add_argument("--fast", action="store_true", help="step as fast as possible")
    p.add_argument("--seed", type=int, help="robots' random seed")
    p.set_defaults(func=_agent)

    p = sub.add_parser("controller", help="run the fleet registry and scheduler")
    p.add_argument("--heartbeat-timeout", type=float, default=None,
                   help="seconds of silence before a robot is lost (default 5)")
    p.set_defaults(func=_controller)

    p = sub.add_parser("robots", help="the fleet, like `kubectl get nodes`")
    p.add_argument("--json", action="store_true", help="one JSON object per robot")
    p.set_defaults(func=_robots)

    p = sub.add_parser("command", help="order a robot to pause, resume, stop or e-stop")
    p.add_argument("robot_id")
    p.add_argument("order", choices=[c.value for c in ev.CommandKind])
    p.add_argument("--reason", default="", help="why, for the log")
    p.set_defaults(func=_command)

    p = sub.add_parser("experiments", help="submit, list, show and cancel experiments")
    esub = p.add_subparsers(dest="experiments_cmd", required=True)
    s = esub.add_parser("submit", help="submit an experiment spec (YAML)")
    s.add_argument("file", type=Path)
    s.set_defaults(func=_submit)
    s = esub.add_parser("list", help="every experiment and its state")
    s.set_defaults(func=_list)
    s = esub.add_parser("show", help="one experiment: spec, state and robots")
    s.add_argument("name")
    s.set_defaults(func=_show)
    s = esub.add_parser("cancel", help="end an experiment and free its robots")
    s.add_argument("name")
    s.set_defaults(func=_cancel)


# -- processes ------------------------------------------------------------------------------


def _agent(args: argparse.Namespace) -> int:
    from agents.agent import AgentSettings, serve

    overrides: dict[str, object] = {"robot_type": args.robot_type, "site": args.site,
                                    "count": args.count}
    for name in ("robot_id", "policy", "control_hz", "seed", "task"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.fast:
        overrides["realtime"] = False
    kafka = KafkaSettings()
    settings = AgentSettings(**overrides)  # type: ignore[arg-type]
    log.info("agent settings: %s", settings.model_dump(mode="json"))
    log.info("kafka settings: %s", kafka.redacted())
    return serve(settings, kafka)


def _controller(args: argparse.Namespace) -> int:
    kafka = KafkaSettings()
    overrides = {}
    if args.heartbeat_timeout is not None:
        overrides["heartbeat_timeout_s"] = args.heartbeat_timeout
    settings = ControllerSettings(**overrides)
    log.info("controller settings: %s", settings.model_dump())
    log.info("kafka settings: %s", kafka.redacted())
    controller = Controller(kafka, settings)

    def on_signal(signum: int, _frame: object) -> None:
        controller.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    controller.run()
    return 0


# -- views derived from the log ---------------------------------------------------------------


def fleet_view(kafka: KafkaSettings, heartbeat_timeout_s: float = 5.0) -> Fleet:
    """The fleet as the log tells it: compacted topics plus recent heartbeats.

    Times are wall-clock seconds (each event's ``produced_at``), so the view needs no
    running controller.
    """
    fleet = Fleet(heartbeat_timeout_s)
    follower = Follower(kafka, {catalog.ROBOTS: "beginning", catalog.EXPERIMENTS: "beginning",
                                catalog.ASSIGNMENTS: "beginning"}, role="view")
    items: list[Accepted | Rejected] = []
    try:
        follower.wait_caught_up(30.0, items)
    finally:
        follower.close()
    for item in _recent(kafka, catalog.HEARTBEATS, per_partition=200):
        items.append(item)
    events = [i.event for i in items if isinstance(i, Accepted)
              and isinstance(i.event, ev.Envelope)]
    # In the order they happened: a heartbeat from before a robot was declared lost
    # must not make it look as if it came back.
    for event in sorted(events, key=lambda e: e.produced_at):
        fleet.apply(event, event.produced_at.timestamp())
    return fleet


def _recent(kafka: KafkaSettings, spec: catalog.TopicSpec, per_partition: int
            ) -> list[Accepted | Rejected]:
    from topics.consumer import TopicReader

    with TopicReader(kafka, spec, start=per_partition) as reader:
        return list(reader.read(idle_s=1.0))


def _ago(seconds: float) -> str:
    if seconds < 0:
        return "now"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _robots(args: argparse.Namespace) -> int:
    kafka = KafkaSettings()
    fleet = fleet_view(kafka)
    now = time.time()
    robots = sorted(fleet.robots.values(), key=lambda r: (r.site, r.robot_id))
    # Mirrored sites whose MirrorMaker heartbeats stopped: the controller holds their leases.
    from infra import role_status

    unreachable = set(role_status.unreachable_sites(kafka))
    if args.json:
        for r in robots:
            print(json.dumps({
                "robot_id": r.robot_id, "type": r.robot_type, "site": r.site,
                "state": r.state.value, "experiment": r.experiment_id,
                "last_heartbeat_s": round(now - r.last_seen, 1),
                "steps_per_s": round(r.steps_per_s, 1), "steps_total": r.steps_total,
                "policy_version": r.policy_version, "spool_bytes": r.spool_bytes,
                "spool_full": r.spool_full, "dead_letters": r.dead_letters,
                "site_unreachable": r.site in unreachable,
            }))
        return 0
    if not robots:
        print("no robots have announced yet; start one with "
              "`userctl agent --robot-type reacher2d --site lab-a`")
        return 0
    rows = [["ROBOT", "TYPE", "SITE", "STATE", "EXPERIMENT", "LAST HEARTBEAT", "STEPS/S",
             "SPOOL", "DEAD LETTERS"]]
    for r in robots:
        silent = now - r.last_seen
        state = r.state.value
        if r.spool_full:
            state += " (spool-full)"  # held: the agent's spool has no room left
        if r.site in unreachable and r.state is not ev.RobotState.LOST:
            state += " (site unreachable)"  # its link is down, not necessarily the robot
        elif silent > fleet.heartbeat_timeout_s and r.state is not ev.RobotState.LOST:
            state += " (silent)"
        rows.append([r.robot_id, r.robot_type, r.site, state, r.experiment_id or "-",
                     _ago(silent), f"{r.steps_per_s:.1f}", agent_spool.human_bytes(r.spool_bytes),
                     str(r.dead_letters)])
    _table(rows)
    return 0


# -- experiments ----------------------------------------------------------------------------


def load_spec(path: Path) -> ExperimentSpec:
    """Read and validate an experiment file; errors name the field and the file.

    Beyond the spec's own rules, every requested robot type must be registered and able
    to do the experiment's ``task`` (``agents.registry``, plug-ins included).
    """
    spec = load_model(path, ExperimentSpec, "experiment spec")
    problems = task_problems(spec)
    if problems:
        raise SystemExit("\n".join([f"userctl: {path} is not a valid experiment spec:",
                                     *(f"  {p}" for p in problems)]))
    return spec


def task_problems(spec: ExperimentSpec) -> list[str]:
    """Field-level problems with ``spec``'s robot types, task, algorithm and policy kind
    (``learners.registry.problems``), one line each."""
    from agents import registry
    from agents import robot as robot_mod

    out = []
    for i, request in enumerate(spec.robots):
        try:
            tasks = registry.robot_tasks(request.robot_type)
        except robot_mod.RobotError as exc:
            out.append(f"robots.{i}.robot_type: {exc}")
            continue
        if spec.task not in tasks:
            out.append(f"task: robot type {request.robot_type!r} cannot do task "
                       f"{spec.task!r}; it can do: {', '.join(tasks)}")
    from learners import registry as learner_registry  # algorithm and policy kind by name

    out.extend(learner_registry.problems(spec))
    types = list(dict.fromkeys(r.robot_type for r in spec.robots))
    if spec.policy.shared_across_types and len(types) > 1 and not out:
        out.extend(_shared_policy_problems(spec.task, types, spec.policy.kind))
    return out


def _shared_policy_problems(task: str, types: list[str], kind: str) -> list[str]:
    """One line if the robot types cannot share one policy of ``kind`` (no common action
    space, or for a kind that pads actions, none agreeing on their common values)."""
    from agents import registry
    from agents import robot as robot_mod
    from learners import policies
    from learners.policies import shared

    specs = {}
    for t in types:
        try:
            robot = registry.make_robot(t, task=task, validate=False)
        except robot_mod.RobotError as exc:
            return [f"policy.shared_across_types: {exc}"]
        try:
            specs[t] = policies.PolicySpec.from_robot_spec(robot.spec)
        finally:
            robot.close()
    try:
        shared.shared_spec(specs, policies.pads_actions(kind))
    except ValueError as exc:
        return [str(exc)]
    return []


def _submit(args: argparse.Namespace) -> int:
    spec = load_spec(args.file)
    kafka = KafkaSettings()
    fleet = fleet_view(kafka)
    if spec.name in fleet.experiments:
        print(f"userctl: experiment {spec.name!r} exists already "
              f"({fleet.experiments[spec.name].state.value}); choose another name",
              file=sys.stderr)
        return 2
    producer = EventProducer(kafka, role="cli")
    producer.send(catalog.EXPERIMENTS, ev.ExperimentSubmittedV1(
        experiment_id=spec.name, spec=spec.model_dump(mode="json")))
    producer.flush(30.0)
    wants = ", ".join(f"{r.count} × {r.robot_type}"
                      + (f" at {'/'.join(r.sites)}" if r.sites else "") for r in spec.robots)
    print(f"submitted {spec.name}: {wants} + {spec.learner.slots} learner slot(s)")
    return 0


def _list(args: argparse.Namespace) -> int:
    fleet = fleet_view(KafkaSettings())
    if not fleet.experiments:
        print("no experiments; submit one with `userctl experiments submit FILE.yaml`")
        return 0
    rows = [["EXPERIMENT", "STATE", "ROBOTS", "WANTS", "DETAIL"]]
    for exp in fleet.experiments.values():
        wants = str(exp.spec.robot_count) if exp.spec else "-"
        rows.append([exp.experiment_id, exp.state.value, str(len(exp.robots)), wants,
                     exp.detail or exp.invalid])
    _table(rows)
    return 0


def _show(args: argparse.Namespace) -> int:
    fleet = fleet_view(KafkaSettings())
    exp = fleet.experiments.get(args.name)
    if exp is None:
        print(f"userctl: no experiment {args.name!r}", file=sys.stderr)
        return 2
    print(f"experiment {exp.experiment_id}: {exp.state.value}"
          + (f" ({exp.detail})" if exp.detail else ""))
    print("robots: " + (", ".join(sorted(exp.robots)) or "none"))
    if exp.spec is None:
        print(exp.invalid)
    else:
        print(yaml.safe_dump(exp.spec.model_dump(mode="json"), sort_keys=False).rstrip())
    return 0


def _cancel(args: argparse.Namespace) -> int:
    kafka = KafkaSettings()
    fleet = fleet_view(kafka)
    if args.name not in fleet.experiments:
        print(f"userctl: no experiment {args.name!r}", file=sys.stderr)
        return 2
    producer = EventProducer(kafka, role="cli")
    producer.send(catalog.EXPERIMENTS, ev.ExperimentStatusV1(
        experiment_id=args.name, state=ev.ExperimentState.CANCELLED,
        detail=f"cancelled by operator at {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M:%SZ}"))
    producer.flush(30.0)
    print(f"cancelled {args.name}; the controller frees its robots")
    return 0


def send_command(producer: EventProducer, robot_id: str, order: ev.CommandKind, *,
                 reason: str = "", issued_by: str | None = None) -> ev.CommandV1:
    """Publish an operator's order to one robot and wait until it is durable (the one
    code path of `userctl command` and the dashboard's buttons)."""
    command = ev.CommandV1(robot_id=robot_id, command=order, reason=reason,
                           issued_by=issued_by or os.environ.get("USER", "operator"))
    producer.send(catalog.COMMANDS, command)
    producer.flush(30.0)
    return command


def _command(args: argparse.Namespace) -> int:
    producer = EventProducer(KafkaSettings(), role="cli")
    send_command(producer, args.robot_id, ev.CommandKind(args.order), reason=args.reason)
    print(f"sent {args.order} to {args.robot_id}")
    return 0
