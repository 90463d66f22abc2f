"""`userctl rewards list|run NAME@VERSION` — reward functions and their stream jobs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipeline import reward_job, rewards
from topics.settings import KafkaSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("rewards", help="list reward functions; run one as a faust job")
    rsub = p.add_subparsers(dest="rewards_cmd", required=True)
    s = rsub.add_parser("list", help="registered reward functions (name@version)")
    s.set_defaults(func=_list)
    s = rsub.add_parser(
        "run", help="score transitions.raw into transitions with one reward function "
                    "(at-least-once; the Delta sink drops repeats)")
    s.add_argument("reward", metavar="NAME@VERSION")
    s.add_argument("--topic-suffix", default="", help="appended to topic names "
                   "(test namespaces)")
    s.add_argument("--datadir", type=Path, default=None,
                   help="faust's local state directory")
    s.set_defaults(func=_run)


def _list(args: argparse.Namespace) -> int:
    for rid, entry in rewards.available().items():
        needs = f" (info: {', '.join(entry.needs)})" if entry.needs else ""
        print(f"{rid:24} {entry.doc.splitlines()[0] if entry.doc else ''}{needs}")
    return 0


def _run(args: argparse.Namespace) -> int:
    try:
        fn = rewards.lookup(args.reward)
    except KeyError as exc:
        raise SystemExit(f"userctl rewards run: {exc.args[0]}") from None
    reward_job.run(KafkaSettings(), fn, topic_suffix=args.topic_suffix, datadir=args.datadir,
                   loglevel=os.environ.get("USER_LOG_LEVEL", "INFO"))
    return 0
