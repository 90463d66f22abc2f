"""`userctl learn EXPERIMENT` — one experiment's learner (DESIGN §5).

Warm-starts its buffer from the Delta history, continues from Kafka exactly where the
history ends, trains one SAC/RLPD per robot type, publishes weights and metrics, and
checkpoints every ``USER_LEARN_CHECKPOINT_S`` seconds and on SIGTERM.  It resumes from
the newest checkpoint unless ``--fresh``.  Options override ``USER_LEARN_*`` settings.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from infra.cmd_fleet import load_spec
from learners import service
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("learn", help="run an experiment's learner: Delta warm start, live "
                                     "Kafka, weights, checkpoints")
    p.add_argument("experiment", help="experiment id (as submitted)")
    p.add_argument("--fresh", action="store_true",
                   help="start from fresh networks; earlier checkpoints are moved to "
                        "checkpoints.before-<time>")
    p.add_argument("--spec", type=Path,
                   help="experiment YAML to use instead of the submitted one")
    p.add_argument("--delta-root", type=Path,
                   help="Delta table root (USER_LEARN_DELTA_ROOT / USER_SINK_ROOT)")
    p.add_argument("--sink-name", help="the Delta sink's name (USER_LEARN_SINK_NAME)")
    p.add_argument("--topic-suffix", help="appended to the transitions topic (test namespaces)")
    p.add_argument("--checkpoint-s", type=float, help="checkpoint period in seconds")
    p.add_argument("--metrics-s", type=float, help="metrics period in seconds")
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), help="where to train")
    p.add_argument("--torch-threads", type=int, help="torch intra-op threads")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    given = {
        "delta_root": args.delta_root, "sink_name": args.sink_name,
        "topic_suffix": args.topic_suffix, "checkpoint_s": args.checkpoint_s,
        "metrics_s": args.metrics_s, "device": args.device, "torch_threads": args.torch_threads,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    settings = service.LearnSettings(**overrides)
    spec = load_spec(args.spec) if args.spec else None
    try:
        report = service.run(args.experiment, settings, KafkaSettings(), fresh=args.fresh,
                             spec=spec)
    except (LookupError, ValueError, TimeoutError, RuntimeError, OSError) as exc:
        raise SystemExit(f"userctl learn: {exc}") from None
    print(f"learner of {args.experiment} stopped: {report.reason}")
    return 0
