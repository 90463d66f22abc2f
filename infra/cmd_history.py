"""`userctl history sql QUERY | success EXPERIMENT | gaps [EXPERIMENT]` — questions over
the Delta tables, and the gaps the sink and learners reported.

Tables are views named ``transitions_raw``, ``transitions``, ``episodes`` and
``policies`` (DuckDB SQL).  Example::

    userctl history sql "SELECT reward_fn, count(*) FROM transitions GROUP BY ALL"
    userctl history success exp-1 --reward reach_dense@1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow as pa

from infra import cmd_compare, cmd_replay
from learners import lineage
from pipeline import history, sink
from topics import gaps
from topics.settings import KafkaSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("history", help="SQL over the Delta history (DuckDB)")
    p.add_argument("--root", type=Path, help="Delta root (default: the sink's, USER_SINK_ROOT)")
    p.add_argument("--json", action="store_true", help="one JSON object per row")
    hsub = p.add_subparsers(dest="history_cmd", required=True)
    s = hsub.add_parser("sql", help="run a DuckDB query over the tables")
    s.add_argument("query")
    s.set_defaults(func=_sql)
    s = hsub.add_parser("success", help="success rate per robot per policy version")
    s.add_argument("experiment")
    s.add_argument("--reward", default="reach_dense@1", metavar="NAME@VERSION")
    s.set_defaults(func=_success)
    s = hsub.add_parser("interventions", help="intervention rate per robot per policy "
                                              "version, and over time (demos left out)")
    s.add_argument("experiment")
    s.add_argument("--over-time", action="store_true",
                   help="per robot per --bucket-s seconds instead of per policy version")
    s.add_argument("--bucket-s", type=int, default=60, metavar="S")
    s.add_argument("--plot", type=Path, metavar="PNG", help="also plot the rate over time")
    s.add_argument("--by-version", action="store_true",
                   help="per policy version, all robots together, with episode success "
                        "(--reward's) and autonomous success (no takeover): the HG-DAgger "
                        "report")
    s.add_argument("--reward", default="reach_dense@1", metavar="NAME@VERSION",
                   help="whose success --by-version counts")
    s.set_defaults(func=_interventions)
    s = hsub.add_parser("gaps", help="records the sink or a learner expected that no longer "
                                     "existed (from the gaps topic)")
    s.add_argument("experiment", nargs="?",
                   help="only this experiment's learner gaps, plus the sink's (which may "
                        "hold any experiment's steps)")
    s.add_argument("--topic-suffix", default="", help="read gaps<SUFFIX> (test namespaces)")
    s.set_defaults(func=_gaps)
    s = hsub.add_parser("lineage", help="the data (tables, Delta versions, Kafka offsets) a "
                                        "policy version trained on")
    s.add_argument("experiment")
    s.add_argument("--version", type=int, required=True, metavar="V")
    s.add_argument("--robot-type", metavar="TYPE",
                   help="the robot type's weights stream (default: every stream with V)")
    s.add_argument("--manifests", choices=("auto", "delta", "kafka"), default="auto",
                   help="read versions from the policies table, the weights.manifests "
                        "topic, or auto (the table when it has them)")
    s.set_defaults(func=_lineage)
    cmd_compare.register(hsub)
    # --json and --root read the same after the subcommand as before it (`history
    # interventions EXP --json`); SUPPRESS leaves the parent's value when not given.
    for command in hsub.choices.values():
        command.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                             help="one JSON object per row")
        command.add_argument("--root", type=Path, default=argparse.SUPPRESS,
                             help="Delta root (default: the sink's, USER_SINK_ROOT)")


def _print(table: pa.Table, as_json: bool) -> None:
    rows = table.to_pylist()
    if as_json:
        for row in rows:
            print(json.dumps(row, default=str))
        return
    cells = [[str(c) for c in table.column_names]]
    cells += [["" if v is None else str(v) for v in row.values()] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"({table.num_rows} rows)")


def _query(args: argparse.Namespace, query: str, params: dict[str, object] | None = None
           ) -> int:
    import duckdb

    try:
        table = history.sql(args.root or sink.SinkSettings().root, query, params)
    except duckdb.Error as exc:
        raise SystemExit(f"userctl history: {str(exc).splitlines()[0]}") from None
    _print(table, args.json)
    return 0


def _sql(args: argparse.Namespace) -> int:
    return _query(args, args.query)


def _gaps(args: argparse.Namespace) -> int:
    try:
        found = gaps.read(KafkaSettings(), experiment_id=args.experiment,
                          topic_suffix=args.topic_suffix)
    except (LookupError, TimeoutError) as exc:
        raise SystemExit(f"userctl history gaps: {exc}") from None
    rows = [{"detected_at": g.detected_at.isoformat(timespec="seconds"),
             "consumer": g.consumer, "experiment": g.experiment_id or "",
             "topic": g.topic, "partition": g.partition, "first_missing": g.first_missing,
             "last_missing": g.last_missing, "missing": g.missing} for g in found]
    if not rows and not args.json:
        print("no gaps reported" + (f" for {args.experiment}" if args.experiment else ""))
        return 0
    _print(pa.Table.from_pylist(rows), args.json)
    return 0


def _success(args: argparse.Namespace) -> int:
    return _query(args, history.SUCCESS_BY_ROBOT_AND_VERSION,
                  {"experiment": args.experiment, "reward_fn": args.reward})


def _interventions(args: argparse.Namespace) -> int:
    from pipeline import demos

    params: dict[str, object] = {"experiment": args.experiment,
                                 "demo_prefix": demos.DEMO_PREFIX}
    if args.plot is not None:
        table = history.sql(args.root or sink.SinkSettings().root,
                            history.INTERVENTIONS_OVER_TIME,
                            {**params, "bucket_s": max(1, args.bucket_s)})
        _plot_interventions(table, args.plot, args.experiment)
    if args.by_version:
        return _query(args, history.BY_VERSION, {**params, "reward_fn": args.reward})
    if args.over_time:
        params["bucket_s"] = max(1, args.bucket_s)
        return _query(args, history.INTERVENTIONS_OVER_TIME, params)
    return _query(args, history.INTERVENTIONS_BY_ROBOT_AND_VERSION, params)


def _plot_interventions(table: pa.Table, path: Path, experiment: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=110)
    rows = table.to_pylist()
    for robot in sorted({r["robot_id"] for r in rows}):
        mine = [r for r in rows if r["robot_id"] == robot]
        ax.plot([r["from_s"] for r in mine], [100 * r["intervention_rate"] for r in mine],
                marker=".", label=robot)
    ax.set_xlabel("seconds since the experiment's first step")
    ax.set_ylabel("steps a human chose (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{experiment}: intervention rate (falling = the policy takes over)")
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(loc="upper right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def _lineage(args: argparse.Namespace) -> int:
    root = args.root or sink.SinkSettings().root
    try:
        runs = lineage.runs(cmd_replay.published(root, args.experiment, args.manifests))
    except lineage.LineageError as exc:
        raise SystemExit(f"userctl history lineage: {exc}") from None
    found = [(run, p) for run in runs for p in run.versions
             if p.version == args.version
             and (args.robot_type is None or p.lineage.get("robot_type") == args.robot_type)]
    if not found:
        raise SystemExit(f"userctl history lineage: {args.experiment} has no version "
                         f"{args.version} with recorded lineage"
                         + (f" for robot type {args.robot_type}" if args.robot_type else ""))
    for run, p in found:
        facts = lineage.trained_on(run, p)
        if args.json:
            print(json.dumps(facts, default=str))
            continue
        warm = facts["warm_start"]
        live = facts["live"]
        assert isinstance(warm, dict) and isinstance(live, dict)
        print(f"{p.stream} version {p.version}: learner step {p.learner_step}, sha256 "
              f"{p.sha256[:16]}…, run {run.run_id} (seed {facts['seed']}, torch threads "
              f"{facts['torch_threads']}"
              + (f", resumed from {facts['resumed_from']}" if facts["resumed_from"] else "")
              + ")")
        if warm.get("version") is None:
            print("  warm start: none (no Delta table yet)")
        else:
            print(f"  warm start: Delta table {warm['table']} version {warm['version']}: "
                  f"{warm['rows']} rows of {warm['experiments']} for {warm['reward_fn']}, "
                  f"Kafka offsets up to {warm['offsets']}")
        spans = live.get("partitions")
        assert isinstance(spans, dict)
        if not spans:
            print("  live: nothing")
        for key, span in sorted(spans.items()):
            assert isinstance(span, dict)
            print(f"  live: {key} offsets {span['first']}..{span['last']} in "
                  f"{span['ingests']} takes (before updates {span['first_update']}.."
                  f"{span['last_update']})")
    return 0
