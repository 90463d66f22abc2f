"""`userctl sink` — Kafka -> Delta Lake history, exactly once (DESIGN §4).

Runs one member of the sink's consumer group until SIGTERM/Ctrl-C; start more to share
the partitions.  Options override ``USER_SINK_*`` settings; ``userctl sink compact``
bin-packs the tables' small files once.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline import delta_writer, sink, tables
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sink", help="write transitions, episodes and policies to Delta, "
                                    "exactly once")
    p.add_argument("--root", type=Path, help="directory of the Delta tables "
                                             "(USER_SINK_ROOT, default .user/delta)")
    p.add_argument("--name", help="sink name: consumer group and app-id prefix")
    p.add_argument("--topics", help="comma-separated catalog topics (default: "
                                    + ",".join(sink.DEFAULT_TOPICS) + ")")
    p.add_argument("--topic-suffix", help="appended to each topic name (test namespaces)")
    p.add_argument("--flush-rows", type=int, help="flush a table at this many rows")
    p.add_argument("--flush-bytes", type=int, help="…or this many buffered record bytes")
    p.add_argument("--flush-interval", type=float, help="…or after this many seconds")
    p.add_argument("--compact-interval", type=float,
                   help="seconds between background compactions (0: off)")
    p.add_argument("--vacuum-retention", type=float, dest="vacuum_retention",
                   help="after each compaction, delete files unreferenced for this many "
                        "hours (default 1; keep it above the longest snapshot read)")
    p.add_argument("--static", action="store_true", default=None,
                   help="assign all partitions (or --sites' ones) without a consumer group")
    p.add_argument("--sites", help="with --static: comma-separated sites to sink")
    p.set_defaults(func=_run)
    sp = p.add_subparsers(dest="sink_cmd", metavar="SUBCOMMAND")
    c = sp.add_parser("compact", help="compact every table's small files now, then vacuum "
                                      "what compaction replaced")
    c.add_argument("--root", type=Path, dest="compact_root")
    c.add_argument("--retention", type=float, default=None, dest="compact_retention",
                   help="vacuum files unreferenced for this many hours (default: the "
                        "sink's vacuum retention)")
    c.set_defaults(func=_compact)


def settings_from(args: argparse.Namespace) -> sink.SinkSettings:
    given = {
        "root": args.root, "name": args.name, "topic_suffix": args.topic_suffix,
        "flush_rows": args.flush_rows, "flush_bytes": args.flush_bytes,
        "flush_interval_s": args.flush_interval,
        "compact_interval_s": args.compact_interval,
        "vacuum_retention_h": args.vacuum_retention,
        "static": args.static,
        "sites": tuple(x.strip() for x in args.sites.split(",")) if args.sites else None,
        "topics": tuple(t.strip() for t in args.topics.split(",")) if args.topics else None,
    }
    return sink.SinkSettings(**{k: v for k, v in given.items() if v is not None})


def _run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    unknown = [t for t in settings.topics if t not in tables.TABLE_OF_TOPIC]
    if unknown:
        raise SystemExit(f"userctl sink: no table for topics {unknown}; the sink writes "
                         f"{', '.join(tables.TABLE_OF_TOPIC)}")
    runner = sink.DeltaSink(KafkaSettings(), settings)
    runner.install_signal_handlers()
    runner.run()
    log.info("sink stopped after %d commits, %d rows", runner.commits, runner.committed_rows)
    return 0


def _compact(args: argparse.Namespace) -> int:
    defaults = sink.SinkSettings()
    root = args.compact_root or args.root or defaults.root
    retention = (args.compact_retention if args.compact_retention is not None
                 else defaults.vacuum_retention_h)
    for table in tables.TABLE_OF_TOPIC.values():
        path = tables.table_path(root, table)
        metrics = sink.compact(path)
        print(f"{table}: {'nothing to do' if metrics is None else metrics}")
        if retention is not None:
            removed = delta_writer.vacuum(path, retention)
            print(f"{table}: vacuumed {len(removed)} unreferenced files "
                  f"(older than {retention:g} h)")
    return 0
