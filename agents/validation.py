"""Start-up probe: does the robot deliver what its spec announces, at its control rate?

This is the simulated counterpart of probing real hardware before announcing it: the
robot resets, steps a few periods with the action at the middle of its bounds (zero
joint velocity for the arms: it holds still) and holds once; every observation, info
array and camera image must have the announced shape and dtype and be finite, and a
step must fit in its control period. A failure raises ``RobotError`` with one line that
says what is wrong and what to do.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping

import numpy as np
import numpy.typing as npt

from agents import robot as robot_mod
from schemas import spaces

__all__ = ["ProbeReport", "validate"]


@dataclasses.dataclass(frozen=True)
class ProbeReport:
    """What the probe measured."""

    #: Median wall time of one ``step`` (physics, state read-out and cameras), seconds.
    step_s: float
    #: The fastest control rate the measured step time allows, Hz.
    max_hz: float


def validate(
    robot: robot_mod.Robot,
    *,
    expected: spaces.RobotSpec | None = None,
    probe_steps: int = 5,
    time_budget: float = 0.8,
) -> ProbeReport:
    """Probe ``robot`` (module docstring) and return its timings.

    ``expected`` is the spec the robot was announced with before (a restarted agent, a
    config file): the robot's spec must equal it. A step must take at most
    ``time_budget`` of the control period, leaving the rest for policy inference and
    publishing. Leaves the robot mid-episode: call ``reset`` before use. Raises
    ``RobotError``.
    """
    spec = robot.spec
    name = spec.robot_type

    def fail(what: str) -> robot_mod.RobotError:
        return robot_mod.RobotError(f"robot {name!r} failed its start-up probe: {what}")

    if expected is not None and expected != spec:
        diff = _first_difference(expected, spec)
        raise fail(f"spec differs from the announced one ({diff}); re-announce or fix the driver")

    try:
        first = robot.reset(seed=0)
    except robot_mod.RobotError as exc:
        raise fail(f"reset failed: {exc}") from exc
    _check_step(spec, first, "reset", fail)

    action = _mid_action(spec.action)
    times: list[float] = []
    for i in range(probe_steps):
        t = time.perf_counter()
        step = robot.step(action)
        times.append(time.perf_counter() - t)
        _check_step(spec, step, f"step {i + 1}", fail)
        if step.done:
            break
    _check_step(spec, robot.hold(), "hold", fail)

    step_s = statistics.median(times) if times else 0.0
    period = 1.0 / spec.control_hz
    if step_s > time_budget * period:
        raise fail(
            f"a step takes {step_s * 1e3:.1f} ms but {spec.control_hz:g} Hz allows "
            f"{time_budget * period * 1e3:.1f} ms ({time_budget:.0%} of the period); "
            "lower control_hz, drop cameras or shrink them"
        )
    return ProbeReport(step_s=step_s, max_hz=(1.0 / step_s) if step_s > 0 else float("inf"))


def _check_step(
    spec: spaces.RobotSpec,
    step: robot_mod.Step,
    when: str,
    fail: Callable[[str], robot_mod.RobotError],
) -> None:
    problems = _problems(spec, step)
    if problems:
        raise fail(f"after {when}: {problems[0]}")


def _problems(spec: spaces.RobotSpec, step: robot_mod.Step) -> list[str]:
    out: list[str] = []
    out += _array_problems("observation", spec.observation, step.observation)
    _keys_problem(out, "info", set(spec.info), step.info)
    for key, aspec in spec.info.items():
        if key in step.info:
            out += _array_problems(f"info[{key!r}]", aspec, step.info[key])
    cams = {c.name: c for c in spec.cameras}
    _keys_problem(out, "images", set(cams), step.images)
    for cname, cam in cams.items():
        img = step.images.get(cname)
        if img is not None and (img.shape != cam.shape or img.dtype != np.uint8):
            out.append(
                f"camera {cname!r} gave {img.dtype} {img.shape} but the spec announces "
                f"uint8 {cam.shape}"
            )
    return out


def _keys_problem(out: list[str], what: str, want: set[str], got: Mapping[str, object]) -> None:
    if set(got) != want:
        out.append(f"{what} has keys {sorted(got)} but the spec announces {sorted(want)}")


def _array_problems(
    what: str, aspec: spaces.ArraySpec, value: npt.NDArray[np.generic]
) -> list[str]:
    arr = np.asarray(value)
    if arr.shape != tuple(aspec.shape):
        return [f"{what} has shape {arr.shape} but the spec announces {tuple(aspec.shape)}"]
    if arr.dtype != np.dtype(aspec.dtype):
        return [f"{what} has dtype {arr.dtype} but the spec announces {aspec.dtype}"]
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        return [f"{what} has non-finite values"]
    return []


def _mid_action(aspec: spaces.ArraySpec) -> npt.NDArray[np.float32]:
    low = np.broadcast_to(np.asarray(-1.0 if aspec.low is None else aspec.low), aspec.shape)
    high = np.broadcast_to(np.asarray(1.0 if aspec.high is None else aspec.high), aspec.shape)
    mid: npt.NDArray[np.float32] = ((low + high) / 2).astype(np.float32)
    return mid


def _first_difference(a: spaces.RobotSpec, b: spaces.RobotSpec) -> str:
    da, db = a.model_dump(), b.model_dump()
    for key in da:
        if da[key] != db[key]:
            return f"{key}: announced {da[key]!r}, robot has {db[key]!r}"
    return "unknown field"
