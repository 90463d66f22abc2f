"""`userctl bench imitation RUN[,RUN…]` — imitation and flow policies on the simulated arms.

Runs, in one process (no Kafka/Delta; the same algorithms, samplers, buffers, policies,
scripted operator, reward functions and chunk executor the distributed system runs):

* ``hg_dagger`` — panda ``push``: BC from ``--demos`` scripted demonstrations, then rounds
  of episodes driven by the policy with the scripted operator taking over when it strays;
  HG-DAgger trains on the takeover segments after each round.  Reports the success rate
  and the intervention rate per round, and the final success *without* the operator.
  Target: >= 90 % success with the intervention rate below 10 % of steps.
* ``flow_bc`` — flow-matching BC (action chunks, temporal ensembling) from 50 scripted
  demos on ``push``; target >= 80 % success.
* ``flow_rl`` — DSRL fine-tuning (``learners.dsrl``) of a flow policy BC-trained on few
  demos (starting near 50 %), online on ``push``; target >= 85 %.
* ``rlpd_takeovers`` — RLPD on ``pick_place`` with vs without the scripted operator's
  takeovers (routed to the demo half): env steps to 80 %.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from infra.bench import report

HELP = "imitation: HG-DAgger, flow-matching BC, DSRL, RLPD with takeovers on the arms"

RUNS = ("hg_dagger", "flow_bc", "flow_rl", "rlpd_takeovers")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="?", default="hg_dagger,flow_bc",
                   help=f"comma-separated runs of {', '.join(RUNS)}")
    p.add_argument("--robot-type", default="panda")
    p.add_argument("--demos", type=int, default=None, help="scripted demos to start from")
    p.add_argument("--rounds", type=int, default=8, help="hg_dagger / flow_rl rounds")
    p.add_argument("--episodes-per-round", type=int, default=8)
    p.add_argument("--updates", type=int, default=1500, help="BC updates from the demos")
    p.add_argument("--round-updates", type=int, default=500)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.5,
                   help="scripted operator: takeover distance to the expert's action")
    p.add_argument("--patience", type=int, default=2,
                   help="scripted operator: steps of straying before it takes over")
    p.add_argument("--max-steps", type=int, default=60_000, help="rlpd env step budget")
    p.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH)


# ---------------------------------------------------------------------------- episodes


@dataclass
class Episode:
    observation: list[np.ndarray] = field(default_factory=list)
    action: list[np.ndarray] = field(default_factory=list)
    intervention: list[bool] = field(default_factory=list)
    info: list[dict[str, np.ndarray]] = field(default_factory=list)
    success: bool = False


class Arm:
    """A simulated arm on a task, its expert and success rule."""

    def __init__(self, robot_type: str, task: str, seed: int) -> None:
        from agents import registry
        from agents.policies import scripted
        from agents.sim import tasks
        from learners.policies import PolicySpec

        # Stepped flat out, not paced: the start-up timing probe is for real-time agents.
        self.robot = registry.make_robot(robot_type, task=task, seed=seed, validate=False)
        self.expert = scripted(self.robot)
        self.rule = tasks.get(task)
        self.task = task
        self.robot_type = robot_type
        self.spec = PolicySpec.from_robot_spec(self.robot.spec)
        self.steps = 0

    def run(self, act: Callable[[np.ndarray], np.ndarray] | None, seed: int,
            operator: object | None = None, reset_policy: Callable[[], None] | None = None
            ) -> Episode:
        """One episode: ``act`` drives (the expert when None), ``operator`` may take over."""
        step = self.robot.reset(seed=seed)
        if reset_policy is not None:
            reset_policy()
        if operator is not None:
            operator.reset()  # type: ignore[attr-defined]
        ep = Episode()
        while not step.done:
            proposal = (self.expert(step.observation) if act is None
                        else act(step.observation)).astype(np.float32)
            human = None if operator is None else operator(step.observation, proposal)  # type: ignore[operator]
            action = proposal if human is None else np.asarray(human, np.float32)
            if human is not None and reset_policy is not None:
                reset_policy()  # queued chunks were planned for a state left behind
            ep.observation.append(step.observation)
            ep.action.append(action)
            ep.intervention.append(human is not None or act is None)
            step = self.robot.step(action)
            ep.info.append({k: np.asarray(v) for k, v in step.info.items()})
            ep.success = ep.success or bool(self.rule.success(step.info))
            self.steps += 1
        return ep


def _steps_of(arm: Arm, episodes: list[Episode], reward: str, first_index: int):  # type: ignore[no-untyped-def]
    """The learner's view of episodes: rewarded by ``reward`` (pipeline.rewards), as
    :class:`learners.loop.Steps` — the path the history takes."""
    from learners.loop import Steps
    from pipeline import demos, lerobot, rewards

    dataset = lerobot.Dataset(20, arm.robot_type, [lerobot.Episode(
        observation=np.stack(e.observation).astype(np.float32),
        action=np.stack(e.action).astype(np.float32), task=arm.task,
        intervention=np.array(e.intervention, bool),
        info={k: np.stack([i[k] for i in e.info]).astype(np.float32) for k in e.info[0]},
    ) for e in episodes])
    batches, _ = demos.to_batches(dataset, experiment="bench", robot_type=arm.robot_type,
                                  robot_id="r0", site="bench",
                                  incarnation=f"i{first_index:08d}")
    fn = rewards.lookup(reward)
    out = []
    for i, batch in enumerate(batches):
        steps = Steps.of_batch(rewards.apply(fn, batch)).steps
        # Unique episode ids across calls (to_batches counts from 0 each time).
        out.append(type(steps)(**{**steps.__dict__, "episode_id": np.full(
            len(steps), f"ep{first_index + i}")}))
    return out


# ---------------------------------------------------------------------------- policies


def _acting(kind: str, arm: Arm, options: dict[str, object], weights: dict[str, np.ndarray]
            ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], None]]:
    """A robot-side policy from published weights: deterministic, chunks through the
    agents' :class:`~agents.chunking.ChunkExecutor`."""
    from agents.chunking import ChunkExecutor
    from learners.policies import build

    policy = build(kind, arm.spec, options)  # type: ignore[arg-type]
    policy.load_weights(weights)
    act_chunk = getattr(policy, "act_chunk", None)
    if act_chunk is None:
        return (lambda obs: policy.act(obs[None], deterministic=True)[0]), (lambda: None)
    runner = ChunkExecutor()
    execution = policy.execution  # type: ignore[attr-defined]

    def act(obs: np.ndarray) -> np.ndarray:
        return runner.next(lambda o: act_chunk(o[None], True)[0], obs, execution)

    return act, runner.reset


def _buffer(arm: Arm, mb: int = 256):  # type: ignore[no-untyped-def]
    from learners.replay import NumpyReplayBuffer, ReplayConfig

    return NumpyReplayBuffer(ReplayConfig((arm.spec.observation_dim,),
                                          (arm.spec.action_dim,),
                                          memory_budget_bytes=mb << 20))


def _evaluate(arm: Arm, act: Callable[[np.ndarray], np.ndarray], reset: Callable[[], None],
              n: int, seed: int) -> float:
    return float(np.mean([arm.run(act, seed=seed + i, reset_policy=reset).success
                          for i in range(n)]))


def _demos(arm: Arm, n: int, seed: int) -> list[Episode]:
    return [arm.run(None, seed=seed + i) for i in range(n)]


@dataclass
class Outcome:
    run: str
    target: str
    result: str
    detail: str
    rows: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- runs


def hg_dagger(args: argparse.Namespace) -> Outcome:
    from agents import takeover
    from learners import bc
    from learners.replay import TakeoverSampler

    arm = Arm(args.robot_type, "push", args.seed)
    n_demos = args.demos if args.demos is not None else 10
    options: dict[str, object] = {"hidden_sizes": [256, 256]}
    algo = bc.BC(arm.spec, bc.BCConfig(seed=args.seed), "mlp_gaussian", dict(options),  # type: ignore[arg-type]
                 takeovers_only=True)
    buffer = _buffer(arm)
    for s in _steps_of(arm, _demos(arm, n_demos, 10_000), "push_dense@1", 0):
        buffer.add(s)
    sampler = TakeoverSampler(buffer, mode="takeovers", seed=args.seed)
    for _ in range(args.updates):
        algo.update(sampler.sample(256))
    rows = []
    index = n_demos
    for r in range(args.rounds):
        act, reset = _acting("mlp_gaussian", arm, options, algo.policy_weights())
        operator = takeover.ScriptedOperator(arm.expert, threshold=args.threshold,
                                             patience=args.patience, min_steps=10,
                                             agree_steps=3)
        eps = [arm.run(act, seed=20_000 + r * 100 + i, operator=operator, reset_policy=reset)
               for i in range(args.episodes_per_round)]
        took = float(np.mean(np.concatenate([e.intervention for e in eps])))
        success = float(np.mean([e.success for e in eps]))
        for s in _steps_of(arm, eps, "push_dense@1", index):
            buffer.add(s)
        index += len(eps)
        for _ in range(args.round_updates):
            algo.update(sampler.sample(256))
        rows.append(f"| {r + 1} | {success:.0%} | {took:.1%} | {buffer.interventions:,} |")
        print(f"hg_dagger round {r + 1}: success {success:.0%} (with takeovers), "
              f"intervention rate {took:.1%}", flush=True)
    act, reset = _acting("mlp_gaussian", arm, options, algo.policy_weights())
    final = _evaluate(arm, act, reset, args.eval_episodes, 90_000)
    last_rate = rows[-1].split("|")[3].strip() if rows else "-"
    return Outcome("hg_dagger (push, mlp_gaussian)", ">= 90 % success, < 10 % interventions",
                   f"{final:.0%} success without the operator; last round's intervention "
                   f"rate {last_rate}",
                   f"{n_demos} demos, {args.rounds} rounds x {args.episodes_per_round} "
                   f"episodes, {args.updates} + {args.round_updates}/round updates; operator "
                   f"threshold {args.threshold}, patience {args.patience}",
                   ["| round | success (with takeovers) | intervention rate | takeover "
                    "steps held |", "|---:|---:|---:|---:|", *rows])


def flow_bc(args: argparse.Namespace, n_demos: int | None = None, quiet: bool = False
            ) -> tuple[Outcome, object, Arm, dict[str, object]]:
    from learners import bc
    from learners.replay import TakeoverSampler

    arm = Arm(args.robot_type, "push", args.seed)
    n = n_demos if n_demos is not None else (args.demos if args.demos is not None else 50)
    options: dict[str, object] = {"hidden_sizes": [256, 256], "horizon": 4, "steps": 10,
                                  "execute": "ensemble"}
    algo = bc.BC(arm.spec, bc.BCConfig(seed=args.seed, lr=1e-3), "flow_matching",
                 dict(options))  # type: ignore[arg-type]
    buffer = _buffer(arm)
    for s in _steps_of(arm, _demos(arm, n, 10_000), "push_dense@1", 0):
        buffer.add(s)
    sampler = TakeoverSampler(buffer, mode="all", horizon=4, seed=args.seed)
    t0 = time.monotonic()
    for i in range(args.updates):
        stats = algo.update(sampler.sample(256))
        if not quiet and i % 500 == 0:
            print(f"flow_bc update {i}: flow loss {stats['losses/flow']:.4f}", flush=True)
    train_s = time.monotonic() - t0
    act, reset = _acting("flow_matching", arm, options, algo.policy_weights())
    success = _evaluate(arm, act, reset, args.eval_episodes, 90_000)
    print(f"flow_bc from {n} demos: {success:.0%} success", flush=True)
    return (Outcome("flow_bc (push, flow_matching H=4, 10 Euler steps, ensembling)",
                    ">= 80 % success from 50 demos", f"{success:.0%} success",
                    f"{n} demos, {args.updates} updates (batch 256) in {train_s:.0f} s, "
                    f"{args.eval_episodes} evaluation episodes"), algo, arm, options)


def flow_rl(args: argparse.Namespace) -> Outcome:
    from learners import dsrl

    n = args.demos if args.demos is not None else 10
    _, base, arm, options = flow_bc(args, n_demos=n, quiet=True)
    act, reset = _acting("flow_matching", arm, options, base.policy_weights())  # type: ignore[attr-defined]
    start = _evaluate(arm, act, reset, args.eval_episodes, 90_000)
    steer = {**options, "steer": True}
    algo = dsrl.DSRL(arm.spec, dsrl.DSRLConfig(seed=args.seed, pretrain_updates=0,
                                               init_alpha=0.05), dict(steer))  # type: ignore[arg-type]
    own = algo.actor.state_dict()
    algo.actor.load_state_dict({**own, **{k: torch.as_tensor(v) for k, v in
                                          base.policy_weights().items()}})  # type: ignore[attr-defined]
    from learners.replay import TakeoverSampler

    buffer = _buffer(arm)
    sampler = TakeoverSampler(buffer, mode="all", horizon=4, seed=args.seed)
    rows, index = [], 0
    for r in range(args.rounds):
        act, reset = _acting("flow_matching", arm, steer, algo.policy_weights())
        eps = [arm.run(act, seed=30_000 + r * 100 + i, reset_policy=reset)
               for i in range(args.episodes_per_round)]
        for s in _steps_of(arm, eps, "push_dense@1", index):
            buffer.add(s)
        index += len(eps)
        for _ in range(args.round_updates):
            algo.update(sampler.sample(256))
        rate = float(np.mean([e.success for e in eps]))
        rows.append(f"| {r + 1} | {arm.steps:,} | {rate:.0%} |")
        print(f"flow_rl round {r + 1}: {rate:.0%} success (steered, stochastic)", flush=True)
    act, reset = _acting("flow_matching", arm, steer, algo.policy_weights())
    final = _evaluate(arm, act, reset, args.eval_episodes, 90_000)
    return Outcome("flow_rl (push, DSRL-NA on flow_matching)", "~50 % -> >= 85 %",
                   f"{start:.0%} -> {final:.0%}",
                   f"flow BC from {n} demos, {args.rounds} rounds x "
                   f"{args.episodes_per_round} episodes, {args.round_updates} updates/round",
                   ["| round | env steps | success (exploring) |", "|---:|---:|---:|", *rows])


def rlpd_takeovers(args: argparse.Namespace) -> Outcome:
    from agents import takeover
    from learners import sac
    from learners.replay import TakeoverSampler

    results = []
    for with_takeovers in (True, False):
        arm = Arm(args.robot_type, "pick_place", args.seed)
        algo = sac.SAC(arm.spec, sac.SACConfig.rlpd(seed=args.seed, utd_ratio=4))
        buffer = _buffer(arm)
        sampler = TakeoverSampler(buffer, mode="routed", prior_fraction=0.5, seed=args.seed)
        operator = takeover.ScriptedOperator(arm.expert, threshold=0.8, patience=3,
                                             min_steps=15, agree_steps=3) \
            if with_takeovers else None
        recent: list[bool] = []
        reached, index = None, 0
        while arm.steps < args.max_steps and reached is None:
            act, reset = _acting("mlp_gaussian", arm, {"hidden_sizes": [256, 256]},
                                 algo.policy_weights())
            ep = arm.run(act, seed=40_000 + index, operator=operator, reset_policy=reset)
            for s in _steps_of(arm, [ep], "pick_place_dense@1", index):
                buffer.add(s)
            index += 1
            recent = [*recent, ep.success][-20:]
            if arm.steps > 1000:
                for _ in range(len(ep.action) // 4):
                    algo.update(sampler.sample(256 * 4))
            if len(recent) == 20 and np.mean(recent) >= 0.8:
                reached = arm.steps
        last = float(np.mean(recent)) if recent else 0.0
        results.append((with_takeovers, reached, arm.steps, last))
        print(f"rlpd takeovers={with_takeovers}: reached 80 % at {reached} "
              f"({arm.steps} steps, last 20: {results[-1][3]:.0%})", flush=True)
    text = "; ".join(f"{'with' if w else 'without'} takeovers: "
                     f"{f'{r:,} steps' if r else f'not within {s:,} steps (last 20: {last:.0%})'}"
                     for w, r, s, last in results)
    return Outcome("rlpd_takeovers (pick_place)", "env steps to 80 %", text,
                   "RLPD preset (10 critics, LayerNorm), UTD 4, routed sampler")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(1)
    runs = args.runs.split(",")
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        raise SystemExit(f"userctl bench imitation: unknown runs {', '.join(unknown)}; "
                         f"known: {', '.join(RUNS)}")
    outcomes = []
    t0 = time.monotonic()
    for name in runs:
        if name == "flow_bc":
            outcomes.append(flow_bc(args)[0])
        else:
            outcomes.append(globals()[name](args))
    lines = ["## Imitation and flow policies (`userctl bench imitation`)", ""]
    lines += report.machine_lines()
    lines += [f"- what: in one process (no Kafka/Delta), {args.robot_type}; the "
              "algorithms, samplers, scripted operator, reward functions and chunk executor "
              f"of the system; {time.monotonic() - t0:.0f} s wall", "",
              "| run | target | result | setting |", "|---|---|---|---|"]
    lines += [f"| {o.run} | {o.target} | {o.result} | {o.detail} |" for o in outcomes]
    for o in outcomes:
        if o.rows:
            lines += ["", f"{o.run}:", "", *o.rows]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        report.write_section("imitation", text, args.out)
    return 0
