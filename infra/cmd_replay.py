"""`userctl replay EXPERIMENT --to-topic T | --reward NAME@VERSION | --learner` — reuse
the history.

``--to-topic`` republishes the experiment's raw steps from Delta to topic ``T`` (per-robot
order kept); ``--reward`` back-fills another reward function over them into the
``transitions`` table, next to the functions already there (idempotent, resumable);
``--learner`` re-runs the experiment's learner on the data each published version trained
on (the lineage in its manifests, ``learners.lineage``) and compares every version's
SHA-256 with the original's — or, with ``--algorithm``/``--policy``, re-learns offline.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Literal

from confluent_kafka import KafkaException

from learners import lineage, rerun
from pipeline import history, rewards, sink
from schemas import events
from topics import catalog, validation
from topics.consumer import TopicReader
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)

#: Where published versions (manifests with lineage) are read from.
ManifestSource = Literal["auto", "delta", "kafka"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("replay", help="republish an experiment from Delta, or back-fill a "
                                      "new reward function over it")
    p.add_argument("experiment", metavar="EXPERIMENT")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--to-topic", metavar="TOPIC", help="publish the raw steps to TOPIC")
    what.add_argument("--reward", metavar="NAME@VERSION",
                      help="back-fill this reward function into the transitions table")
    what.add_argument("--learner", action="store_true",
                      help="re-run the learner on what each version trained on; compare the "
                           "weights' SHA-256 version by version")
    p.add_argument("--root", type=Path, help="Delta root (default: the sink's, USER_SINK_ROOT)")
    p.add_argument("--algorithm", metavar="NAME",
                   help="with --learner: re-learn with this algorithm (no comparison)")
    p.add_argument("--policy", metavar="KIND",
                   help="with --learner: re-learn with this policy kind (no comparison)")
    p.add_argument("--versions", type=int, metavar="N",
                   help="with --learner: only each stream's first N versions")
    p.add_argument("--manifests", choices=("auto", "delta", "kafka"), default="auto",
                   help="where the published versions are read: the policies table, the "
                        "weights.manifests topic, or auto (the table when it has them)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="with --learner: write each replayed version's safetensors blob here")
    p.set_defaults(func=_run)


def published(root: Path, experiment: str, source: ManifestSource = "auto"
              ) -> list[lineage.Published]:
    """The published versions of ``experiment``'s weights streams, with their lineage."""
    found: list[lineage.Published] = []
    if source in ("auto", "delta"):
        found = rerun.manifests_from_delta(root, experiment)
        if found or source == "delta":
            return found
    try:
        with TopicReader(KafkaSettings(), catalog.WEIGHTS_MANIFESTS, start="beginning") as r:
            for item in r.read():
                event = item.event if isinstance(item, validation.Accepted) else None
                if (isinstance(event, events.WeightsManifestV1)
                        and event.lineage.get("experiment") == experiment):
                    found.append(lineage.Published(event.experiment_id, event.version,
                                                   event.learner_step, event.sha256,
                                                   dict(event.lineage)))
    except (LookupError, KafkaException) as exc:
        raise SystemExit(f"userctl: cannot read {catalog.WEIGHTS_MANIFESTS.name}: {exc}; "
                         "start the broker, or sink the manifests to Delta and pass "
                         "--manifests delta") from None
    return found


def _learner(args: argparse.Namespace, root: Path) -> int:
    overrides = {k: v for k, v in (("algorithm", args.algorithm), ("policy", args.policy)) if v}
    try:
        runs = lineage.runs(published(root, args.experiment, args.manifests))
    except lineage.LineageError as exc:
        raise SystemExit(f"userctl replay: {exc}") from None
    if not runs:
        raise SystemExit(f"userctl replay: no published version of {args.experiment} records "
                         "its lineage (it was learned before lineage was recorded, or its "
                         "manifests are not in --manifests " + args.manifests + ")")
    ok = True
    for run in runs:
        try:
            rep = rerun.replay_run(root, run, overrides=overrides, first_versions=args.versions,
                                   out=args.out)
        except (lineage.LineageError, ValueError) as exc:
            raise SystemExit(f"userctl replay: run {run.run_id}: {exc}") from None
        if rep.skipped:
            print(f"run {rep.run}: skipped: {rep.skipped}")
            continue
        print(f"run {rep.run}: {rep.history_rows} warm-start rows, {rep.live_records} live "
              f"records, {rep.updates} updates in {rep.seconds:.1f} s"
              + (f" (re-learned with {overrides})" if overrides else ""))
        print(f"{'stream':<28} {'version':>7} {'step':>7}  {'original':<16} {'replay':<16} result")
        for c in rep.checks:
            print(f"{c.stream:<28} {c.version:>7} {c.learner_step:>7}  {c.expected[:16]:<16} "
                  f"{(c.got or '')[:16]:<16} {c.status}")
        ok = ok and rep.ok
        if not overrides:
            same = sum(c.status == "OK" for c in rep.checks)
            print(f"{same}/{len(rep.checks)} versions bit-identical")
    return 0 if ok else 1


def _run(args: argparse.Namespace) -> int:
    root = args.root or sink.SinkSettings().root
    if (args.algorithm or args.policy or args.versions or args.out) and not args.learner:
        raise SystemExit("userctl replay: --algorithm, --policy, --versions and --out go with "
                         "--learner")
    if args.learner:
        return _learner(args, root)
    try:
        if args.to_topic:
            rep = history.replay(KafkaSettings(), root, args.experiment, args.to_topic)
            print(f"replayed {rep.batches} batches, {rep.steps} steps of "
                  f"{len(rep.robots)} robots ({', '.join(rep.robots)}) to {rep.topic}")
            if rep.too_large:
                print(f"userctl replay: {rep.too_large} steps not sent: each alone is larger "
                      f"than {rep.topic}'s max.message.bytes; raise it and replay again")
                return 1
            return 0
        fn = rewards.lookup(args.reward)
        bf = history.backfill(root, args.experiment, fn)
    except (history.HistoryError, KeyError) as exc:
        raise SystemExit(f"userctl replay: {exc.args[0]}") from None
    print(f"back-filled {bf.steps} steps with {bf.reward_fn} in {bf.commits} commits "
          f"({bf.skipped} already there); per robot: "
          + (", ".join(f"{r}={n}" for r, n in sorted(bf.robots.items())) or "none"))
    return 0
