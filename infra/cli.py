"""`userctl`: the one command-line entry point of USER.

Each subcommand lives in its own ``infra/cmd_*.py`` (or package) exposing
``register(subparsers)``; add a module name to ``COMMANDS`` to add a command.
Errors a user can cause end in one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from pydantic import ValidationError

#: Modules that each register one top-level subcommand, in help order.
COMMANDS: tuple[str, ...] = (
    "infra.cmd_broker",
    "infra.cmd_security",
    "infra.cmd_topics",
    "infra.cmd_rewards",
    "infra.cmd_sink",
    "infra.cmd_replay",
    "infra.cmd_history",
    "infra.cmd_demos",
    "infra.cmd_learn",
    "infra.cmd_fleet",
    "infra.cmd_compute",
    "infra.cmd_plugins",
    "infra.cmd_tail",
    "infra.cmd_topology",
    "infra.cmd_mirror",
    "infra.cmd_docker",
    "infra.cmd_demo",
    "infra.cmd_tensorboard",
    "infra.cmd_dashboard",
    "infra.bench",
)


#: Long-running roles that must start light: command name -> the module registering it.
#: ``userctl <role> …`` imports that module alone, not every command's (the learner's and
#: replay's pull in torch: ~0.7 GB of RSS a controller, sink or reward job never uses;
#: ``tests/unit/test_footprint.py`` holds them to it).
ROLE_COMMANDS: dict[str, str] = {
    "controller": "infra.cmd_fleet",
    "agent": "infra.cmd_fleet",
    "sink": "infra.cmd_sink",
    "rewards": "infra.cmd_rewards",
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``userctl`` parser; for ``argv`` naming a role of :data:`ROLE_COMMANDS`, with
    that role's module only."""
    parser = argparse.ArgumentParser(
        prog="userctl",
        description="USER: online policy learning on robot fleets over Kafka, faust and Delta Lake",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    first = next((a for a in argv or () if not a.startswith("-")), None)
    modules = (ROLE_COMMANDS[first],) if first in ROLE_COMMANDS else COMMANDS
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from infra.broker import BrokerError, default_home
    from topics.admin import BrokerUnreachableError

    # Every process started from here (and its children) shares one state directory.
    os.environ.setdefault("USER_HOME", str(default_home()))
    parser = build_parser(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("USER_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    # librdkafka's notices (group joins, purged queues) are its own business; its warnings
    # and errors reach the console through logging, never as raw `%N|…` lines.
    if logging.getLogger().level < logging.WARNING:
        logging.getLogger("librdkafka").setLevel(
            logging.DEBUG if os.environ.get("USER_LOG_LEVEL", "").upper() == "DEBUG"
            else logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except (BrokerError, BrokerUnreachableError) as exc:
        print(f"userctl: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or exc.title
        print(f"userctl: bad setting {field}: {err['msg']} (input: {err.get('input')!r})",
              file=sys.stderr)
        return 2
    except SystemExit as exc:
        if isinstance(exc.code, str):  # a message for the user: one place prints it
            print(exc.code, file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
