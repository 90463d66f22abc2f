"""`userctl` builds, every command's help renders (a stray '%' breaks argparse), and history's
options read the same on either side of its subcommand."""

from __future__ import annotations

import argparse

import pytest

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


@pytest.mark.parametrize(("argv", "as_json", "root"), [
    (["history", "interventions", "e", "--json"], True, None),  # README's order
    (["history", "--json", "interventions", "e"], True, None),
    (["history", "interventions", "e"], False, None),
    (["history", "success", "e", "--root", "/d", "--json"], True, "/d"),
    (["history", "--root", "/d", "sql", "SELECT 1"], False, "/d"),
])
def test_history_options_read_the_same_before_and_after_the_subcommand(
        argv: list[str], as_json: bool, root: str | None) -> None:
    args = cli.build_parser(argv).parse_args(argv)
    assert args.json is as_json
    assert (None if args.root is None else str(args.root)) == root
