"""Every experiment file in ``examples/`` is one ``userctl experiments submit`` accepts:
the spec's own rules, robot types able to do its task, the algorithm's hyper-parameters
and the policy kind's options (``infra.cmd_fleet.load_spec``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.cmd_fleet import load_spec

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 5


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_an_example_experiment_validates(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name
