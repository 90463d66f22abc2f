"""`userctl demos import PATH --experiment E | export EXPERIMENT PATH | record …` —
demonstrations as LeRobotDataset v3.0 (``pipeline.lerobot``) in and out of the Delta
history (``pipeline.demos``), and recorded by the scripted operator.

Examples::

    userctl demos record --robot-type panda --task push --episodes 50 --experiment push-bc \\
        --reward push_dense@1 --out runs/push-demos
    userctl demos import runs/push-demos --experiment push-rlpd --reward push_dense@1
    userctl demos export push-bc /tmp/push-lerobot --reward push_dense@1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from pipeline import demos, history, lerobot, sink


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demos", help="demonstrations: LeRobot datasets in and out of the "
                                     "history, recorded by the scripted operator")
    p.add_argument("--root", type=Path, help="Delta root (default: the sink's, USER_SINK_ROOT)")
    dsub = p.add_subparsers(dest="demos_cmd", required=True)
    s = dsub.add_parser("import", help="a LeRobotDataset v3.0 -> demo episodes of EXPERIMENT")
    s.add_argument("path", type=Path)
    s.add_argument("--experiment", required=True)
    s.add_argument("--robot-type", help="our robot type (default: the dataset's robot_type)")
    s.add_argument("--reward", metavar="NAME@VERSION",
                   help="score the demos into `transitions` with this reward function")
    s.set_defaults(func=_import)
    s = dsub.add_parser("export", help="EXPERIMENT's episodes -> a LeRobotDataset v3.0")
    s.add_argument("experiment")
    s.add_argument("path", type=Path)
    s.add_argument("--reward", metavar="NAME@VERSION", help="add next.reward/next.success")
    s.add_argument("--demos-only", action="store_true", help="only imported/recorded demos")
    s.add_argument("--fps", type=int, default=20)
    s.set_defaults(func=_export)
    s = dsub.add_parser("record", help="drive simulated robots with the scripted operator")
    s.add_argument("--robot-type", default="panda")
    s.add_argument("--task", default="push")
    s.add_argument("--episodes", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--successful-only", action="store_true",
                   help="keep only episodes the task counts as solved")
    s.add_argument("--experiment", help="write them into this experiment's history")
    s.add_argument("--reward", metavar="NAME@VERSION")
    s.add_argument("--out", type=Path, help="also write a LeRobotDataset here")
    s.set_defaults(func=_record)


def _root(args: argparse.Namespace) -> Path:
    return Path(args.root or sink.SinkSettings().root)


def _import(args: argparse.Namespace) -> int:
    try:
        dataset = lerobot.read(args.path)
    except lerobot.LeRobotError as exc:
        raise SystemExit(f"userctl demos import: {exc}") from None
    robot_type = args.robot_type or dataset.robot_type
    if not robot_type:
        raise SystemExit("userctl demos import: the dataset names no robot_type; pass "
                         "--robot-type")
    report = demos.import_episodes(_root(args), dataset, experiment=args.experiment,
                                   robot_type=robot_type, source=str(args.path.resolve()),
                                   reward=args.reward)
    print(f"{args.path}: {report.episodes} episodes, {report.steps} steps "
          + ("already imported" if report.already else "imported")
          + f" into {report.experiment} as incarnation {report.incarnation}"
          + (f"; {report.rewarded} steps scored by {args.reward}" if args.reward else ""))
    return 0


def _export(args: argparse.Namespace) -> int:
    try:
        robot_type, episodes = demos.export_episodes(_root(args), args.experiment,
                                                     reward=args.reward,
                                                     demos_only=args.demos_only)
        out = lerobot.write(args.path, lerobot.Dataset(args.fps, robot_type, episodes))
    except (history.HistoryError, lerobot.LeRobotError) as exc:
        raise SystemExit(f"userctl demos export: {exc}") from None
    print(f"{out}: {len(episodes)} episodes, {sum(len(e) for e in episodes)} frames "
          "(LeRobotDataset v3.0)")
    return 0


def record_episodes(robot_type: str, task: str, episodes: int, seed: int = 0,
                    successful_only: bool = False) -> lerobot.Dataset:
    """``episodes`` episodes of the scripted operator driving a fresh simulated robot."""
    from agents import registry, takeover
    from agents.policies import scripted
    from agents.sim import tasks

    rule = tasks.get(task)
    robot = registry.make_robot(robot_type, task=task, seed=seed, validate=False)  # unpaced
    operator = takeover.ScriptedOperator(scripted(robot), threshold=0)
    out: list[lerobot.Episode] = []
    attempts = 0
    try:
        while len(out) < episodes and attempts < 4 * episodes:
            attempts += 1
            step = robot.reset(seed=seed + attempts)
            operator.reset()
            obs, act, info = [], [], []
            solved = []
            while not step.done:
                proposal = np.zeros(robot.spec.action.shape, np.float32)
                action = operator(step.observation, proposal)
                assert action is not None
                obs.append(step.observation)
                act.append(action)
                step = robot.step(action)
                info.append(dict(step.info))
                solved.append(step.terminated or rule.success(step.info))
            if successful_only and not any(solved):
                continue
            out.append(lerobot.Episode(
                observation=np.stack(obs).astype(np.float32),
                action=np.stack(act).astype(np.float32), task=task,
                success=np.array(solved, bool), intervention=np.ones(len(obs), bool),
                info={k: np.stack([i[k] for i in info]).astype(np.float32) for k in info[0]},
            ))
    finally:
        robot.close()
    return lerobot.Dataset(round(robot.spec.control_hz), robot_type, out)


def _record(args: argparse.Namespace) -> int:
    dataset = record_episodes(args.robot_type, args.task, args.episodes, args.seed,
                              args.successful_only)
    solved = sum(bool(e.success is not None and e.success.any()) for e in dataset.episodes)
    print(f"recorded {len(dataset.episodes)} episodes of {args.robot_type} on {args.task} "
          f"({solved} solved)")
    if args.out is not None:
        lerobot.write(args.out, dataset)
        print(f"{args.out}: LeRobotDataset v3.0")
    if args.experiment:
        report = demos.import_episodes(_root(args), dataset, experiment=args.experiment,
                                       robot_type=args.robot_type,
                                       source=demos.new_source_id(), reward=args.reward)
        print(f"{report.steps} steps into {args.experiment} as {report.incarnation}")
    return 0
