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
* ``flow_rl`` — RL fine-tuning of a flow policy BC-trained on few demos (starting near
  50 %), online on ``push``; target >= 85 %.  ``--method fql`` (default: FQL's one-step
  policy, ``learners.fql``) or ``dsrl`` (noise steering, ``learners.dsrl``).  Exploring
  rounds act stochastically, as agents do; evaluations deterministically.  Keeps the best
  version evaluated on selection seeds (the start included) and reports the final and the
  kept version on held-out seeds.
* ``rlpd_takeovers`` — RLPD on ``pick_place`` with vs without the scripted operator's
  takeovers (routed to the demo half): env steps to 80 % success of the policy alone,
  both variants evaluated without the operator every ``--eval-every`` env steps
  (``--variants`` runs one side, ``--demos`` gives both sides the same prior data).

``--time-limit S`` bounds the whole command: each run gets an equal share, training stops
while there is still time to evaluate (the report says where it stopped), so a run on a
lent machine ends by itself.  ``--json PATH`` also writes the outcomes as JSON; ``--out``
names the markdown file whose ``imitation`` section gets the report.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from infra.bench import report

if TYPE_CHECKING:
    from learners.replay import NumpyReplayBuffer

HELP = "imitation: HG-DAgger, flow-matching BC, FQL/DSRL, RLPD with takeovers on the arms"

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
    p.add_argument("--final-episodes", type=int, default=None,
                   help="flow_rl: held-out episodes for the start, final and kept versions' "
                        "figures (default: --eval-episodes; 20 episodes are +-10 points)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=0.5,
                   help="scripted operator: takeover distance to the expert's action")
    p.add_argument("--patience", type=int, default=2,
                   help="scripted operator: steps of straying before it takes over")
    p.add_argument("--rule", default="auto", choices=("auto", "progress", "action"),
                   help="hg_dagger's scripted operator: take over when the robot fails "
                        "(progress) or when its action differs from the expert's (action)")
    p.add_argument("--stall-steps", type=int, default=25,
                   help="scripted operator, progress rule: steps without progress")
    p.add_argument("--regress", type=float, default=0.1,
                   help="scripted operator, progress rule: metres worse than the best")
    p.add_argument("--max-steps", type=int, default=60_000, help="rlpd env step budget")
    p.add_argument("--kind", default="flow_matching", choices=("flow_matching", "mlp_gaussian"),
                   help="hg_dagger's policy kind")
    p.add_argument("--hidden", default="256,256", help="hidden layer widths, e.g. 512,512,512")
    p.add_argument("--horizon", type=int, default=4, help="flow_matching chunk length H")
    p.add_argument("--flow-steps", type=int, default=10, help="flow_matching Euler steps")
    p.add_argument("--execute", default="ensemble", choices=("ensemble", "chunk"),
                   help="how robots execute chunks (chunk = receding horizon of 1 step)")
    p.add_argument("--lr", type=float, default=1e-3, help="imitation learning rate")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--ema", type=float, default=0.0,
                   help="imitation: robots get an EMA of the weights with this decay (0: off)")
    p.add_argument("--lr-decay", type=int, default=0,
                   help="imitation: cosine learning-rate decay over this many updates (0: off)")
    p.add_argument("--no-normalise", action="store_true",
                   help="policies without observation normalisation (flow_matching; "
                        "rlpd_takeovers' mlp_gaussian)")
    p.add_argument("--method", default="fql", choices=("fql", "dsrl"),
                   help="flow_rl: FQL (one-step policy distilled from the flow) or DSRL-NA "
                        "(steering the flow's noise)")
    p.add_argument("--alpha", type=float, default=0.3,
                   help="flow_rl, fql: weight of the distillation to the flow (FQLConfig.alpha)")
    p.add_argument("--distill-updates", type=int, default=3000,
                   help="flow_rl, fql: updates fitting the one-step policy to the flow first")
    p.add_argument("--one-step-hidden", default="256,256,256",
                   help="flow_rl, fql: the one-step policy's and the critics' hidden widths")
    p.add_argument("--critic-warmup", type=int, default=None,
                   help="flow_rl: critic-only updates before the actor moves (default: "
                        "fql 3000, dsrl 1000)")
    p.add_argument("--steer-std", type=float, default=0.3,
                   help="flow_rl: the steering actor's initial spread around zero noise")
    p.add_argument("--rl-reward", default="push_dense@2",
                   help="flow_rl: the reward the critics learn (name@version)")
    p.add_argument("--noise-bound", type=float, default=2.0,
                   help="flow_rl: the steered noise lies in +-this")
    p.add_argument("--gamma", type=float, default=None,
                   help="flow_rl: the critics' discount (default: fql 0.99; dsrl 0.9, a "
                        "10-step horizon its critics learn within a round — 0.99 did not "
                        "converge in 4,500 updates)")
    p.add_argument("--tau", type=float, default=None,
                   help="flow_rl: Polyak coefficient of the critics' targets (default: fql "
                        "0.005, dsrl 0.02)")
    p.add_argument("--prior-weight", type=float, default=0.0,
                   help="flow_rl: weight of the steered noise's cross-entropy to N(0, I)")
    p.add_argument("--select-every", type=int, default=2,
                   help="flow_rl: rounds between evaluations on selection seeds; the best "
                        "evaluated version (the start included) is kept (0: no selection)")
    p.add_argument("--select-margin", type=float, default=0.1,
                   help="flow_rl: a version replaces the kept one only when its selection "
                        "evaluation is better by more than this")
    p.add_argument("--eval-every", type=int, default=1500,
                   help="rlpd_takeovers: env steps between operator-free evaluations")
    p.add_argument("--bc-weight", type=float, default=0.0,
                   help="rlpd_takeovers: SACConfig.bc_weight, BC on the demo and takeover "
                        "rows (TD3+BC-scaled; 0: plain RLPD)")
    p.add_argument("--no-q-filter", action="store_true",
                   help="rlpd_takeovers: the BC term on every human row, not only where the "
                        "critics prefer the human's action")
    p.add_argument("--variants", default="with,without",
                   help="rlpd_takeovers: which of with,without to run")
    p.add_argument("--time-limit", type=float, default=0.0,
                   help="wall-clock seconds for the whole command (0: none); training stops "
                        "early enough to evaluate and report within it")
    p.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH,
                   help="markdown file whose 'imitation' section gets the result")
    p.add_argument("--json", type=Path, default=None, help="also write the outcomes as JSON here")


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


def _acting(kind: str, arm: Arm, options: dict[str, object], weights: dict[str, np.ndarray],
            deterministic: bool = True
            ) -> tuple[Callable[[np.ndarray], np.ndarray], Callable[[], None]]:
    """A robot-side policy from published weights, chunks through the agents'
    :class:`~agents.chunking.ChunkExecutor` (stochastic: as agents explore)."""
    from agents.chunking import ChunkExecutor
    from learners.policies import build

    policy = build(kind, arm.spec, options)  # type: ignore[arg-type]
    policy.load_weights(weights)
    act_chunk = getattr(policy, "act_chunk", None)
    if act_chunk is None:
        return (lambda obs: policy.act(obs[None], deterministic=deterministic)[0]), (
            lambda: None)
    runner = ChunkExecutor()
    execution = policy.execution  # type: ignore[attr-defined]

    def act(obs: np.ndarray) -> np.ndarray:
        return runner.next(lambda o: act_chunk(o[None], deterministic)[0], obs, execution)

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


class Clock:
    """The command's wall-clock bound (``--time-limit``): training loops ask
    :meth:`training` before each step and stop while there is still time to evaluate."""

    def __init__(self, limit_s: float) -> None:
        self.start = time.monotonic()
        self.deadline = self.start + limit_s if limit_s > 0 else float("inf")
        self.episode_s = 1.0  # measured on the first episodes
        self.stopped = ""

    def measure_episodes(self, seconds: float, episodes: int) -> None:
        self.episode_s = max(self.episode_s if episodes == 0 else seconds / episodes, 0.05)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def training(self, eval_episodes: int, what: str) -> bool:
        """True while training may go on; records the first stop in :attr:`stopped`."""
        reserve = 1.5 * eval_episodes * self.episode_s + 10.0
        if self.left() > reserve:
            return True
        if not self.stopped:
            self.stopped = f"stopped by the time limit during {what}"
            print(f"time limit: {self.stopped}", flush=True)
        return False


CLOCK = Clock(0.0)


@dataclass
class Kept:
    """The best-evaluated policy version so far (flow_rl's keep-best rule): the start is
    the first candidate; a later version replaces it only when it evaluates better by more
    than ``margin`` (a tie keeps the older, already-shipped one; with 20 episodes a rate's
    standard error is ~0.11, and picking the best of many noisy evaluations overrates it:
    measured, kept at 50 % on selection seeds, 30 % on held-out ones)."""

    round: int
    rate: float
    weights: dict[str, np.ndarray]
    margin: float = 0.0

    def offer(self, round_: int, rate: float, weights: dict[str, np.ndarray]) -> None:
        if rate > self.rate + self.margin:
            self.round, self.rate, self.weights = round_, rate, weights


def _describe(args: argparse.Namespace, flow: bool) -> str:
    """The policy setting in a few words."""
    if not flow:
        return f"hidden {args.hidden}"
    return (f"H={args.horizon}, {args.flow_steps} Euler steps, "
            f"{'temporal ensembling' if args.execute == 'ensemble' else 'receding horizon 1'}"
            f", hidden {args.hidden}"
            f"{', raw observations' if args.no_normalise else ', normalised observations'}")


def _schedule(args: argparse.Namespace) -> str:
    return ((f", cosine decay over {args.lr_decay}" if args.lr_decay else "")
            + (f", EMA {args.ema:g}" if args.ema else ""))


def _stopped() -> str:
    return f"; {CLOCK.stopped}" if CLOCK.stopped else ""


def _operator_setting(args: argparse.Namespace, rule: str) -> str:
    if rule == "action":
        return f"threshold {args.threshold}"
    return f"stall {args.stall_steps} steps, regress {args.regress:g} m"


def _hidden(args: argparse.Namespace) -> list[int]:
    return [int(w) for w in str(args.hidden).split(",") if w.strip()]


def _flow_options(args: argparse.Namespace) -> dict[str, object]:
    options: dict[str, object] = {"hidden_sizes": _hidden(args), "horizon": args.horizon,
                                  "steps": args.flow_steps, "execute": args.execute,
                                  "normalise": not args.no_normalise}
    if args.execute == "chunk":
        options["execute_steps"] = 1
    return options


def _timed_demos(arm: Arm, n: int, seed: int) -> list[Episode]:
    t0 = time.monotonic()
    eps = _demos(arm, n, seed)
    CLOCK.measure_episodes(2.0 * (time.monotonic() - t0), n)  # a policy acts slower
    return eps


# ---------------------------------------------------------------------------- runs


def hg_dagger(args: argparse.Namespace) -> Outcome:
    from agents import takeover
    from learners import bc
    from learners.replay import TakeoverSampler

    arm = Arm(args.robot_type, "push", args.seed)
    n_demos = args.demos if args.demos is not None else 10
    kind = args.kind
    flow = kind == "flow_matching"
    options: dict[str, object] = (_flow_options(args) if flow
                                  else {"hidden_sizes": _hidden(args)})
    horizon = args.horizon if flow else 1
    algo = bc.BC(arm.spec, bc.BCConfig(seed=args.seed, hidden_sizes=tuple(_hidden(args)),
                                       lr=args.lr if flow else 3e-4, ema=args.ema,
                                       lr_decay_updates=args.lr_decay),
                 kind, dict(options), takeovers_only=True)  # type: ignore[arg-type]
    buffer = _buffer(arm)
    for s in _steps_of(arm, _timed_demos(arm, n_demos, 10_000), "push_dense@1", 0):
        buffer.add(s)
    sampler = TakeoverSampler(buffer, mode="takeovers", horizon=horizon, seed=args.seed)
    for _ in range(args.updates):
        if not CLOCK.training(args.eval_episodes, "the demo updates"):
            break
        algo.update(sampler.sample(args.batch_size))
    rows = []
    index = n_demos
    rule = takeover.ScriptedOperator(arm.expert, rule=args.rule).rule  # auto resolved
    for r in range(args.rounds):
        if not CLOCK.training(args.eval_episodes + args.episodes_per_round,
                              f"round {r + 1}"):
            break
        act, reset = _acting(kind, arm, options, algo.policy_weights())
        operator = takeover.ScriptedOperator(arm.expert, threshold=args.threshold,
                                             patience=args.patience, min_steps=10,
                                             agree_steps=3, rule=rule,
                                             stall_steps=args.stall_steps,
                                             regress_m=args.regress)
        eps = [arm.run(act, seed=20_000 + r * 100 + i, operator=operator, reset_policy=reset)
               for i in range(args.episodes_per_round)]
        took = float(np.mean(np.concatenate([e.intervention for e in eps])))
        success = float(np.mean([e.success for e in eps]))
        for s in _steps_of(arm, eps, "push_dense@1", index):
            buffer.add(s)
        index += len(eps)
        for _ in range(args.round_updates):
            if not CLOCK.training(args.eval_episodes, f"round {r + 1}'s updates"):
                break
            algo.update(sampler.sample(args.batch_size))
        rows.append(f"| {r + 1} | {success:.0%} | {took:.1%} | {buffer.interventions:,} |")
        print(f"hg_dagger round {r + 1}: success {success:.0%} (with takeovers), "
              f"intervention rate {took:.1%}", flush=True)
    act, reset = _acting(kind, arm, options, algo.policy_weights())
    final = _evaluate(arm, act, reset, args.eval_episodes, 90_000)
    last_rate = rows[-1].split("|")[3].strip() if rows else "-"
    return Outcome(f"hg_dagger (push, {kind} {_describe(args, flow)})",
                   ">= 90 % success, < 10 % interventions",
                   f"{final:.0%} success without the operator; last round's intervention "
                   f"rate {last_rate}",
                   f"{n_demos} demos, {len(rows)} rounds x {args.episodes_per_round} "
                   f"episodes, {algo.update_step} updates ({args.updates} + "
                   f"{args.round_updates}/round asked{_schedule(args)}); operator "
                   f"{rule} rule ({_operator_setting(args, rule)}), "
                   f"patience {args.patience}{_stopped()}",
                   ["| round | success (with takeovers) | intervention rate | takeover "
                    "steps held |", "|---:|---:|---:|---:|", *rows])


@dataclass
class FlowBC:
    """flow_bc's outcome and what flow_rl goes on from."""

    outcome: Outcome
    success: float
    algo: object
    arm: Arm
    options: dict[str, object]
    buffer: NumpyReplayBuffer


def flow_bc(args: argparse.Namespace, n_demos: int | None = None, quiet: bool = False,
            reward: str = "push_dense@1") -> FlowBC:
    from learners import bc
    from learners.replay import TakeoverSampler

    arm = Arm(args.robot_type, "push", args.seed)
    n = n_demos if n_demos is not None else (args.demos if args.demos is not None else 50)
    options = _flow_options(args)
    algo = bc.BC(arm.spec, bc.BCConfig(seed=args.seed, lr=args.lr, ema=args.ema,
                                       lr_decay_updates=args.lr_decay,
                                       hidden_sizes=tuple(_hidden(args))),
                 "flow_matching", dict(options))  # type: ignore[arg-type]
    buffer = _buffer(arm)
    for s in _steps_of(arm, _timed_demos(arm, n, 10_000), reward, 0):
        buffer.add(s)
    sampler = TakeoverSampler(buffer, mode="all", horizon=args.horizon, seed=args.seed)
    t0 = time.monotonic()
    # flow_rl evaluates the base and the fine-tuned policy: twice the reserve.
    reserve = args.eval_episodes * (1 if n_demos is None else 2) + (
        0 if n_demos is None else args.episodes_per_round * args.rounds)
    for i in range(args.updates):
        if not CLOCK.training(reserve, "the BC updates"):
            break
        stats = algo.update(sampler.sample(args.batch_size))
        if not quiet and i % 500 == 0:
            print(f"flow_bc update {i}: flow loss {stats['losses/flow']:.4f}", flush=True)
    train_s = time.monotonic() - t0
    act, reset = _acting("flow_matching", arm, options, algo.policy_weights())
    success = _evaluate(arm, act, reset, args.eval_episodes, 90_000)
    print(f"flow_bc from {n} demos: {success:.0%} success", flush=True)
    return FlowBC(Outcome(f"flow_bc (push, flow_matching {_describe(args, True)})",
                          ">= 80 % success from 50 demos", f"{success:.0%} success",
                          f"{n} demos, {algo.update_step} updates (batch {args.batch_size}, "
                          f"lr {args.lr:g}{_schedule(args)}) in {train_s:.0f} s, "
                          f"{args.eval_episodes} evaluation episodes{_stopped()}"),
                  success, algo, arm, options, buffer)


def _fine_tuner(args: argparse.Namespace, arm: Arm, options: dict[str, object],
                base_weights: dict[str, np.ndarray]):  # type: ignore[no-untyped-def]
    """flow_rl's algorithm (``--method``) on the BC flow's weights, the options robots
    build its policy with, and a one-line description of its setting."""
    from learners import dsrl, fql

    hidden = tuple(_hidden(args))
    algo: dsrl.DSRL | fql.FQL
    if args.method == "fql":
        wide = [int(x) for x in args.one_step_hidden.split(",") if x.strip()]
        rl = {**options, "one_step": True, "one_step_hidden_sizes": wide}
        config = fql.FQLConfig(seed=args.seed, pretrain_updates=0, hidden_sizes=hidden,
                               critic_hidden_sizes=tuple(wide), alpha=args.alpha,
                               distill_updates=args.distill_updates,
                               critic_warmup_updates=args.critic_warmup,
                               gamma=args.gamma, tau=args.tau)
        algo = fql.FQL(arm.spec, config, dict(rl))  # type: ignore[arg-type]
        setting = (f"FQL, alpha {args.alpha:g} (Q term normalised by mean |Q|), one-step "
                   f"policy and critics {args.one_step_hidden}, {args.distill_updates} "
                   f"distillation updates first")
    else:
        rl = {**options, "steer": True, "steer_std": args.steer_std,
              "noise_bound": args.noise_bound}
        algo = dsrl.DSRL(arm.spec, dsrl.DSRLConfig(
            seed=args.seed, pretrain_updates=0, critic_warmup_updates=args.critic_warmup,
            hidden_sizes=hidden, gamma=args.gamma, tau=args.tau,
            prior_weight=args.prior_weight, init_alpha=0.05), dict(rl))  # type: ignore[arg-type]
        setting = (f"DSRL-NA, steering std {args.steer_std}, noise bound "
                   f"{args.noise_bound:g}, prior weight {args.prior_weight:g}")
    own = algo.actor.state_dict()
    algo.actor.load_state_dict({**own, **{k: torch.as_tensor(v)
                                          for k, v in base_weights.items()}})
    return algo, rl, setting


def flow_rl(args: argparse.Namespace) -> Outcome:
    """RL fine-tuning (``--method``: FQL or DSRL-NA) of a flow policy BC-trained on few demos.

    Three seed ranges never overlap: rounds explore on 30,000+, versions are *selected*
    on 50,000+ (``--select-every``: the start and every few rounds, ``--eval-episodes``
    each; the best is kept — a lab ships no policy that got worse), and the start, the
    final and the kept version are *reported* on the held-out 90,000+ (the start figure
    is flow_bc's, the same seeds).  Selection and evaluation episodes are not env steps.
    Rounds explore as agents do (the policy's stochastic action); evaluations run the
    deterministic one.  FQL first fits its one-step policy to the flow
    (``--distill-updates``) and its critics on the demos (``--critic-warmup``), before
    the first round; DSRL warms its critics after the first round's episodes.
    """
    from learners.replay import TakeoverSampler

    n = args.demos if args.demos is not None else 10
    defaults = {"fql": (0.99, 0.005, 3000), "dsrl": (0.9, 0.02, 1000)}[args.method]
    args = argparse.Namespace(**{
        **vars(args),
        # A policy fine-tuned by RL re-plans every step (learners.policies._flow_matching.
        # execution_of): the base policy is measured the same way, so start and end
        # compare like with like.
        "execute": "chunk",
        "gamma": defaults[0] if args.gamma is None else args.gamma,
        "tau": defaults[1] if args.tau is None else args.tau,
        "critic_warmup": defaults[2] if args.critic_warmup is None else args.critic_warmup})
    fitted = flow_bc(args, n_demos=n, quiet=True, reward=args.rl_reward)
    base, arm, options, start = fitted.algo, fitted.arm, fitted.options, fitted.success
    algo, rl, setting = _fine_tuner(args, arm, options, base.policy_weights())  # type: ignore[attr-defined]

    # The critics learn from every executed step: the demos BC learned from, then the
    # fine-tuning's own episodes (both methods' critics score executed actions).
    buffer = fitted.buffer
    sampler = TakeoverSampler(buffer, mode="all", horizon=args.horizon, seed=args.seed)
    rows: list[str] = []
    rounds_run = 0
    index = n
    not_own = arm.steps  # BC demos and evaluations: not the fine-tuning's env steps

    def select(weights: dict[str, np.ndarray]) -> float:
        nonlocal not_own
        before = arm.steps
        act, reset = _acting("flow_matching", arm, rl, weights)
        rate = _evaluate(arm, act, reset, args.eval_episodes, 50_000)
        not_own += arm.steps - before
        return rate

    final_n = args.final_episodes or args.eval_episodes
    # Reserve: the exploring episodes, a selection and the held-out evaluations.
    reserve = args.episodes_per_round + args.eval_episodes + 3 * final_n
    before_rounds = 0
    if args.method == "fql":  # distil the flow into the one-step policy, warm the critics
        before_rounds = args.distill_updates + args.critic_warmup
        print(f"flow_rl: {args.distill_updates} distillation and {args.critic_warmup} "
              "critic warm-up updates on the demos", flush=True)
        for _ in range(before_rounds):
            if not CLOCK.training(reserve, "FQL's distillation and critic warm-up"):
                break
            algo.update(sampler.sample(args.batch_size))
    # The start: the flow's mode (DSRL: zero noise; FQL: the one-step policy's zero noise).
    start_weights = algo.policy_weights()
    act, reset = _acting("flow_matching", arm, rl, start_weights)
    before = arm.steps
    start_rl = _evaluate(arm, act, reset, final_n, 90_000)
    not_own += arm.steps - before
    kept = Kept(0, select(start_weights) if args.select_every > 0 else -1.0, start_weights,
                args.select_margin)
    if args.select_every > 0:
        rows.append(f"| 0 (start) | 0 | - | - | {kept.rate:.0%} |")
    for r in range(args.rounds):
        if not CLOCK.training(reserve, f"round {r + 1}"):
            break
        act, reset = _acting("flow_matching", arm, rl, algo.policy_weights(),
                             deterministic=False)
        eps = [arm.run(act, seed=30_000 + r * 100 + i, reset_policy=reset)
               for i in range(args.episodes_per_round)]
        for s in _steps_of(arm, eps, args.rl_reward, index):
            buffer.add(s)
        index += len(eps)
        rounds_run += 1
        updates = args.round_updates + (
            args.critic_warmup if r == 0 and args.method == "dsrl" else 0)
        stats: dict[str, float] = {}
        for _ in range(updates):
            if not CLOCK.training(reserve - args.episodes_per_round, f"round {r + 1}'s updates"):
                break
            stats = algo.update(sampler.sample(args.batch_size))
        rate = float(np.mean([e.success for e in eps]))
        chosen = ""
        if args.select_every > 0 and (r + 1) % args.select_every == 0:
            weights = algo.policy_weights()
            sel = select(weights)
            chosen = f"{sel:.0%}"
            kept.offer(r + 1, sel, weights)
        rows.append(f"| {r + 1} | {arm.steps - not_own:,} | {rate:.0%} | "
                    f"{stats.get('values/q', float('nan')):.2f} | {chosen or '-'} |")
        print(f"flow_rl round {r + 1}: {rate:.0%} success (exploring, stochastic)"
              + (f", selection evaluation {chosen}" if chosen else ""), flush=True)
    env_steps = arm.steps - not_own
    act, reset = _acting("flow_matching", arm, rl, algo.policy_weights())
    final = _evaluate(arm, act, reset, final_n, 90_000)
    start_of = "one-step policy" if args.method == "fql" else "zero noise"
    result = (f"{start:.0%} (flow BC) / {start_rl:.0%} ({start_of}, {final_n} episodes) "
              f"-> {final:.0%} (final version)")
    if args.select_every > 0:
        act, reset = _acting("flow_matching", arm, rl, kept.weights)
        kept_final = _evaluate(arm, act, reset, final_n, 90_000)
        result += (f"; kept version (round {kept.round}, selection {kept.rate:.0%}): "
                   f"{kept_final:.0%}")
    print(f"flow_rl: {result}", flush=True)
    method = "FQL" if args.method == "fql" else "DSRL-NA"
    return Outcome(f"flow_rl (push, {method} on flow_matching {_describe(args, True)})",
                   "~50 % -> >= 85 %", result,
                   f"seed {args.seed}; flow BC from {n} demos ({base.update_step} updates), "  # type: ignore[attr-defined]
                   f"{setting}; {rounds_run} rounds x {args.episodes_per_round} episodes = "
                   f"{env_steps:,} env steps, {algo.update_step} updates "
                   f"({before_rounds} before the first round, {args.critic_warmup} "
                   f"critic-only), reward {args.rl_reward}, gamma {args.gamma:g}, tau "
                   f"{args.tau:g}; {args.eval_episodes} episodes per selection (seeds "
                   f"50,000+, margin {args.select_margin:g}), {final_n} per held-out figure "
                   f"(seeds 90,000+; flow BC's start: {args.eval_episodes})"
                   f"{_stopped()}",
                   ["| round | env steps | success (exploring) | Q of the data | selection "
                    "evaluation |", "|---:|---:|---:|---:|---:|", *rows])


def rlpd_takeovers(args: argparse.Namespace) -> Outcome:
    """Both variants are judged the same way: every ``--eval-every`` env steps the
    deterministic policy runs ``--eval-episodes`` episodes on fresh seeds with no
    operator; "env steps to 80 %" is the first such evaluation at >= 80 %.  Evaluation
    episodes are not counted as env steps (nor learned from).  The success of the
    episodes the learner collected (the operator helping, in the "with" variant) is
    reported beside it, not as the figure."""
    from agents import takeover
    from learners import sac
    from learners.replay import TakeoverSampler

    results = []
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - {"with", "without"})
    if unknown:
        raise SystemExit(f"--variants: {', '.join(unknown)}; use with and/or without")
    budget = CLOCK.left()
    rows: list[str] = []
    for with_takeovers in (v == "with" for v in variants):
        name = "with" if with_takeovers else "without"
        # Each variant gets its share of the time that is left.
        share = Clock(min(budget / len(variants), CLOCK.left()) if budget < float("inf")
                      else 0.0)
        arm = Arm(args.robot_type, "pick_place", args.seed)
        options = {"hidden_sizes": _hidden(args), "normalise": not args.no_normalise}
        algo = sac.SAC(arm.spec, sac.SACConfig.rlpd(seed=args.seed, utd_ratio=4,
                                                     hidden_sizes=tuple(_hidden(args)),
                                                     bc_weight=args.bc_weight,
                                                     bc_q_filter=not args.no_q_filter),
                       "mlp_gaussian", dict(options))  # type: ignore[arg-type]
        buffer = _buffer(arm)
        n_demos = args.demos or 0
        if n_demos:  # RLPD's prior data, in both variants: the demo half of each batch
            t0 = time.monotonic()
            prior = _demos(arm, n_demos, 10_000)
            share.measure_episodes(2.0 * (time.monotonic() - t0), n_demos)
            for s in _steps_of(arm, prior, "pick_place_dense@1", 1_000_000):
                buffer.add(s)
        not_own = arm.steps  # demo and evaluation steps: not the learner's env steps
        sampler = TakeoverSampler(buffer, mode="routed", prior_fraction=0.5, seed=args.seed)
        # The simulated human of HIL-SERL: it steps in when the robot is failing (the
        # progress rule, ``--rule auto``), so the policy's own actions run — and teach
        # the critics what they are worth — until then.
        operator = takeover.ScriptedOperator(arm.expert, threshold=0.8, patience=3,
                                             min_steps=15, agree_steps=3, rule=args.rule,
                                             stall_steps=args.stall_steps,
                                             regress_m=args.regress) \
            if with_takeovers else None
        collected: list[bool] = []
        evaluations: list[tuple[int, float]] = []
        reached, index, next_eval = None, 0, args.eval_every

        while arm.steps - not_own < args.max_steps and reached is None and share.training(
                args.eval_episodes, f"{name} takeovers"):
            act, reset = _acting("mlp_gaussian", arm, options, algo.policy_weights())
            ep = arm.run(act, seed=40_000 + index, operator=operator, reset_policy=reset)
            for s in _steps_of(arm, [ep], "pick_place_dense@1", index):
                buffer.add(s)
            index += 1
            collected = [*collected, ep.success][-20:]
            if arm.steps - not_own > 1000:
                for _ in range(len(ep.action) // 4):
                    if not share.training(args.eval_episodes, "updates"):
                        break
                    algo.update(sampler.sample(256 * 4))
            stopping = not share.training(args.eval_episodes, "updates")
            if stopping or arm.steps - not_own >= min(next_eval, args.max_steps):
                before, steps = arm.steps, arm.steps - not_own
                act, reset = _acting("mlp_gaussian", arm, options, algo.policy_weights())
                rate = _evaluate(arm, act, reset, args.eval_episodes, 95_000)
                not_own += arm.steps - before
                evaluations.append((steps, rate))
                rows.append(f"| {name} | {steps:,} | {rate:.0%} | "
                            f"{float(np.mean(collected)):.0%} |")
                print(f"rlpd {name} takeovers: {steps:,} env steps, operator-free success "
                      f"{rate:.0%} ({args.eval_episodes} episodes); collected episodes "
                      f"(last 20) {float(np.mean(collected)):.0%}", flush=True)
                next_eval = steps + args.eval_every
                if rate >= 0.8:
                    reached = steps
        if share.stopped:
            print(f"rlpd {name} takeovers: {share.stopped}", flush=True)
        best = max((r for _, r in evaluations), default=0.0)
        results.append((name, reached, arm.steps - not_own, best,
                        float(np.mean(collected or [0.0]))))
    text = "; ".join(
        f"{n} takeovers: " + (f"{r:,} env steps" if r else
                              f"not within {s:,} env steps (best evaluation {b:.0%})")
        for n, r, s, b, _ in results)
    return Outcome("rlpd_takeovers (pick_place)",
                   "env steps to 80 % (operator-free evaluation)", text,
                   f"RLPD preset (10 critics, LayerNorm), UTD 4, routed sampler, "
                   f"observations {'raw' if args.no_normalise else 'normalised'}, "
                   + (f"BC on human rows (weight {args.bc_weight:g}, "
                      f"{'unfiltered' if args.no_q_filter else 'Q-filtered'}), "
                      if args.bc_weight else "")
                   + f"operator rule {args.rule}, "
                   f"{args.demos or 0} demos as prior data; every {args.eval_every:,} env "
                   f"steps {args.eval_episodes} deterministic episodes without the operator; "
                   f"budget {args.max_steps:,} env steps"
                   + (f", {budget / len(variants):.0f} s per variant"
                      if budget < float("inf") else "")
                   + "; collected-episode success (last 20, operator helping in 'with'): "
                   + ", ".join(f"{n} {c:.0%}" for n, _, _, _, c in results),
                   ["| variant | env steps | operator-free success | collected episodes "
                    "(last 20) |", "|---|---:|---:|---:|", *rows])


def run(args: argparse.Namespace) -> int:
    global CLOCK
    torch.set_num_threads(1)
    runs = args.runs.split(",")
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        raise SystemExit(f"userctl bench imitation: unknown runs {', '.join(unknown)}; "
                         f"known: {', '.join(RUNS)}")
    outcomes = []
    t0 = time.monotonic()
    for i, name in enumerate(runs):
        # Each run gets an equal share of the time still left.
        left = args.time_limit - (time.monotonic() - t0)
        CLOCK = Clock(left / (len(runs) - i) if args.time_limit > 0 else 0.0)
        if name == "flow_bc":
            outcomes.append(flow_bc(args).outcome)
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
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": sys.argv, "wall_s": round(time.monotonic() - t0, 1),
            "outcomes": [dataclasses.asdict(o) for o in outcomes]}, indent=1))
    if not args.no_write:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report.write_section("imitation", text, args.out)
    return 0
