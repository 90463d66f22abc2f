"""Learning from pixels, measured (issue 12): learner updates/s on camera frames, the image
replay buffer's resident memory, and pixel reach where the goal is only in the image.

Parts (``--parts``, comma-separated; default ``updates,buffer,reach``):

* ``updates`` — SAC with the ``cnn_gaussian`` policy (DrQ shift, encoder trained by the
  critics) on batches of ``--batch`` (256) steps of two 64×64×3 cameras + state, sampled
  from the image replay buffer: updates/s and the time split sample/update, on the CPU
  (``--threads`` torch threads), or with ``--gpu`` on CUDA.  Self-contained: no broker,
  no Delta — ``userctl bench pixels --gpu`` needs only the repository and its venv on a
  CUDA machine and finishes well within 10 minutes (``--seconds`` per measurement).
* ``buffer`` — a fresh process holds ``--buffer-steps`` (100,000) steps of two 64×64×3
  cameras + state in the learner's buffer (budget sized to fit them raw, episodes of 50
  steps with a final frame each), fed through :class:`learners.loop.Learner` as live
  batches; its peak RSS (``ru_maxrss``) is reported against the 3 GB target.  One run per
  ``--buffer-runs`` entry ``FRAMES:CODEC``: ``rendered`` frames are reacher2d's overhead
  camera (rendered first in a child process), ``noise`` frames are uniform random bytes
  (incompressible: the worst case); ``CODEC`` is ``buffer.image_codec`` (``lz4``,
  ``zstd`` or ``none``).
* ``reach`` — pixel reach: ``reacher2d`` with its ``overhead`` camera, the policy sees the
  frame and the joint state but not the goal (``state_indices`` drop the end-effector and
  goal coordinates).  One process, the robot stepped flat out, SAC-cnn updated at UTD
  ``--utd`` — no Kafka, so the figure is the learning algorithm's own, bounded by
  ``--reach-minutes`` of wall clock; success over the last 50 episodes is reported, with
  the env steps and updates it took.
* ``classifier`` — reach with a learned reward as the only signal: a success classifier
  (:mod:`pipeline.rewards.classifier`, the network ``userctl rewards train`` fits) is
  trained on ``--classifier-frames`` overhead frames of reacher2d labelled by reach's
  success rule (rendered in a child process; half the episodes driven by the scripted
  reach, half at random, so both classes occur), its held-out precision/recall are
  reported, then the many-robot reach (``--envs``, ``--gpu``, as ``reach``) learns with
  ``reward = classifier(next frame)`` (1 or 0) and nothing else; success is still judged
  by the rule.

Each part rewrites its own section of BENCHMARKS.md (``pixels``, ``pixels-buffer``,
``pixels-reach``, ``pixels-gpu``, ``pixels-reach-classifier[-gpu]``; ``--no-write`` to
skip).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from infra.bench import report

HELP = "learning from pixels: CNN updates/s (CPU, --gpu), image buffer RSS, pixel reach"

CAMERAS = ("overhead", "side")
SIZE = (64, 64)
#: reacher2d's observation: cos q (2), sin q (2), q̇ (2), end effector (3), goal (3).
REACH_STATE = [0, 1, 2, 3, 4, 5]
SUCCESS_RADIUS = 0.05


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--parts", default=None,
                   help="comma-separated: updates, buffer, reach, classifier (default: "
                        "updates, buffer, reach; with --gpu: updates)")
    p.add_argument("--gpu", action="store_true",
                   help="on CUDA: updates (the prepared GPU run), or with --parts reach "
                        "the many-robot pixel reach")
    p.add_argument("--batch", type=int, default=256, help="batch size of an update")
    p.add_argument("--seconds", type=float, default=60.0, help="seconds per updates/s figure")
    p.add_argument("--threads", type=int, default=2, help="torch threads on the CPU")
    p.add_argument("--buffer-steps", type=int, default=100_000, help="steps the buffer holds")
    p.add_argument("--buffer-runs", default="rendered:lz4,noise:none",
                   help="buffer: comma-separated FRAMES:CODEC runs, FRAMES rendered|noise, "
                        "CODEC lz4|zstd|none")
    p.add_argument("--reach-minutes", type=float, default=10.0, help="wall clock of reach")
    p.add_argument("--utd", type=float, default=0.5, help="reach: updates per env step")
    p.add_argument("--reach-batch", type=int, default=128, help="reach: batch size")
    p.add_argument("--envs", type=int, default=1,
                   help="reach: robots; more than 1 (or --gpu) steps them in worker "
                        "processes while the learner updates (infra.bench._pixel_fleet)")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2),
                   help="reach: worker processes for --envs robots")
    p.add_argument("--reach-steps", type=int, default=100_000,
                   help="reach with --envs/--gpu: env steps to run (or --reach-minutes)")
    p.add_argument("--warmup", type=int, default=2_000,
                   help="reach with --envs/--gpu: random env steps before learning")
    p.add_argument("--classifier-frames", type=int, default=10_000,
                   help="classifier: labelled frames to train the learned reward on")
    p.add_argument("--classifier-epochs", type=int, default=6,
                   help="classifier: passes over the training frames")
    p.add_argument("--out", type=Path, default=report.DEFAULT_PATH, help="BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print only")


# ---------------------------------------------------------------------------- updates


def _image_buffer(steps: int, budget_mb: int, seed: int = 0, device: str | None = None) -> Any:
    from learners.core import StepBatch
    from learners.replay import NumpyReplayBuffer, ReplayConfig

    shapes = {c: (*SIZE, 3) for c in CAMERAS}
    buffer = NumpyReplayBuffer(ReplayConfig((12,), (2,), memory_budget_bytes=budget_mb << 20,
                                            image_shapes=shapes, seed=seed,
                                            image_device=device))
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 256, (512, *SIZE, 3), dtype=np.uint8)
    chunk = 1000
    for start in range(0, steps, chunk):
        n = min(chunk, steps - start)
        index = start + np.arange(n)
        step = index % 50
        truncated = step == 49
        k = int(truncated.sum())
        frames = {c: pool[(index * (i + 1)) % len(pool)] for i, c in enumerate(CAMERAS)}
        buffer.add(StepBatch(
            robot_id=np.full(n, "r0"), episode_id=(index // 50).astype(str), step=step,
            observation=rng.standard_normal((n, 12), dtype=np.float32),
            action=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
            reward=rng.standard_normal(n, dtype=np.float32), terminated=np.zeros(n, bool),
            policy_version=np.zeros(n, np.int64), truncated=truncated,
            next_observation=np.zeros((n, 12), np.float32), images=frames,
            next_images={c: np.where(truncated[:, None, None, None], f, 0) if k else
                         np.zeros_like(f) for c, f in frames.items()}))
    return buffer


def measure_updates(device: str, batch_size: int, seconds: float) -> dict[str, float]:
    """SAC + cnn_gaussian updates on batches of two 64×64 cameras: updates/s."""
    import torch

    from learners import policies, sac

    spec = policies.PolicySpec(12, 2, (-1.0, -1.0), (1.0, 1.0))
    options: dict[str, Any] = {"cameras": list(CAMERAS), "image_size": list(SIZE)}
    algo = sac.SAC(spec, sac.SACConfig(hidden_sizes=(256, 256)), "cnn_gaussian", options,
                   device=device)
    buffer = _image_buffer(5_000, 256, device=None if device == "cpu" else device)
    sample_s = update_s = 0.0
    updates = 0
    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(3):  # warm-up (cuDNN autotune, allocator)
        algo.update(buffer.sample(batch_size))
    sync()
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        batch = buffer.sample(batch_size)
        t1 = time.perf_counter()
        algo.update(batch)
        sync()
        t2 = time.perf_counter()
        sample_s += t1 - t0
        update_s += t2 - t1
        updates += 1
    total = time.perf_counter() - started
    return {"updates": updates, "updates_per_s": updates / total,
            "sample_ms": 1000 * sample_s / updates, "update_ms": 1000 * update_s / updates,
            "frames_per_s": updates * batch_size * len(CAMERAS) * 2 / total}


# ---------------------------------------------------------------------------- buffer


def _render_pool(n: int, path: str) -> None:
    """In a child process (MuJoCo's renderer stays out of the measured one): ``n`` frames
    of reacher2d's 64×64 overhead camera under random actions, saved to ``path`` (.npy)."""
    from agents import registry

    robot = registry.make_robot("reacher2d", task="reach", seed=0, cameras=("overhead",),
                                camera_size=SIZE)
    rng = np.random.default_rng(0)
    frames = np.empty((n, *SIZE, 3), np.uint8)
    step = robot.reset()
    for i in range(n):
        frames[i] = step.images["overhead"]
        step = robot.step(rng.uniform(-1, 1, robot.spec.action.shape).astype(np.float32))
        if step.truncated or step.terminated:
            step = robot.reset()
    np.save(path, frames)


def _buffer_child(steps: int, pool_path: str | None = None, codec: str | None = "lz4") -> None:
    """In a fresh process: the learner's buffer filled with ``steps`` image steps, as live
    batches of 50 (frames from the pool at ``pool_path``, else noise); prints JSON with
    peak RSS."""
    import torch  # noqa: F401  (the learner process holds torch: count it)

    from learners.loop import Learner, Steps
    from learners.policies import PolicySpec
    from schemas import samples
    from schemas.experiment import ExperimentSpec
    from schemas.transitions import RewardedTransitionBatch

    per_step = len(CAMERAS) * SIZE[0] * SIZE[1] * 3 + 12 * 4 + 2 * 4 + 40
    budget_mb = -(-int(steps * 1.02 * per_step) // (1 << 20))  # + final frames (1 in 50)
    spec = ExperimentSpec.model_validate({
        "name": "bench-px", "robots": [{"robot_type": "reacher2d"}],
        "policy": {"kind": "cnn_gaussian", "hidden": [32, 32]},
        "observation": {"cameras": list(CAMERAS), "image_size": list(SIZE)},
        "algorithm": {"warmup_steps": 10**9},
        "buffer": {"memory_budget_mb": budget_mb, "image_codec": codec}})
    robot = samples.robot_spec(obs_dim=12, act_dim=2, robot_type="reacher2d",
                               cameras=CAMERAS, image_hw=SIZE)

    class _Null:
        stats: Any = None
        published_version = 0

        def publish(self, snapshot: Any) -> None: ...

    learner = Learner(spec, lambda _t: PolicySpec.from_robot_spec(robot),
                      lambda _s: (_Null(), 0))
    raw = samples.batch(robot, 50, rng=0, robot_id="r0", experiment_id="bench-px",
                        episode_len=50)
    template = Steps.of_batch(RewardedTransitionBatch.from_raw(
        raw, reward_fn="bench@1", reward=np.zeros(50, np.float32),
        success=np.zeros(50, bool), terminated=np.zeros(50, bool)))
    pool = None if pool_path is None else np.load(pool_path)
    last = np.arange(50) == 49

    def frames(e: int) -> dict[str, Any]:
        """Episode ``e``'s frames: the pool's, each camera at its own offset."""
        if pool is None:
            return {}
        images, nxt = {}, {}
        for c, cam in enumerate(CAMERAS):
            index = (e * 50 + c * len(pool) // 2 + np.arange(51)) % len(pool)
            images[cam] = pool[index[:50]]
            nxt[cam] = np.where(last[:, None, None, None], pool[index[1:]], 0).astype(np.uint8)
        return {"images": images, "next_images": nxt}

    started = time.perf_counter()
    before = (0, 0)
    for e in range(-(-steps // 50)):
        if e == 1:  # the first episode built the type's SAC (and imported what it needs)
            before = _rss()
        # A new episode and new seqs each time: the learner takes every step as new.
        learner.add(dataclasses.replace(
            template, steps=dataclasses.replace(template.steps,
                                                episode_id=np.full(50, f"e{e}"), **frames(e)),
            seq=np.arange(e * 50, e * 50 + 50, dtype=np.int64)), "live")
    fill_s = time.perf_counter() - started
    type_learner = learner.types["reacher2d"]
    buffer = type_learner.online
    sample_started = time.perf_counter()
    for _ in range(5):
        buffer.sample(256)
    sample_ms = (time.perf_counter() - sample_started) / 5 * 1000
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    anon, files = _rss()
    print(json.dumps({"rss_anon": anon, "rss_file": files, "before_anon": before[0],
                      "before_file": before[1],
                      "steps": type_learner.env_steps, "held": len(type_learner.online),
                      "capacity": type_learner.online.capacity,
                      "buffer_bytes": type_learner.online.nbytes, "budget_mb": budget_mb,
                      "frame_bytes": buffer.frame_bytes, "codec": codec,
                      "frames": "noise" if pool is None else "rendered",
                      "sample_ms": sample_ms, "peak_rss": rss, "fill_s": fill_s}))


def _rss() -> tuple[int, int]:
    """(anonymous, file-backed) resident bytes of this process."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                  .splitlines() if line.startswith(("RssAnon", "RssFile")))
    anon, files = (int(status.get(k, "0 kB").split()[0]) * 1024 for k in ("RssAnon", "RssFile"))
    return anon, files


def measure_buffer(steps: int, frames: str = "rendered", codec: str | None = "lz4"
                   ) -> dict[str, Any]:
    """Peak RSS of a fresh learner process holding ``steps`` image steps."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        pool = None
        if frames == "rendered":
            pool = str(Path(tmp) / "frames.npy")
            subprocess.run([sys.executable, "-c", "from infra.bench.pixels import "
                            f"_render_pool; _render_pool(2000, {pool!r})"], check=True,
                           env={"MUJOCO_GL": "egl", **env})
        elif frames != "noise":
            raise ValueError(f"--buffer-runs: frames are rendered or noise, not {frames!r}")
        out = subprocess.run(
            [sys.executable, "-c", "from infra.bench.pixels import _buffer_child; "
             f"_buffer_child({steps}, {pool!r}, {codec!r})"],
            capture_output=True, text=True, check=True, env=env)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------- reach


def measure_reach(minutes: float, utd: float, batch_size: int, threads: int) -> dict[str, Any]:
    """Pixel reach in one process: robot flat out, updates at ``utd`` per env step."""
    import torch

    from agents import registry
    from learners import policies, sac
    from learners.core import StepBatch
    from learners.replay import NumpyReplayBuffer, ReplayConfig

    torch.set_num_threads(threads)
    # torch.optim's first use imports triton, which crashes once MuJoCo's EGL renderer
    # exists in the process: take that import before the camera renders (the learner and
    # the agents are separate processes; only this one-process benchmark has both).
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    robot = registry.make_robot("reacher2d", task="reach", seed=0, cameras=("overhead",),
                                camera_size=SIZE)
    spec = policies.PolicySpec.from_robot_spec(robot.spec)
    options: dict[str, Any] = {"cameras": ["overhead"], "image_size": list(SIZE),
                               "state_indices": REACH_STATE}
    algo = sac.SAC(spec, sac.SACConfig(hidden_sizes=(256, 256)), "cnn_gaussian", options)
    acting = policies.build("cnn_gaussian", spec, {**options, "hidden_sizes": [256, 256],
                                                   "seed": 1})
    buffer = NumpyReplayBuffer(ReplayConfig((spec.observation_dim,), (spec.action_dim,),
                                            memory_budget_bytes=1 << 30,
                                            image_shapes={"overhead": (*SIZE, 3)}))
    rng = np.random.default_rng(0)
    warmup, recent = 2_000, deque[bool](maxlen=50)
    env_steps = updates = episodes = 0
    episode = 0
    step = robot.reset()
    t = 0
    succeeded = False
    started = time.perf_counter()
    curve: list[tuple[int, float]] = []
    while time.perf_counter() - started < minutes * 60:
        obs, frame = step.observation, step.images["overhead"]
        if env_steps < warmup:
            action = rng.uniform(-1, 1, spec.action_dim).astype(np.float32)
        else:
            action = acting.act(obs[None], images={"overhead": frame[None]})[0]
        nxt = robot.step(action)
        distance = float(np.linalg.norm(np.asarray(nxt.info["goal_pos"])
                                        - np.asarray(nxt.info["ee_pos"])))
        succeeded |= distance < SUCCESS_RADIUS  # reacher2d's success rule (5 cm)
        reward = -distance
        buffer.add(StepBatch(
            robot_id=np.array(["r"]), episode_id=np.array([str(episode)]), step=np.array([t]),
            observation=obs[None].astype(np.float32), action=action[None],
            reward=np.array([reward], np.float32), terminated=np.zeros(1, bool),
            policy_version=np.zeros(1, np.int64), truncated=np.array([nxt.truncated]),
            next_observation=nxt.observation[None].astype(np.float32),
            images={"overhead": frame[None]},
            next_images={"overhead": nxt.images["overhead"][None]}))
        env_steps += 1
        t += 1
        step = nxt
        if nxt.truncated:
            recent.append(succeeded)
            episodes += 1
            episode += 1
            t = 0
            succeeded = False
            step = robot.reset()
            if episodes % 20 == 0:
                curve.append((env_steps, sum(recent) / len(recent)))
        if env_steps >= warmup:
            while updates < utd * (env_steps - warmup):
                algo.update(buffer.sample(batch_size))
                updates += 1
            if env_steps % 500 == 0:
                acting.load_weights(algo.policy_weights())
    wall = time.perf_counter() - started
    return {"env_steps": env_steps, "updates": updates, "episodes": episodes, "wall_s": wall,
            "success_last_50": sum(recent) / len(recent) if recent else 0.0,
            "updates_per_s": updates / wall, "curve": curve[-6:]}


# ---------------------------------------------------------------------------- report


def run(args: argparse.Namespace) -> int:
    import torch

    default = "updates" if args.gpu else "updates,buffer,reach"
    parts = {p.strip() for p in (args.parts or default).split(",") if p.strip()}
    lines: list[str] = []
    if "classifier" in parts:
        return _classifier_reach(args)
    if "reach" in parts and (args.gpu or args.envs > 1):
        return _fleet_reach(args)
    if args.gpu:
        if not torch.cuda.is_available():
            print("userctl: --gpu needs CUDA (torch.cuda.is_available() is False)",
                  file=sys.stderr)
            return 2
        torch.backends.cudnn.benchmark = True
        r = measure_updates("cuda", args.batch, args.seconds)
        name = torch.cuda.get_device_name(0)
        print(json.dumps(r))
        lines += ["## Pixels: learner updates on a GPU (`userctl bench pixels --gpu`)", "",
                  f"- **GPU** ({name}): SAC + cnn_gaussian, batch {args.batch} × 2 cameras "
                  f"64×64, frames held on the GPU, fused Adam: **{r['updates_per_s']:.1f} "
                  f"updates/s** (sample {r['sample_ms']:.1f} ms, update "
                  f"{r['update_ms']:.1f} ms)"]
        _write(args, lines, "pixels-gpu")
        return 0
    torch.set_num_threads(args.threads)
    if "updates" in parts:
        r = measure_updates("cpu", args.batch, args.seconds)
        print("updates", json.dumps(r))
        _write(args, [
            "## Pixels: learner updates on the CPU (`userctl bench pixels --parts updates`)", "",
            f"- **CPU updates** ({args.threads} torch threads): SAC + cnn_gaussian, batch "
            f"{args.batch} × 2 cameras 64×64×3 + state: **{r['updates_per_s']:.2f} updates/s** "
            f"(sample {r['sample_ms']:.0f} ms, update {r['update_ms']:.0f} ms; "
            f"{r['updates']} updates)"], "pixels")
    if "buffer" in parts:
        runs = [r.split(":") for r in args.buffer_runs.split(",") if r.strip()]
        lines = ["## Pixels: image replay buffer memory (`userctl bench pixels --parts buffer`)",
                 ""]
        for frames, codec in runs:
            b = measure_buffer(args.buffer_steps, frames.strip(),
                               None if codec.strip() == "none" else codec.strip())
            print("buffer", json.dumps(b))
            lines += _buffer_lines(b)
        _write(args, lines, "pixels-buffer")
    if "reach" in parts:
        g = measure_reach(args.reach_minutes, args.utd, args.reach_batch, args.threads)
        print("reach", json.dumps(g))
        hours = args.utd * 100_000 / max(g["updates_per_s"], 1e-9) / 3600
        _write(args, [
            "## Pixels: reach, goal only in the image (`userctl bench pixels --parts reach`)",
            "",
            f"- **Pixel reach** (goal only in the overhead frame, one process, UTD {args.utd}, "
            f"batch {args.reach_batch}): {g['env_steps']:,} env steps and {g['updates']:,} "
            f"updates in {g['wall_s'] / 60:.1f} min ({g['updates_per_s']:.2f} updates/s): "
            f"success over the last 50 episodes **{100 * g['success_last_50']:.0f} %** (curve: "
            + ", ".join(f"{s:,} steps {100 * v:.0f} %" for s, v in g["curve"])
            + f"). Bounded by --reach-minutes: 100,000 env steps at UTD {args.utd} need "
            f"{args.utd * 100_000:,.0f} updates, {hours:.1f} h at this rate"], "pixels-reach")
    return 0


def _buffer_lines(b: dict[str, Any]) -> list[str]:
    gb = b["peak_rss"] / 1e9
    base = (b["before_anon"] + b["before_file"]) / 1e9
    grown = (b["rss_anon"] - b["before_anon"]) / 1e9
    raw = b["steps"] * 1.02 * 2 * 64 * 64 * 3  # + one final frame per 50-step episode
    frames = ("reacher2d's overhead camera, rendered" if b["frames"] == "rendered"
              else "uniform noise (incompressible)")
    codec = b["codec"] or "none (raw uint8 arrays)"
    pool = ("; and this benchmark's own pool of 2,000 rendered frames, 0.02 GB"
            if b["frames"] == "rendered" else "")
    return [
        f"- **{b['steps']:,} steps of 2 × 64×64×3 + state, frames {frames}, "
        f"`buffer.image_codec: {b['codec'] or 'null'}`: peak RSS {gb:.2f} GB "
        f"({b['peak_rss'] / 2**30:.2f} GiB)** of the learner process "
        f"({'within' if gb <= 3.0 else 'over'} the 3 GB target); {b['held']:,} "
        f"sampleable, frames take {b['frame_bytes'] / 1e9:.2f} GB "
        f"({raw / max(b['frame_bytes'], 1):.1f}× smaller than raw, codec {codec}) "
        f"under a {b['budget_mb']} MiB budget (ring {b['capacity']:,} slots); a batch of "
        f"256 samples in {b['sample_ms']:.0f} ms; filled in {b['fill_s']:.1f} s.",
        f"  - where it goes: {base:.2f} GB after the first episode, before the buffer holds "
        f"anything to speak of (Python, torch's CUDA build — {b['before_file'] / 1e9:.2f} GB "
        f"of it mapped library pages — the SAC networks, and the torch._dynamo + triton "
        f"that torch.optim imports{pool}); filling grew the anonymous memory by {grown:.2f} GB "
        f"and mapped pages by {(b['rss_file'] - b['before_file']) / 1e9:.2f} GB; the peak "
        f"lies {(b['peak_rss'] - b['rss_anon'] - b['rss_file']) / 1e9:.2f} GB above the "
        f"end."]


def _render_labelled(n: int, path: str, seed: int = 0) -> None:
    """In a child process: ``n`` overhead frames of reacher2d, each labelled by reach's
    success rule (end effector within 5 cm of the goal), with its episode number; even
    episodes follow the scripted reach (+ noise), odd ones act at random."""
    from agents import policies, registry

    robot = registry.make_robot("reacher2d", task="reach", seed=seed, validate=False,
                                cameras=("overhead",), camera_size=SIZE)
    expert = policies.scripted(robot)
    rng = np.random.default_rng(seed)
    frames = np.empty((n, *SIZE, 3), np.uint8)
    labels = np.empty(n, bool)
    episodes = np.empty(n, np.int64)
    episode = 0
    step = robot.reset()
    for i in range(n):
        noise = rng.normal(0.0, 0.3, robot.spec.action.shape)
        action = (expert(step.observation) + noise if episode % 2 == 0
                  else rng.uniform(-1, 1, robot.spec.action.shape))
        step = robot.step(np.clip(action, -1, 1).astype(np.float32))
        frames[i] = step.images["overhead"]
        labels[i] = np.linalg.norm(np.asarray(step.info["goal_pos"])
                                   - np.asarray(step.info["ee_pos"])) < SUCCESS_RADIUS
        episodes[i] = episode
        if step.truncated or step.terminated:
            step = robot.reset()
            episode += 1
    np.savez(path, frames=frames, labels=labels, episodes=episodes)


def _classifier_reach(args: argparse.Namespace) -> int:
    """Train the learned reward on labelled frames, then reach with it as the only reward."""
    from pipeline.rewards import classifier

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "labelled.npz")
        subprocess.run([sys.executable, "-c", "from infra.bench.pixels import "
                        f"_render_labelled; _render_labelled({args.classifier_frames}, "
                        f"{path!r})"], check=True,
                       env={"MUJOCO_GL": "egl", **os.environ, "OMP_NUM_THREADS": "1"})
        data = np.load(path)
        frames, labels, episodes = data["frames"], data["labels"], data["episodes"]
    heldout = classifier.heldout_episode(np.full(len(frames), "r0"), episodes)
    net, quality = classifier.train(frames, labels, heldout, epochs=args.classifier_epochs)
    trained_s = time.perf_counter() - started
    learned = {"frames": len(frames), "positives": int(labels.sum()),
               "heldout_frames": int(heldout.sum()), "train_s": trained_s, **quality}
    print("classifier", json.dumps(learned), flush=True)

    def reward(next_frames: np.ndarray) -> np.ndarray:
        success = classifier.probabilities(net, next_frames) >= 0.5
        return success.astype(np.float32)

    return _fleet_reach(args, reward=reward, learned=learned)


def _fleet_reach(args: argparse.Namespace, reward: Any = None,
                 learned: dict[str, Any] | None = None) -> int:
    """Pixel reach with ``--envs`` robots in worker processes (the GPU run); with
    ``reward``, a learned reward is the only one."""
    import torch

    from infra.bench import _pixel_fleet

    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        print("userctl: --gpu needs CUDA (torch.cuda.is_available() is False)",
              file=sys.stderr)
        return 2
    if args.gpu:
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")  # TF32 on Hopper
    torch.set_num_threads(args.threads)
    try:
        g = _pixel_fleet.run(envs=args.envs, workers=args.workers, device=device,
                             env_steps=args.reach_steps, seconds=args.reach_minutes * 60,
                             utd=args.utd, batch_size=args.reach_batch, warmup=args.warmup,
                             size=SIZE, state=REACH_STATE, reward=reward,
                             progress=lambda line: print(line, flush=True))
    except _pixel_fleet.RenderFailed as exc:
        print(f"userctl: pixel reach cannot run: {exc}", file=sys.stderr)
        return 3
    print("reach", json.dumps(g))
    where = (f"{torch.cuda.get_device_name(0)}, frames on the GPU" if args.gpu
             else f"CPU, {args.threads} torch threads")
    bounded = ("" if g["reached_target_steps"] else
               f"; stopped by --reach-minutes {args.reach_minutes:g} before "
               f"{args.reach_steps:,} env steps")
    curve = ", ".join(f"{p['env_steps']:,} steps {100 * p['success']:.0f} %"
                      for p in g["curve"])
    lines = [
        "## Pixels: reach with many robots, goal only in the image "
        "(`userctl bench pixels --parts reach --envs N`)", "",
        f"- **Pixel reach** ({where}; {g['envs']} reacher2d robots rendering 64×64 overhead "
        f"frames in {g['workers']} worker processes; SAC + cnn_gaussian, UTD {g['utd']}, "
        f"batch {g['batch']}, {g['warmup']:,} random steps first): {g['env_steps']:,} env "
        f"steps, {g['updates']:,} updates in {g['wall_s']:.0f} s ({g['env_steps_per_s']:.0f} "
        f"env steps/s, {g['updates_per_s']:.1f} updates/s while updating){bounded}: success "
        f"over the last 50 episodes **{100 * g['success_last_50']:.0f} %** (target 80 % "
        f"within 100,000 env steps; curve: {curve or 'none'})"]
    section = "pixels-reach-gpu" if args.gpu else "pixels-reach-fleet"
    if learned is not None:
        title = ("## Pixels: reach with the learned classifier as the only reward "
                 "(`userctl bench pixels --parts classifier`)")
        lines[0] = title
        lines[2] = lines[2].replace("**Pixel reach**", "**Pixel reach, reward = learned "
                                    "classifier only**")
        lines.insert(2, (
            f"- **Learned reward**: success classifier (pipeline.rewards.classifier) "
            f"trained on {learned['frames']:,} overhead frames ({learned['positives']:,} "
            f"within 5 cm of the goal; half the episodes scripted reach, half random), "
            f"rendered and trained in {learned['train_s']:.0f} s: held-out episodes "
            f"({learned['heldout_frames']:,} frames) precision "
            f"**{learned['precision']:.2f}**, recall **{learned['recall']:.2f}**; during "
            f"the run it said success with precision {g['reward_precision']:.2f} and recall "
            f"{g['reward_recall']:.2f} against the 5 cm rule."))
        section = "pixels-reach-classifier" + ("-gpu" if args.gpu else "")
    _write(args, lines, section)
    return 0


def _write(args: argparse.Namespace, lines: list[str], section: str) -> None:
    body = "\n".join([*lines, "", *report.machine_lines()])
    print(body)
    if not args.no_write:
        report.write_section(section, body, args.out)
