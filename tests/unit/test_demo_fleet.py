"""`make demo`'s promises, read from the files it runs: the demo topology's agents are the
fleet the demo experiment asks for, the fleet holds a real arm model next to the planar
reachers, every type must reach the target, and the run is bounded by 15 minutes."""

from __future__ import annotations

from collections import Counter

from agents import registry
from agents.sim import manipulators
from infra import cli, supervisor
from infra.cmd_demo import DEFAULT_SPEC, DEFAULT_TOPOLOGY
from infra.cmd_fleet import load_spec


def _agents() -> list[tuple[str, str, str, int]]:
    """(robot type, site, task, count) of each agent role of the demo topology."""
    topo = supervisor.load_topology(DEFAULT_TOPOLOGY)
    out = []
    for role in topo.roles.values():
        argv = role.userctl or []
        if argv[:1] != ["agent"]:
            continue
        args = cli.build_parser(argv).parse_args(argv)
        out.append((args.robot_type, args.site, args.task or "reach", args.count))
    return out


def test_the_topology_runs_the_fleet_the_demo_experiment_asks_for() -> None:
    spec = load_spec(DEFAULT_SPEC)  # also checks each type is registered and can do the task
    agents = _agents()
    offered = Counter[str]()
    for robot_type, site, task, count in agents:
        assert task == spec.task
        [wanted] = [r for r in spec.robots if r.robot_type == robot_type]
        assert not wanted.sites or site in wanted.sites, (robot_type, site)
        offered[robot_type] += count
    assert offered == {r.robot_type: r.count for r in spec.robots}
    topo = supervisor.load_topology(DEFAULT_TOPOLOGY)
    roles = [r.userctl or [] for r in topo.roles.values()]
    assert ["learn", spec.name] in roles
    assert ["rewards", "run", spec.reward] in roles


def test_the_demo_fleet_has_a_real_arm_model_and_every_type_must_reach_the_target() -> None:
    spec = load_spec(DEFAULT_SPEC)
    types = {r.robot_type for r in spec.robots}
    real = {manipulators.PANDA_CONFIG.robot_type, manipulators.UR5E_CONFIG.robot_type}
    assert types & real and "reacher2d" in types
    assert all(spec.task in registry.robot_tasks(t) for t in types)
    # no type left out of the stop rule: the report shows every type reaching the target
    assert not spec.stop.target_robot_types or set(spec.stop.target_robot_types) == types
    assert spec.stop.max_wall_s is not None and spec.stop.max_wall_s <= 15 * 60
