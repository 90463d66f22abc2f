"""`userctl` builds, and every command's help renders (a stray '%' breaks argparse)."""

from __future__ import annotations

import argparse

from infra import cli


def _walk(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_walk(sub))
    return found


def test_every_command_renders_its_help() -> None:
    parsers = _walk(cli.build_parser())
    assert len(parsers) > 20
    for parser in parsers:
        assert parser.format_help()


def test_the_commands_the_readme_promises_exist() -> None:
    top = cli.build_parser()
    [sub] = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"broker", "topics", "tail", "agent", "controller", "robots", "experiments",
            "command", "rewards", "sink", "replay", "history", "up", "down", "status",
            "demo", "bench"} <= set(sub.choices)
