"""`userctl replay EXPERIMENT --to-topic T | --reward NAME@VERSION` — reuse the history.

``--to-topic`` republishes the experiment's raw steps from Delta to topic ``T`` (per-robot
order kept); ``--reward`` back-fills another reward function over them into the
``transitions`` table, next to the functions already there (idempotent, resumable).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline import history, rewards, sink
from topics.settings import KafkaSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="republish an experiment from Delta, or back-fill a "
                                      "new reward function over it")
    p.add_argument("experiment", metavar="EXPERIMENT")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--to-topic", metavar="TOPIC", help="publish the raw steps to TOPIC")
    what.add_argument("--reward", metavar="NAME@VERSION",
                      help="back-fill this reward function into the transitions table")
    p.add_argument("--root", type=Path, help="Delta root (default: the sink's, USER_SINK_ROOT)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    root = args.root or sink.SinkSettings().root
    try:
        if args.to_topic:
            rep = history.replay(KafkaSettings(), root, args.experiment, args.to_topic)
            print(f"replayed {rep.batches} batches, {rep.steps} steps of "
                  f"{len(rep.robots)} robots ({', '.join(rep.robots)}) to {rep.topic}")
            return 0
        fn = rewards.lookup(args.reward)
        bf = history.backfill(root, args.experiment, fn)
    except (history.HistoryError, KeyError) as exc:
        raise SystemExit(f"userctl replay: {exc.args[0]}") from None
    print(f"back-filled {bf.steps} steps with {bf.reward_fn} in {bf.commits} commits "
          f"({bf.skipped} already there); per robot: "
          + (", ".join(f"{r}={n}" for r, n in sorted(bf.robots.items())) or "none"))
    return 0
