"""HG-DAgger and flow-matching experiments end to end, on the shared broker: a real MuJoCo
arm (panda, ``reach``) driven by the learner's latest published policy, the scripted
operator taking over when it strays → the worker's batches through Kafka
(``transitions.raw`` and the rewarded ``transitions``) → the real Delta sink → the learner
(``hg_dagger``, fed from the Delta history) → weights published and verified as an agent
verifies them → the robot's next round.  The run's report
(``pipeline.history.BY_VERSION``, what ``userctl history interventions --by-version``
prints) shows the intervention rate falling as the policy versions go up — the issue's
"done when" for HG-DAgger, and for a ``flow_matching`` policy whose chunks the worker
executes.  An ``fql`` experiment takes the same path: its offline phases run at once on
the operator's steps and robots build its one-step policy from the published weights."""

from __future__ import annotations

import pytest

from agents import registry, takeover, weights
from agents.outbox import MemoryOutbox
from agents.policies import RandomPolicy, scripted
from agents.worker import Lease, RobotWorker
from learners import _history, policies
from learners.loop import Learner
from pipeline import demos
from pipeline import history as delta_history
from schemas.transitions import TransitionBatch
from tests.integration.test_step_identity import (  # noqa: F401 - fixtures
    Space,
    publishers,
    space,
)
from tests.unit.test_learn_loop import REWARD, Publishers, experiment, make, train_until_capped
from topics import catalog

ROUNDS = 4
EPISODES_PER_ROUND = 4


def _published_policy(published: Publishers, stream: str, spec: object
                      ) -> tuple[object, int]:
    """The newest published weights as an agent installs them: chunks joined and checked
    against the manifest, the policy built from the blob; and its version."""
    for p in published.publishers:
        p.flush(10.0)
    sink = published.sinks[stream]
    manifest = sink.manifests[-1]
    blob = weights.assemble(manifest, [weights.FetchedChunk(o, sink.chunks[o])
                                       for o in manifest.chunk_offsets])
    return weights.build_policy(manifest, blob, spec), manifest.version  # type: ignore[arg-type]


def _robot_policy(published: Publishers, stream: str, spec: object
                  ) -> tuple[weights.PolicyFn, int]:
    """:func:`_published_policy`, acting deterministically as the agent's policy."""
    policy, version = _published_policy(published, stream, spec)
    return weights._act_fn(policy, deterministic=True), version  # type: ignore[arg-type]


def _round(shared: Space, learner: Learner, worker: RobotWorker, experiment_id: str,
           lease_id: str, ticks: int) -> int:
    """The worker drives ``ticks`` steps under a lease (then the lease ends and the last
    batch is flushed); its batches go through Kafka to the Delta sink, and the learner
    reads them back from the history.  Returns the steps the learner took in."""
    outbox = MemoryOutbox()
    worker.sink = outbox
    lease = Lease(experiment_id, lease_id)
    for _ in range(ticks):
        worker.tick(lease, [])
    worker.tick(None, [])
    for raw in outbox.sent:
        if isinstance(raw[1], TransitionBatch):
            shared.send(raw[1])
    shared.sink()
    history = _history.read(shared.root, experiments=(experiment_id,), reward_fn=REWARD,
                            topic=shared.topic(catalog.TRANSITIONS),
                            partitions=[0, 1, 2, 3], sink_name=shared.sink_name)
    return sum(learner.add(s, "history") for s in history.steps())


@pytest.mark.parametrize("policy", [
    {"kind": "mlp_gaussian", "hidden": [64, 64]},
    {"kind": "flow_matching", "hidden": [64, 64],
     "options": {"horizon": 2, "steps": 4, "execute": "ensemble"}},
], ids=["mlp_gaussian", "flow_matching"])
def test_an_hg_dagger_experiment_hands_control_from_the_operator_to_its_policy(
        space: Space, publishers: Publishers, policy: dict[str, object]  # noqa: F811
) -> None:
    robot = registry.make_robot("panda", task="reach", seed=5, validate=False)
    operator = takeover.ScriptedOperator(scripted(robot), threshold=0.5, patience=2,
                                         min_steps=5, agree_steps=2)
    spec = experiment(algorithm={"name": "hg_dagger", "batch_size": 64, "utd_ratio": 4.0,
                                 "hyperparameters": {"lr": 1e-3}},
                      robots=[{"robot_type": "panda", "count": 1}],
                      policy=policy, weight_sync={"every_updates": 50})
    learner = make(spec, publishers, known={"panda": robot.spec})
    stream = policies.weights_stream(spec.name, "panda")
    # Version 0: no learned weights yet — the agent's fallback, a random policy.
    random = RandomPolicy(robot.spec.action, seed=5)
    acting: tuple[weights.PolicyFn, int] = (random, 0)
    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=MemoryOutbox(),
                         policy=lambda: acting, flush_steps=25, flush_s=600.0,
                         takeover=operator)
    versions = []
    for r in range(ROUNDS):
        assert _round(space, learner, worker, spec.name, f"lease-{r}",
                      EPISODES_PER_ROUND * robot.spec.max_episode_steps) > 0
        assert train_until_capped(learner) > 0
        learner.types["panda"].publish({})
        acting = _robot_policy(publishers, stream, learner.types["panda"].policy_spec)
        versions.append(acting[1])
    assert versions == sorted(set(versions)), "each round acts with newer weights"

    report = delta_history.sql(space.root, delta_history.BY_VERSION,
                               {"experiment": spec.name, "demo_prefix": demos.DEMO_PREFIX,
                                "reward_fn": REWARD}).to_pylist()
    rates = [r["intervention_rate"] for r in report]
    print(f"{policy['kind']}: intervention rate per policy version {rates}")  # pytest -s
    assert [r["policy_version"] for r in report] == [0, *versions[:-1]]
    assert sum(r["steps"] for r in report) == (ROUNDS * EPISODES_PER_ROUND
                                               * robot.spec.max_episode_steps)
    # Falling: the operator drives most of the random policy's steps, few of the last's.
    assert rates[0] > 0.5, rates
    assert rates[-1] < 0.5 * rates[0], rates


def test_an_fql_experiment_pretrains_on_takeovers_and_robots_run_its_one_step_policy(
        space: Space, publishers: Publishers  # noqa: F811
) -> None:
    # FQL end to end: the operator's steps reach the learner through Kafka and Delta, the
    # flow pre-trains and the one-step policy is distilled at once (offline updates, not
    # at the UTD ratio), and the weights an agent verifies build the one-step policy,
    # which re-plans every step on the robot.
    from learners.policies._flow_matching import FlowMatchingPolicy

    robot = registry.make_robot("panda", task="reach", seed=6, validate=False)
    operator = takeover.ScriptedOperator(scripted(robot), threshold=0.5, patience=2,
                                         min_steps=5, agree_steps=2)
    offline = {"pretrain_updates": 30, "distill_updates": 20, "critic_warmup_updates": 10}
    spec = experiment(algorithm={"name": "fql", "batch_size": 64, "utd_ratio": 0.05,
                                 "warmup_steps": 0,
                                 "hyperparameters": {**offline,
                                                     "critic_hidden_sizes": [32, 32]}},
                      robots=[{"robot_type": "panda", "count": 1}],
                      policy={"kind": "flow_matching", "hidden": [32, 32],
                              "options": {"horizon": 2, "steps": 2, "one_step": True,
                                          "one_step_hidden_sizes": [32, 32]}},
                      weight_sync={"every_updates": 1000})
    learner = make(spec, publishers, known={"panda": robot.spec})
    stream = policies.weights_stream(spec.name, "panda")
    acting: tuple[weights.PolicyFn, int] = (RandomPolicy(robot.spec.action, seed=6), 0)
    worker = RobotWorker(robot, robot_id="r1", site="lab-a", sink=MemoryOutbox(),
                         policy=lambda: acting, flush_steps=25, flush_s=600.0,
                         takeover=operator)
    steps = 2 * robot.spec.max_episode_steps
    updates = []
    for r in range(2):
        assert _round(space, learner, worker, spec.name, f"lease-{r}", steps) > 0
        train_until_capped(learner)
        updates.append(learner.types["panda"].algorithm.update_step)
        learner.types["panda"].publish({})
        acting = _robot_policy(publishers, stream, learner.types["panda"].policy_spec)
    # Round 1: the offline phases at once plus the UTD's share of the env steps (far
    # fewer than 60 at utd 0.05 alone); round 2 only the UTD's share of the new steps.
    assert updates[0] == sum(offline.values()) + int(0.05 * steps)
    assert updates[1] == sum(offline.values()) + int(0.05 * 2 * steps)
    assert learner.types["panda"].algorithm.phase() == "rl"  # type: ignore[attr-defined]
    policy, _ = _published_policy(publishers, stream, learner.types["panda"].policy_spec)
    assert isinstance(policy, FlowMatchingPolicy) and policy.actor.one_step is not None
    assert (policy.execution.mode, policy.execution.execute_steps) == ("chunk", 1)
