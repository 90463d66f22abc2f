"""`userctl host`, `userctl hosts` and `userctl inference` — compute as a resource (issue 14).

``userctl host`` runs on each compute machine: it announces CPUs, memory and GPUs and
starts what the controller places on it.  ``userctl hosts`` lists the hosts like
``userctl robots`` lists robots.  ``userctl inference EXPERIMENT`` serves an experiment's
policy to its robots over the bus (what a host starts for an inference placement).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import time

from infra.cmd_fleet import _ago, _table, fleet_view
from pipeline.compute import Compute
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("host", help="offer this machine's CPUs and GPUs to the controller")
    p.add_argument("--host-id", help="host id (default: the hostname; USER_HOST_HOST_ID)")
    p.add_argument("--site", help="where it runs (default cloud; USER_HOST_SITE)")
    p.add_argument("--cpus", type=int, help="slots to offer (default: CPU count)")
    p.add_argument("--no-gpus", action="store_true", help="announce no GPUs")
    p.set_defaults(func=_host)
    p = sub.add_parser("hosts", help="compute hosts: CPUs, memory, GPUs and placements")
    p.add_argument("--json", action="store_true", help="one JSON object per host")
    p.set_defaults(func=_hosts)
    p = sub.add_parser("inference", help="serve an experiment's policy to its robots")
    p.add_argument("experiment", help="experiment id (as submitted)")
    p.add_argument("--replica", type=int, default=0, help="which replica this is")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    p.add_argument("--max-batch", type=int, help="most requests per forward pass")
    p.set_defaults(func=_inference)


def _host(args: argparse.Namespace) -> int:
    from infra import host

    overrides: dict[str, object] = {}
    if args.host_id:
        overrides["host_id"] = args.host_id
    if args.site:
        overrides["site"] = args.site
    if args.cpus:
        overrides["cpus"] = args.cpus
    if args.no_gpus:
        overrides["detect_gpus"] = False
    return host.serve(host.HostSettings(**overrides), KafkaSettings())  # type: ignore[arg-type]


def compute_view(kafka: KafkaSettings, heartbeat_timeout_s: float = 5.0) -> Compute:
    """Hosts and placements as the log tells them (wall-clock times, no controller)."""
    from schemas import events as ev
    from topics import catalog
    from topics.consumer import TopicReader
    from topics.follow import Follower
    from topics.validation import Accepted, Rejected

    view = Compute(heartbeat_timeout_s)
    follower = Follower(kafka, {catalog.HOSTS: "beginning", catalog.PLACEMENTS: "beginning",
                                catalog.EXPERIMENTS: "beginning"}, role="view")
    items: list[Accepted | Rejected] = []
    try:
        follower.wait_caught_up(30.0, items)
    finally:
        follower.close()
    with TopicReader(kafka, catalog.HOST_HEARTBEATS, start=200) as reader:
        items.extend(reader.read(idle_s=1.0))
    events = [i.event for i in items if isinstance(i, Accepted)
              and isinstance(i.event, ev.Envelope)]
    for event in sorted(events, key=lambda e: e.produced_at):
        view.apply(event, event.produced_at.timestamp())
    return view


def _hosts(args: argparse.Namespace) -> int:
    from pipeline.compute import hosts_table

    view = compute_view(KafkaSettings())
    now = time.time()
    rows = hosts_table(view.hosts.values(), view.placements, now, view.heartbeat_timeout_s)
    if args.json:
        for row, h in zip(rows, sorted(view.hosts.values(), key=lambda h: h.host_id),
                          strict=True):
            print(json.dumps({**row, "last_heartbeat_s": round(now - h.last_seen, 1)}))
        return 0
    if not rows:
        print("no compute hosts have announced yet; start one with `userctl host`")
        return 0
    table = [["HOST", "SITE", "STATE", "CPUS", "MEMORY", "GPUS", "PLACED", "RUNNING",
              "LAST HEARTBEAT"]]
    for row, h in zip(rows, sorted(view.hosts.values(), key=lambda h: h.host_id),
                      strict=True):
        table.append([str(row["host"]), str(row["site"]), str(row["state"]), str(row["cpus"]),
                      f"{row['memory_gb']} GiB", str(row["gpus"]), str(row["placed"]),
                      str(row["running"]), _ago(now - h.last_seen)])
    _table(table)
    for row in rows:
        if row["failed"]:
            print(f"{row['host']}: {row['failed']}")
    return 0


def _inference(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from agents import inference, registry, weights_kafka
    from learners import policies
    from learners.policies import shared

    kafka = KafkaSettings()
    exp = fleet_view(kafka).experiments.get(args.experiment)
    if exp is None or exp.spec is None:
        raise SystemExit(f"userctl: no valid experiment {args.experiment!r} has been "
                         "submitted; see `userctl experiments list`")
    spec = exp.spec
    # One network for every robot type the experiment asks for: sized for the widest.
    types = list(dict.fromkeys(r.robot_type for r in spec.robots))
    robot_specs = [registry.make_robot(t, task=spec.task).spec for t in types]
    widest = max(robot_specs, key=lambda s: (s.action.size, s.observation.size))
    pspec = policies.PolicySpec.from_robot_spec(widest)
    options = dict(getattr(spec.policy, "options", {}) or {})
    options.setdefault("seed", spec.algorithm.seed)
    if spec.policy.kind == "vla_transformer":
        options.setdefault("chunk", spec.inference.chunk)
    if spec.policy.shared_across_types and len(types) > 1:
        # The learner's one policy across types, as it publishes it on the widest type's
        # stream: requests say their robot type, and every type is served in one pass.
        options[shared.OPTION] = shared.options_for(
            widest.robot_type, {s.robot_type: policies.PolicySpec.from_robot_spec(s)
                                for s in robot_specs}, policies.pads_actions(spec.policy.kind))
    else:
        pspec = policies.PolicySpec(max(s.observation.size for s in robot_specs),
                                    pspec.action_dim, pspec.action_low, pspec.action_high)
    policy = policies.build(spec.policy.kind, pspec, options)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    to = getattr(policy, "to", None)
    if device == "cuda" and to is not None:
        to(device)
    # Weights stream here, not to the robots: the newest verified version is served.
    subscriber = weights_kafka.subscriber_for(kafka, widest)
    stream = policies.weights_stream(args.experiment, widest.robot_type)

    on_device: dict[int, inference.Servable] = {}

    def current() -> tuple[inference.Servable, int]:
        if subscriber is not None:
            subscriber.want(stream)
            applied = subscriber.current(stream)
            if applied is not None:
                if applied.version not in on_device:  # a new version: onto our device once
                    move = getattr(applied.policy, "to", None)
                    if device == "cuda" and move is not None:
                        move(device)
                    on_device.clear()
                    on_device[applied.version] = applied.policy
                return on_device[applied.version], applied.version
        return policy, 0

    # Warm up before joining the group (encoder load, first forward pass): robots are
    # handed to a replica only once it can answer at once.
    policy.act(np.zeros((1, pspec.observation_dim), np.float32), deterministic=True)
    log.info("serving %s (%s) on %s", args.experiment, spec.policy.kind, device)
    service = inference.InferenceService(
        kafka, args.experiment, current, replica=str(args.replica),
        max_batch=args.max_batch or spec.inference.max_batch)
    if subscriber is not None:
        subscriber.start()

    def on_signal(signum: int, _frame: object) -> None:
        service.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        service.run()
    finally:
        if subscriber is not None:
            subscriber.close()
    return 0
