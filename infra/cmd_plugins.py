"""`userctl plugins` — every entry-point plug-in USER discovers, and the package it came from.

Loads each group the way the roles do (``topics.plugins``): a plug-in that fails to import
is listed with its one-line error instead of crashing the listing.
"""

from __future__ import annotations

import argparse
import json

from topics import plugins


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plugins", help="robot types, tasks, rewards, policies and "
                                       "algorithms from installed packages (entry points)")
    p.add_argument("--json", action="store_true", help="one JSON object per plug-in")
    p.set_defaults(func=_list)


def _list(args: argparse.Namespace) -> int:
    rows = [p for group in plugins.GROUPS for p in plugins.load(group)]
    if args.json:
        for p in rows:
            print(json.dumps({"group": p.group, "name": p.name, "target": p.target,
                              "package": p.package, "error": p.error}))
        return 0
    if not rows:
        print("no plug-ins found; is USER installed (pip install -e .)?")
        return 0
    header = ("GROUP", "NAME", "PACKAGE", "TARGET", "STATUS")
    table = [header] + [(p.group, p.name, p.package, p.target,
                         "ok" if p.error is None else f"broken: {p.error}") for p in rows]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return 0
