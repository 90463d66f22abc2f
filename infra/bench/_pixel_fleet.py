"""Pixel reach with many robots at once: the GPU run of ``userctl bench pixels --parts reach``.

``envs`` reacher2d robots live in ``workers`` child processes, each rendering
its ``overhead`` camera with MuJoCo (``MUJOCO_GL``, EGL on a GPU machine).  The learner's
process holds SAC + ``cnn_gaussian`` on ``device`` with the replay's frames there too
(:attr:`learners.replay.ReplayConfig.image_device`), picks every robot's action in one
batched forward pass, and runs its updates while the workers step — so wall clock is
about max(stepping, updating), not their sum.

Steps cross the process boundary through one shared-memory block of fixed numpy views
(no pickling): the parent writes actions, a worker writes each robot's next observation,
frame, goal distance and episode end (and, at an end, the reset observation and frame).
A worker that cannot render fails the run within ``start_timeout_s`` with its error.

The policy sees the frame and the joint state but not the goal (``state``): the goal is
only in the image.  Success is reacher2d's rule (end effector within 5 cm of the goal at
any step of the episode), over the last 50 episodes.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory
from typing import Any

import numpy as np

OBS, ACT = 12, 2  # reacher2d's state and action sizes
SUCCESS_RADIUS = 0.05


@dataclass(frozen=True)
class _Layout:
    """Offsets of the per-robot arrays in the shared block."""

    envs: int
    size: tuple[int, int]

    def fields(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        h, w = self.size
        n = self.envs
        f32, u8 = np.dtype(np.float32), np.dtype(np.uint8)
        return {"action": ((n, ACT), f32), "next_obs": ((n, OBS), f32),
                "next_frame": ((n, h, w, 3), u8), "distance": ((n,), f32),
                "terminated": ((n,), u8), "truncated": ((n,), u8),
                "reset_obs": ((n, OBS), f32), "reset_frame": ((n, h, w, 3), u8)}

    def nbytes(self) -> int:
        return sum(math.prod(s) * d.itemsize for s, d in self.fields().values())

    def views(self, buf: Any) -> dict[str, np.ndarray]:
        out, offset = {}, 0
        for name, (shape, dtype) in self.fields().items():
            out[name] = np.ndarray(shape, dtype, buffer=buf, offset=offset)
            offset += math.prod(shape) * dtype.itemsize
        return out


def _worker(robots: list[int], shm_name: str, envs: int, size: tuple[int, int], seed: int,
            answer: Any, orders: Any) -> None:
    """Step ``robots`` (indices into the shared arrays) each time the parent says so."""
    shm = shared_memory.SharedMemory(name=shm_name)
    # Before Python 3.13 attaching registers the block with this process's resource
    # tracker, which would unlink it when the worker exits: the parent owns it.
    resource_tracker.unregister(shm._name, "shared_memory")  # type: ignore[attr-defined]
    v: dict[str, np.ndarray] = {}
    try:
        v = _Layout(envs, size).views(shm.buf)
        from agents import registry

        # No start-up probe: robots step flat out here, not at their control rate.
        made = [registry.make_robot("reacher2d", task="reach", validate=False,
                                    seed=seed + i, cameras=("overhead",), camera_size=size)
                for i in robots]

        def put_reset(i: int, robot: Any) -> None:
            first = robot.reset()
            v["reset_obs"][i] = first.observation
            v["reset_frame"][i] = first.images["overhead"]

        for i, robot in zip(robots, made, strict=True):
            put_reset(i, robot)
        answer.write(b"ready\n")
        while orders.readline() == b"step\n":
            for i, robot in zip(robots, made, strict=True):
                nxt = robot.step(v["action"][i])
                v["next_obs"][i] = nxt.observation
                v["next_frame"][i] = nxt.images["overhead"]
                v["distance"][i] = float(np.linalg.norm(np.asarray(nxt.info["goal_pos"])
                                                        - np.asarray(nxt.info["ee_pos"])))
                v["terminated"][i], v["truncated"][i] = nxt.terminated, nxt.truncated
                if nxt.terminated or nxt.truncated:
                    put_reset(i, robot)
            answer.write(b"done\n")
    except BaseException as exc:  # the parent reports it; a worker never dies silently
        text = f"error {type(exc).__name__}: {exc} | {traceback.format_exc()}"
        answer.write(text.replace("\n", " | ").encode() + b"\n")
    finally:
        v.clear()  # drop the views before closing the block they point into
        shm.close()


def worker_main(argv: list[str]) -> None:
    """Entry of a robot worker process: ``ROBOTS SHM ENVS H W SEED`` (robots comma-
    separated).  Orders come on stdin, answers go on the original stdout, which is then
    pointed at stderr so nothing else a library prints can garble the protocol."""
    robots, shm_name, envs, h, w, seed = argv
    answer = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    _worker([int(r) for r in robots.split(",")], shm_name, int(envs), (int(h), int(w)),
            int(seed), answer, sys.stdin.buffer)


class RenderFailed(RuntimeError):
    """A worker could not build or render its robots (no EGL, blank frames)."""


def run(*, envs: int, workers: int, device: str, env_steps: int, seconds: float,
        utd: float, batch_size: int, warmup: int, size: tuple[int, int],
        state: list[int], seed: int = 0, start_timeout_s: float = 120.0,
        progress: Any = print,
        reward: Callable[[np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Pixel reach until ``env_steps`` or ``seconds`` of wall clock, whichever first.

    ``reward`` maps the robots' next frames (n, h, w, 3) to their steps' rewards — a
    learned reward, the only signal the learner gets then (the result adds how often it
    agreed with the success rule: ``reward_precision``/``reward_recall``); without it
    the reward is minus the goal distance."""
    import torch

    from learners import policies, sac
    from learners.core import StepBatch
    from learners.replay import NumpyReplayBuffer, ReplayConfig

    started = time.perf_counter()
    # torch.optim before any renderer: its first use imports triton (this process renders
    # nothing, but keep the order the one-process benchmark needs).
    spec = policies.PolicySpec(OBS, ACT, (-1.0,) * ACT, (1.0,) * ACT)
    options: dict[str, Any] = {"cameras": ["overhead"], "image_size": list(size),
                               "state_indices": state}
    algo = sac.SAC(spec, sac.SACConfig(hidden_sizes=(256, 256), seed=seed), "cnn_gaussian",
                   options, device=device)
    frame_bytes = size[0] * size[1] * 3
    budget = int((env_steps * 1.05 + 4 * envs) * (frame_bytes + 128))
    buffer = NumpyReplayBuffer(ReplayConfig(
        (OBS,), (ACT,), memory_budget_bytes=budget, seed=seed,
        image_shapes={"overhead": (*size, 3)},
        image_device=None if device == "cpu" else device))
    layout = _Layout(envs, size)
    shm = shared_memory.SharedMemory(create=True, size=layout.nbytes())
    v = layout.views(shm.buf)
    workers = max(1, min(workers, envs))
    groups = [list(range(envs))[w::workers] for w in range(workers)]
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        for robots in groups:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", "import sys; from infra.bench import _pixel_fleet; "
                 "_pixel_fleet.worker_main(sys.argv[1:])", ",".join(map(str, robots)),
                 shm.name, str(envs), str(size[0]), str(size[1]), str(seed)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env))
        _collect(procs, b"ready", start_timeout_s, "start and render")
        if float(v["reset_frame"].std()) == 0.0:
            raise RenderFailed("every camera frame is blank (one colour): the renderer "
                               "draws nothing (MUJOCO_GL / EGL driver)")
        ready_s = time.perf_counter() - started
        progress(f"{envs} robots in {workers} workers rendering after {ready_s:.1f} s")

        obs = v["reset_obs"].copy()
        frame = v["reset_frame"].copy()
        episode = np.arange(envs, dtype=np.int64)
        next_episode = envs
        t = np.zeros(envs, dtype=np.int64)
        succeeded = np.zeros(envs, dtype=bool)
        recent: deque[bool] = deque(maxlen=50)
        rng = np.random.default_rng(seed)
        generator = torch.Generator(device=device).manual_seed(seed + 1)
        robot_ids = np.array([f"r{i}" for i in range(envs)])
        steps = updates = episodes = 0
        update_s = wait_s = 0.0
        said = agreed = truth = 0  # the learned reward against the success rule
        curve: list[dict[str, float]] = []
        next_mark = 5_000
        loop_started = time.perf_counter()
        while steps < env_steps and time.perf_counter() - started < seconds:
            if steps < warmup:
                action = rng.uniform(-1, 1, (envs, ACT)).astype(np.float32)
            else:
                with torch.no_grad():
                    features = algo.encoder(
                        torch.from_numpy(obs).to(device),
                        {"overhead": torch.from_numpy(frame).to(device)})
                    act, _ = algo.actor.sample(features, generator)
                action = act.cpu().numpy()
            v["action"][:] = action
            for p in procs:
                _order(p, b"step")
            t0 = time.perf_counter()
            if steps >= warmup:  # learn while the robots move
                while updates < utd * (steps - warmup) and len(buffer):
                    algo.update(buffer.sample(batch_size))
                    updates += 1
            t1 = time.perf_counter()
            _collect(procs, b"done", 60.0, "step")
            wait_s += time.perf_counter() - t1
            update_s += t1 - t0
            distance = v["distance"].copy()
            terminated = v["terminated"].astype(bool)
            truncated = v["truncated"].astype(bool) & ~terminated
            next_obs, next_frame = v["next_obs"].copy(), v["next_frame"].copy()
            if reward is None:
                r = -distance
            else:
                r = np.asarray(reward(next_frame), np.float32)
                reached = distance < SUCCESS_RADIUS
                said += int((r > 0).sum())
                agreed += int(((r > 0) & reached).sum())
                truth += int(reached.sum())
            buffer.add(StepBatch(
                robot_id=robot_ids, episode_id=episode.astype(str), step=t.copy(),
                observation=obs, action=action, reward=r, terminated=terminated,
                policy_version=np.zeros(envs, np.int64), truncated=truncated,
                next_observation=next_obs, images={"overhead": frame},
                next_images={"overhead": next_frame}))
            steps += envs
            succeeded |= distance < SUCCESS_RADIUS
            done = terminated | truncated
            t += 1
            obs, frame = next_obs, next_frame
            for i in np.flatnonzero(done):
                recent.append(bool(succeeded[i]))
                episodes += 1
                succeeded[i] = False
                t[i] = 0
                episode[i] = next_episode
                next_episode += 1
            if done.any():
                obs[done] = v["reset_obs"][done]
                frame[done] = v["reset_frame"][done]
            if steps >= next_mark:
                next_mark += 5_000
                point = {"env_steps": steps, "updates": updates,
                         "success": sum(recent) / max(len(recent), 1),
                         "wall_s": round(time.perf_counter() - started, 1)}
                curve.append(point)
                progress(f"{steps:,} env steps, {updates:,} updates, success "
                         f"{100 * point['success']:.0f} % (last {len(recent)} episodes), "
                         f"{point['wall_s']:.0f} s")
        wall = time.perf_counter() - started
        loop_s = time.perf_counter() - loop_started
        return {"env_steps": steps, "updates": updates, "episodes": episodes,
                "wall_s": wall, "loop_s": loop_s, "ready_s": ready_s,
                "success_last_50": sum(recent) / len(recent) if recent else 0.0,
                "updates_per_s": updates / max(update_s, 1e-9),
                "env_steps_per_s": steps / loop_s, "update_s": update_s,
                "waiting_for_robots_s": wait_s, "curve": curve, "envs": envs,
                "workers": workers, "utd": utd, "batch": batch_size, "warmup": warmup,
                "device": device, "reached_target_steps": steps >= env_steps,
                **({} if reward is None else {
                    "reward_precision": agreed / max(said, 1),
                    "reward_recall": agreed / max(truth, 1)})}
    finally:
        for p in procs:
            with contextlib.suppress(OSError):
                _order(p, b"stop")
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        del v
        shm.close()
        shm.unlink()


def _order(proc: subprocess.Popen[bytes], order: bytes) -> None:
    assert proc.stdin is not None
    proc.stdin.write(order + b"\n")
    proc.stdin.flush()


def _collect(procs: list[subprocess.Popen[bytes]], expected: bytes, timeout_s: float,
             what: str) -> None:
    """Wait for every worker's ``expected`` answer; a worker's error or silence raises."""
    deadline = time.monotonic() + timeout_s
    gl = os.environ.get("MUJOCO_GL", "")
    for p in procs:
        assert p.stdout is not None
        ready, _, _ = select.select([p.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise RenderFailed(f"a robot worker did not {what} within {timeout_s:.0f} s "
                               f"(MUJOCO_GL={gl!r})")
        answer = p.stdout.readline().rstrip(b"\n")
        if answer != expected:
            said = answer.decode(errors="replace")[:3000] or (
                f"exited ({p.poll()}) without a word; see its stderr above")
            raise RenderFailed(f"a robot worker failed to {what} (MUJOCO_GL={gl!r}): {said}")
