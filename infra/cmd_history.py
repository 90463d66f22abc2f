"""`userctl history sql QUERY | success EXPERIMENT` — questions over the Delta tables.

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

from pipeline import history, sink


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


def _success(args: argparse.Namespace) -> int:
    return _query(args, history.SUCCESS_BY_ROBOT_AND_VERSION,
                  {"experiment": args.experiment, "reward_fn": args.reward})
