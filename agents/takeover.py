"""Takeover devices: a person (or the scripted operator standing in for one) overrides the
policy, then hands control back — the interface beside the robot's (``agents.robot``).

A device sees each step's observation and the policy's proposal and answers with the
operator's action while it holds control, else ``None``.  Start and stop of a takeover are
the changes between the two; :attr:`TakeoverDevice.reason` says why the current takeover
started (for the log and the episode summary).  The worker records the executed action,
the policy's proposal and the ``intervention`` flag of every step
(``agents.worker``)::

    device = takeover.make(spec, robot)                  # schemas.experiment.TakeoverSpec
    device.reset()                                       # a new episode: the policy drives
    while not step.done:
        proposal = policy(step.observation)
        human = device(step.observation, proposal)       # None: the policy keeps control
        step = robot.step(proposal if human is None else human)
    device.close()

Implementations:

* :class:`ScriptedOperator` — watches the robot with a scripted expert
  (``agents.sim.experts``), takes over when the robot is failing (the task got worse or
  stalled — the progress rule; or, the older gated-expert rule, when the proposal strays
  from the expert's action for a few steps), drives like the expert, and hands back once
  the policy agrees again: the simulated human of every test and benchmark.
* :class:`KeyboardTeleop` — a terminal: ``t`` toggles the takeover, ``w/s a/d r/f`` move
  in x/y/z, ``space`` toggles the gripper (stdlib ``termios``/``select``, no display).
* :class:`EvdevTeleop` — a gamepad or a 3-D mouse through Linux ``evdev`` (the ``evdev``
  package): the device's first three axes move x/y/z, its first button toggles the
  takeover, its second toggles the gripper.
"""

from __future__ import annotations

import abc
import logging
import os
import select
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt

from schemas.experiment import TakeoverSpec

__all__ = ["EvdevTeleop", "KeyboardTeleop", "ScriptedOperator", "TakeoverDevice", "make"]

log = logging.getLogger(__name__)

Action = npt.NDArray[np.float32]
Expert = Callable[[npt.NDArray[np.floating]], npt.NDArray[np.float32]]


class TakeoverDevice(abc.ABC):
    """One operator's override of one robot's policy (module docstring for the loop).

    Not thread-safe: the agent's control loop owns a device, as it owns the robot.
    """

    #: Why the current (or last) takeover started, one line for a person.
    reason: str = ""

    @abc.abstractmethod
    def __call__(self, observation: npt.NDArray[np.floating],
                 proposal: npt.NDArray[np.float32]) -> Action | None:
        """The operator's action for this step while they hold control, else ``None``."""

    def reset(self) -> None:  # noqa: B027 - optional hook
        """A new episode starts: control goes back to the policy."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device (terminal mode, file handles). Idempotent."""


# ---------------------------------------------------------------------------- scripted


class ScriptedOperator(TakeoverDevice):
    """The simulated human: a scripted expert watching the policy.

    When it takes over depends on ``rule``:

    * ``"progress"`` — like a person watching the scene, it judges the *state*, not how the
      policy moves: it takes over when the robot is failing — it has made the task worse
      (the expert's :meth:`remaining` distance, metres still to go, rose more than
      ``regress_m`` above the best reached, ``patience`` steps in a row) or has stalled
      (no ``progress_m`` of progress for ``stall_steps`` steps).  A policy that gets
      there its own way — slower, faster, starting a phase a step late — is left alone,
      and so is a task already done (``remaining == 0``).  Needs an expert with a
      ``remaining(observation) -> float`` method (``agents.sim.experts``).
    * ``"action"`` — it takes over after the policy's proposal differs from the expert's
      action by more than ``threshold`` (L2 over the position part, in action units) for
      ``patience`` steps in a row.  A gated expert, not a person: on a task whose expert
      switches phases it also takes over policies that would have succeeded.
    * ``"auto"`` (what a :class:`~schemas.experiment.TakeoverSpec` asks for by default) —
      ``progress`` where the expert measures progress, else ``action``.

    Once in control it drives with the expert's action for at least ``min_steps`` and
    hands back once the proposal has agreed with the expert (distance at most
    ``threshold``) for ``agree_steps`` steps in a row, or, under the progress rule, once
    the task is done; the progress rule then judges afresh from the state handed back.
    ``threshold <= 0`` means it never hands control to the policy (recording demos).
    Deterministic: no randomness of its own.
    """

    def __init__(self, expert: Expert, *, threshold: float = 0.5, patience: int = 2,
                 min_steps: int = 10, agree_steps: int = 3, rule: str = "action",
                 stall_steps: int = 25, progress_m: float = 0.01, regress_m: float = 0.1
                 ) -> None:
        self.expert = expert
        measure = getattr(expert, "remaining", None)
        if rule == "auto":
            rule = "action" if measure is None else "progress"
        if rule not in ("action", "progress"):
            raise ValueError(f"takeover rule {rule!r}: use auto, progress or action")
        if rule == "progress" and measure is None:
            raise RuntimeError("takeover rule 'progress' needs an expert that measures "
                               "progress (remaining(); the manipulators' reach, push and "
                               "pick_place experts); use rule 'action' or 'auto'")
        self.rule = rule
        self._remaining: Callable[[npt.NDArray[np.floating]], float] | None = (
            measure if rule == "progress" else None)
        self.threshold = threshold
        self.patience = max(1, patience)
        self.min_steps = max(0, min_steps)
        self.agree_steps = max(1, agree_steps)
        self.stall_steps = max(1, stall_steps)
        self.progress_m = progress_m
        self.regress_m = regress_m
        self.active = False
        self._strayed = 0
        self._held = 0
        self._agreed = 0
        self._best = float("inf")
        self._since = 0
        self.takeovers = 0

    def reset(self) -> None:
        self.active = False
        self._strayed = self._held = self._agreed = self._since = 0
        self._best = float("inf")

    def distance(self, expert_action: Action, proposal: npt.NDArray[np.float32]) -> float:
        """How far the proposal is from the expert's action (position part, action units,
        the gripper counted at half weight: an open/close disagreement is one unit)."""
        diff = np.asarray(proposal, np.float64) - np.asarray(expert_action, np.float64)
        if diff.size > 1:
            diff[-1] *= 0.5
        return float(np.linalg.norm(diff))

    def _failing(self, observation: npt.NDArray[np.floating], far: float) -> str:
        """Why the policy should be taken over now ("" while it may go on)."""
        if self._remaining is None:
            if far <= self.threshold:
                self._strayed = 0
                return ""
            self._strayed += 1
            return (f"policy strayed from the expert for {self._strayed} steps "
                    f"(distance {far:.2f} > {self.threshold:.2f})"
                    if self._strayed >= self.patience else "")
        left = float(self._remaining(observation))
        if left <= 0.0:  # done: nothing to correct
            self._best, self._since, self._strayed = 0.0, 0, 0
            return ""
        if left < self._best - self.progress_m or self._best == float("inf"):
            self._best, self._since = left, 0
        else:
            self._since += 1
        self._strayed = self._strayed + 1 if left > self._best + self.regress_m else 0
        if self._strayed >= self.patience:
            return (f"the robot made the task worse: {left:.3f} m to go, "
                    f"{self._best:.3f} m at best")
        if self._since >= self.stall_steps:
            return f"no progress for {self._since} steps ({left:.3f} m to go)"
        return ""

    def __call__(self, observation: npt.NDArray[np.floating],
                 proposal: npt.NDArray[np.float32]) -> Action | None:
        expert_action = np.asarray(self.expert(observation), np.float32)
        if self.threshold <= 0:
            if not self.active:
                self.active, self.reason = True, "operator drives (demonstration)"
                self.takeovers += 1
            return expert_action
        far = self.distance(expert_action, proposal)
        if not self.active:
            why = self._failing(observation, far)
            if not why:
                return None
            self.active, self._held, self._agreed = True, 0, 0
            self.takeovers += 1
            self.reason = why
            log.debug("takeover: %s", why)
        self._held += 1
        self._agreed = 0 if far > self.threshold else self._agreed + 1
        done = self._remaining is not None and self._remaining(observation) <= 0.0
        if self._held > self.min_steps and (self._agreed >= self.agree_steps or done):
            # Hand back: the policy's proposal is executed this step, judged afresh.
            self.active, self._strayed, self._since = False, 0, 0
            self._best = float("inf")
            return None
        return expert_action


# ---------------------------------------------------------------------------- keyboard


#: Key -> (axis, sign) of the position part.
_KEYS = {"w": (0, 1.0), "s": (0, -1.0), "a": (1, 1.0), "d": (1, -1.0), "r": (2, 1.0),
         "f": (2, -1.0)}


class KeyboardTeleop(TakeoverDevice):
    """Teleoperation from a terminal, without a display (stdlib only).

    Reads whatever keys arrived since the last step without blocking: ``t`` starts or
    stops the takeover; each of ``w/s a/d r/f`` moves the end effector one step in
    +x/-x, +y/-y, +z/-z (no key: hold still); ``space`` toggles the gripper (open
    at start).  ``speed`` scales the position action.  ``stream`` defaults to the
    controlling terminal's stdin, put in cbreak mode until :meth:`close`.
    """

    def __init__(self, action_size: int, *, speed: float = 0.6,
                 stream: TextIO | int | None = None) -> None:
        self.action_size = action_size
        self.speed = speed
        self._fd = stream if isinstance(stream, int) else (stream or sys.stdin).fileno()
        self._saved: list[Any] | None = None
        if os.isatty(self._fd):
            import termios
            import tty

            self._saved = termios.tcgetattr(self._fd)
            tty.setcbreak(self._fd)
        self.active = False
        self.gripper = -1.0

    def _keys(self) -> str:
        got = []
        while select.select([self._fd], [], [], 0)[0]:
            chunk = os.read(self._fd, 64)
            if not chunk:
                break
            got.append(chunk.decode("utf-8", "ignore"))
        return "".join(got)

    def __call__(self, observation: npt.NDArray[np.floating],
                 proposal: npt.NDArray[np.float32]) -> Action | None:
        action = np.zeros(self.action_size, np.float32)
        for key in self._keys().lower():
            if key == "t":
                self.active = not self.active
                if self.active:
                    self.reason = "operator pressed t (keyboard)"
            elif key == " ":
                self.gripper = -self.gripper
            elif key in _KEYS:
                axis, sign = _KEYS[key]
                action[axis] = np.clip(action[axis] + sign * self.speed, -1, 1)
        if not self.active:
            return None
        action[-1] = self.gripper
        return action

    def reset(self) -> None:
        self._keys()  # keys pressed before the episode started do not carry over
        self.active, self.gripper = False, -1.0

    def close(self) -> None:
        if self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None


# ---------------------------------------------------------------------------- gamepad / 3-D mouse


@dataclass(frozen=True)
class _Axis:
    code: int
    centre: float
    half_range: float


class EvdevTeleop(TakeoverDevice):
    """A gamepad or a 3-D mouse (a SpaceMouse shows up as a six-axis evdev device).

    ``device`` is an ``evdev.InputDevice`` (or anything with its ``read()`` and
    ``capabilities()``); :meth:`open` finds one under ``/dev/input``.  The first three
    absolute (or, for a 3-D mouse, relative) axes drive x/y/z, deflections under
    ``deadzone`` are ignored; the first button toggles the takeover, the second the
    gripper.
    """

    def __init__(self, device: Any, action_size: int, *, deadzone: float = 0.1,
                 rel_scale: float = 350.0) -> None:
        from evdev import ecodes

        self._ec = ecodes
        self.device = device
        self.action_size = action_size
        self.deadzone = deadzone
        self.rel_scale = rel_scale
        caps = device.capabilities(absinfo=True)
        self._abs: list[_Axis] = []
        for code, info in caps.get(ecodes.EV_ABS, [])[:3]:
            lo, hi = float(info.min), float(info.max)
            self._abs.append(_Axis(int(code), (lo + hi) / 2, max((hi - lo) / 2, 1.0)))
        self._rel = [int(c) for c in caps.get(ecodes.EV_REL, [])[:3]]
        self._buttons = [int(c) for c in caps.get(ecodes.EV_KEY, [])[:2]]
        self._value = np.zeros(3, np.float64)
        self.active = False
        self.gripper = -1.0

    @classmethod
    def open(cls, action_size: int, path: str | None = None) -> EvdevTeleop:
        """The device at ``path``, or the first gamepad / 3-D mouse found.  Raises
        ``RuntimeError`` saying what to do when there is none."""
        import evdev

        paths = [path] if path else evdev.list_devices()
        for p in paths:
            dev = evdev.InputDevice(p)
            caps = dev.capabilities()
            if evdev.ecodes.EV_KEY in caps and (evdev.ecodes.EV_ABS in caps
                                                or evdev.ecodes.EV_REL in caps):
                log.info("takeover device: %s (%s)", dev.name, p)
                return cls(dev, action_size)
        raise RuntimeError("no gamepad or 3-D mouse under /dev/input (is one plugged in, "
                           "and may this user read /dev/input/event*?); use "
                           "takeover kind 'keyboard' or 'scripted' instead")

    def _events(self) -> Iterable[Any]:
        try:
            return list(self.device.read())
        except BlockingIOError:  # nothing new since the last step
            return []

    def __call__(self, observation: npt.NDArray[np.floating],
                 proposal: npt.NDArray[np.float32]) -> Action | None:
        ec = self._ec
        rel = np.zeros(3, np.float64)
        for event in self._events():
            if event.type == ec.EV_ABS:
                for i, axis in enumerate(self._abs):
                    if event.code == axis.code:
                        self._value[i] = (event.value - axis.centre) / axis.half_range
            elif event.type == ec.EV_REL and event.code in self._rel:
                rel[self._rel.index(event.code)] += event.value / self.rel_scale
            elif event.type == ec.EV_KEY and event.value == 1 and event.code in self._buttons:
                if self._buttons.index(event.code) == 0:
                    self.active = not self.active
                    if self.active:
                        self.reason = "operator pressed the takeover button"
                else:
                    self.gripper = -self.gripper
        if not self.active:
            return None
        move = self._value + rel if self._rel else self._value
        move = np.where(np.abs(move) < self.deadzone, 0.0, np.clip(move, -1, 1))
        action = np.zeros(self.action_size, np.float32)
        action[:3] = move
        action[-1] = self.gripper
        return action

    def reset(self) -> None:
        self.active = False

    def close(self) -> None:
        close = getattr(self.device, "close", None)
        if close is not None:
            close()


# ---------------------------------------------------------------------------- factory


def make(spec: TakeoverSpec, *, action_size: int, expert: Expert | None = None
         ) -> TakeoverDevice | None:
    """The device ``spec`` asks for (``None`` for kind ``none``).

    ``expert`` is the robot's scripted expert, required by kind ``scripted``.  Raises
    ``RuntimeError`` with one actionable line when the device cannot be had.
    """
    if spec.kind == "none":
        return None
    if spec.kind == "scripted":
        if expert is None:
            raise RuntimeError("takeover kind 'scripted' needs a robot with a scripted "
                               "expert (a manipulator on reach/push/pick_place)")
        return ScriptedOperator(expert, threshold=spec.threshold, patience=spec.patience,
                                min_steps=spec.min_steps, agree_steps=spec.agree_steps,
                                rule=spec.rule, stall_steps=spec.stall_steps,
                                progress_m=spec.progress_m, regress_m=spec.regress_m)
    if spec.kind == "keyboard":
        return KeyboardTeleop(action_size, speed=spec.speed)
    return EvdevTeleop.open(action_size, spec.device)
