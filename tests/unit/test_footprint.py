"""Roles that run no network import no torch (issue 17): the controller, the Delta sink and a
reward job start as `userctl <role> …` does, in a fresh interpreter each, and never load
torch (~0.7 GB of RSS they would not use)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

#: Per role: its `userctl` argv, and the modules its handler runs with once started.
ROLES: dict[str, tuple[list[str], str]] = {
    "controller": (["controller"], "from pipeline import controller"),
    "sink": (["sink"], "from pipeline import sink"),
    "reward job": (["rewards", "run", "reach_dense@1"],
                   "from pipeline import reward_job, rewards; rewards.lookup('reach_dense@1')"),
}

_PROBE = """
import json, sys
from infra import cli
argv = json.loads(sys.argv[1])
cli.build_parser(argv).parse_args(argv)
{started}
heavy = sorted(m for m in ("torch", "learners.policies", "learners.sac") if m in sys.modules)
print(json.dumps(heavy))
"""


@pytest.mark.parametrize("role", sorted(ROLES))
def test_a_role_without_a_network_never_imports_torch(role: str) -> None:
    argv, started = ROLES[role]
    out = subprocess.run(
        [sys.executable, "-c", _PROBE.format(started=started), json.dumps(argv)],
        capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [], (
        f"`userctl {' '.join(argv)}` imports {out.stdout.strip()}")


def test_the_full_command_line_still_lists_every_command() -> None:
    from infra import cli

    parser = cli.build_parser([])
    names = set(parser._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    assert set(cli.ROLE_COMMANDS) <= names
