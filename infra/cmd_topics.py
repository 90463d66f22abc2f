"""`userctl topics create|describe|list` — the topic catalog on the broker."""

from __future__ import annotations

import argparse

from topics import admin, catalog
from topics.settings import KafkaSettings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("topics", help="create and inspect the catalog's topics")
    tsub = p.add_subparsers(dest="topics_cmd", required=True)
    s = tsub.add_parser("create", help="create missing topics (idempotent); report drift")
    s.add_argument("--alter", action="store_true",
                   help="also change drifted configs and add missing partitions")
    s.set_defaults(func=_create)
    s = tsub.add_parser("describe", help="show each topic's spec beside the broker's view")
    s.set_defaults(func=_describe)
    s = tsub.add_parser("list", help="the catalog: name, key, value, partitions, cleanup")
    s.set_defaults(func=_list)


def _fmt_retention(ms: int) -> str:
    if ms < 0:
        return "forever"
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


def _create(args: argparse.Namespace) -> int:
    settings = KafkaSettings()
    reports = admin.ensure_topics(settings, alter=args.alter)
    drift = [r for r in reports if r.state is admin.State.DRIFT]
    rows = [["TOPIC", "STATE", "PARTITIONS"]]
    for r in reports:
        rows.append([r.spec.name, r.state.value, str(r.partitions_broker)])
    _table(rows)
    for r in drift:
        for d in r.differences:
            print(f"drift: {r.spec.name}: {d.setting} is {d.broker!r} on the broker, "
                  f"{d.spec!r} in the spec")
    if drift:
        print("run `userctl topics create --alter` to apply the specs "
              "(partitions can only grow)")
        return 3
    return 0


def _describe(args: argparse.Namespace) -> int:
    settings = KafkaSettings()
    reports = admin.describe_topics(settings)
    rows = [["TOPIC", "STATE", "KEY", "VALUE", "PARTITIONS spec/broker",
             "CLEANUP spec/broker", "RETENTION spec/broker", "MAX BYTES spec/broker"]]
    for r in reports:
        c = r.configs_broker
        rows.append([
            r.spec.name, r.state.value, r.spec.key.value, r.spec.value.value,
            f"{r.partitions_spec}/{'-' if r.partitions_broker is None else r.partitions_broker}",
            f"{r.spec.cleanup.value}/{c.get('cleanup.policy', '-')}",
            f"{_fmt_retention(r.spec.retention_ms)}/"
            f"{_fmt_retention(int(c['retention.ms'])) if 'retention.ms' in c else '-'}",
            f"{r.spec.max_message_bytes}/{c.get('max.message.bytes', '-')}",
        ])
    _table(rows)
    sites = settings.sites.sites
    print("sites: " + "; ".join(f"{s} -> partitions {list(p)}" for s, p in sites.items()))
    return 0 if all(r.state is admin.State.OK for r in reports) else 3


def _list(args: argparse.Namespace) -> int:
    settings = KafkaSettings()
    rows = [["TOPIC", "KEY", "VALUE", "PARTITIONS", "CLEANUP", "RETENTION", "DESCRIPTION"]]
    for spec in catalog.CATALOG:
        parts = str(spec.partition_count(settings.sites))
        if spec.site_partitioned:
            parts += " (by site)"
        rows.append([spec.name, spec.key.value, spec.value.value, parts, spec.cleanup.value,
                     _fmt_retention(spec.retention_ms), spec.description])
    _table(rows)
    return 0
