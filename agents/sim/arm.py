"""A MuJoCo arm with a reach task — the engine behind every simulated arm type.

A type is an ``ArmConfig`` (its MJCF file, joints, home pose, goal distribution, episode
length) plus one line of registration; see ``agents/sim/reacher2d.py``.

Control: an action in [-1, 1]^n is a joint-velocity command as a fraction of
``max_joint_speed``. The arm integrates it into position-servo targets over the control
period, clamps the targets to the joint ranges (the soft limits) and to a window around
the measured position (no wind-up when blocked), and steps the physics for one period.

Observation (float32), with k = ``task_dims`` (2 for a planar arm, 3 in space)::

    [cos q (n), sin q (n), qdot / max_joint_speed (n), ee (k), goal (k), goal - ee (k)]

``info``: ``ee_pos`` and ``goal_pos``, float32 (3,), world frame, metres. A reach
succeeds when ``|goal_pos - ee_pos| < success_radius``; reward jobs decide what to do
with that — the episode never terminates early, it is truncated after
``max_episode_steps``.

Instability: MuJoCo answers a NaN, inf or huge ``qpos``/``qvel``/``qacc`` with a warning
(``mjWARN_BADQPOS``/``BADQVEL``/``BADQACC``) and a silent reset of the whole state to the
model's reference pose, in the middle of the episode.  The arm checks the warnings (and
the state's finiteness) after every control period: a broken period ends the episode,
truncated, with ``Step.unstable`` saying why and the last valid state as the step's
observation — never a teleport to the reference pose inside an episode.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
from collections.abc import Callable, Sequence

import mujoco
import numpy as np
import numpy.typing as npt
import pydantic

from agents import robot as robot_mod
from schemas import spaces

__all__ = ["ArmConfig", "JacobianReach", "MujocoArm", "load_model", "step_checked"]

Vec = npt.NDArray[np.float64]
_INFO_KEYS = ("ee_pos", "goal_pos")
#: MuJoCo warnings that mean the simulation went unstable (MuJoCo resets the state on them).
_UNSTABLE = {
    mujoco.mjtWarning.mjWARN_BADQPOS: "qpos",
    mujoco.mjtWarning.mjWARN_BADQVEL: "qvel",
    mujoco.mjtWarning.mjWARN_BADQACC: "qacc",
}

log = logging.getLogger(__name__)


def _mujoco_warning(message: str) -> None:
    # MuJoCo's default handler prints and appends to MUJOCO_LOG.TXT in the working
    # directory; the arm reads the warning counters itself and the worker logs the episode
    # end, so the text only goes to the debug log.
    log.debug("MuJoCo: %s", message)


if mujoco.get_mju_user_warning() is None:
    mujoco.set_mju_user_warning(_mujoco_warning)


def step_checked(m: mujoco.MjModel, d: mujoco.MjData, nstep: int) -> str:
    """``mj_step`` ``nstep`` times; why the simulation broke meanwhile ('' if it did not).

    MuJoCo answers an unstable state with a warning and a silent reset to the reference
    pose; this reads the warnings (and the state's finiteness) so that a robot can end its
    episode instead (``Step.unstable``).  Every MuJoCo robot steps its physics through it.
    """
    for warning in _UNSTABLE:
        d.warning[int(warning)].number = 0
    mujoco.mj_step(m, d, nstep=nstep)
    bad = [name for warning, name in _UNSTABLE.items() if d.warning[int(warning)].number]
    if bad:
        return f"MuJoCo found NaN, inf or huge values in {'/'.join(bad)} (simulation unstable)"
    if not (np.all(np.isfinite(d.qpos)) and np.all(np.isfinite(d.qvel))):
        return "non-finite qpos/qvel (simulation unstable)"
    return ""


@dataclasses.dataclass(frozen=True)
class ArmConfig:
    """One simulated arm type."""

    #: Registered type name.
    robot_type: str
    #: MJCF file under ``agents/models``.
    model_file: str
    #: Actuated hinge joints, in action order; each has a position actuator of the same name.
    joints: tuple[str, ...]
    #: Joint positions the episode starts around (rad).
    home: tuple[float, ...]
    #: Start = home + uniform(-start_noise, start_noise) per joint (rad).
    start_noise: tuple[float, ...]
    #: Draws a goal position (3,) in the world frame.
    sample_goal: Callable[[np.random.Generator], Vec]
    #: Joint speed at |action| = 1 (rad/s).
    max_joint_speed: float
    #: 2: the task lives in the xy plane; 3: in space.
    task_dims: int
    #: Distance to the goal (m) that counts as reached.
    success_radius: float
    max_episode_steps: int
    ee_site: str = "ee"
    goal_body: str = "goal"


def load_model(model_file: str) -> mujoco.MjModel:
    """Compile ``agents/models/<model_file>``; raises ``RobotError`` (one line) if it fails."""
    resource = importlib.resources.files("agents") / "models" / model_file
    try:
        xml = resource.read_text(encoding="utf-8")
    except OSError as exc:
        raise robot_mod.RobotError(
            f"model agents/models/{model_file} is missing ({exc.strerror}); "
            "reinstall the package with its package data"
        ) from exc
    try:
        return mujoco.MjModel.from_xml_string(xml)
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise robot_mod.RobotError(
            f"model agents/models/{model_file} does not compile: {first}"
        ) from exc


#: Announced bound of ``qdot / max_joint_speed``: far beyond what the servo window lets
#: the arm reach, so only broken physics crosses it (consumers then refuse the batch).
_SPEED_RATIO_BOUND = 100.0
#: Announced bound of positions (m): no arm here reaches this far from its base.
_POSITION_BOUND_M = 10.0


def _observation_bounds(n: int, k: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The announced per-element ``(low, high)`` of the observation (module doc)."""
    high = (1.0,) * (2 * n) + (_SPEED_RATIO_BOUND,) * n + (_POSITION_BOUND_M,) * (3 * k)
    return tuple(-h for h in high), high


class MujocoArm(robot_mod.Robot):
    """A simulated arm (module docstring). Options are those ``make_robot`` passes on.

    ``cameras``: names of MJCF cameras to render every step, ``camera_size``: (height,
    width). ``control_hz`` is the wall-clock rate the spec announces; the simulated
    period is the nearest whole number of 2 ms physics steps.
    """

    def __init__(
        self,
        config: ArmConfig,
        *,
        seed: int | None = None,
        control_hz: float = 20.0,
        max_episode_steps: int | None = None,
        cameras: Sequence[str] = (),
        camera_size: tuple[int, int] = (64, 64),
    ) -> None:
        name = config.robot_type
        if not control_hz > 0:
            raise robot_mod.RobotError(f"{name}: control_hz must be positive, not {control_hz}")
        self.config = config
        self.model = load_model(config.model_file)
        self.data = mujoco.MjData(self.model)
        m = self.model
        self._qadr, self._dadr, self._act = _joint_indices(m, config)
        n = len(config.joints)
        if len(config.home) != n or len(config.start_noise) != n:
            raise robot_mod.RobotError(f"{name}: home and start_noise need {n} values each")
        self._site = _require(m, mujoco.mjtObj.mjOBJ_SITE, config.ee_site, name, "site")
        goal_body = _require(m, mujoco.mjtObj.mjOBJ_BODY, config.goal_body, name, "body")
        self._goal_mocap = int(m.body_mocapid[goal_body])
        if self._goal_mocap < 0:
            raise robot_mod.RobotError(f"{name}: body {config.goal_body!r} must be mocap")
        self._lo, self._hi = _target_limits(m, self._qadr, self._act, config.joints)
        self._nsub = max(1, round(1.0 / (control_hz * m.opt.timestep)))
        #: Simulated seconds per control step.
        self.period_s = self._nsub * m.opt.timestep
        self._max_delta = config.max_joint_speed * self.period_s

        height, width = camera_size
        if not (0 < height <= 4096 and 0 < width <= 4096):
            raise robot_mod.RobotError(
                f"{name}: camera_size must be (height, width) in 1..4096, not {camera_size}"
            )
        for cam in cameras:
            _require(m, mujoco.mjtObj.mjOBJ_CAMERA, cam, name, "camera")
        self._cameras = tuple(cameras)

        k = config.task_dims
        obs_low, obs_high = _observation_bounds(n, k)
        try:
            self._spec = spaces.RobotSpec(
                robot_type=name,
                observation=spaces.ArraySpec(shape=(3 * n + 3 * k,), dtype="float32",
                                             low=obs_low, high=obs_high),
                action=spaces.ArraySpec(shape=(n,), dtype="float32", low=-1.0, high=1.0),
                cameras=tuple(
                    spaces.CameraSpec(name=c, height=height, width=width) for c in self._cameras
                ),
                info={key: spaces.ArraySpec(shape=(3,), dtype="float32") for key in _INFO_KEYS},
                control_hz=control_hz,
                max_episode_steps=(
                    config.max_episode_steps if max_episode_steps is None else max_episode_steps
                ),
            )
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise robot_mod.RobotError(f"{name}: bad option ({where}: {first['msg']})") from exc
        self._renderer: mujoco.Renderer | None = None
        if self._cameras:
            self._renderer = _make_renderer(m, height, width, name)
        self._rng = np.random.default_rng(seed)
        self._target = np.zeros(n)
        self._goal = np.zeros(3)
        self._index = 0
        self._done = True
        self._last: robot_mod.Step | None = None

    # -- Robot -----------------------------------------------------------------------

    @property
    def spec(self) -> spaces.RobotSpec:
        return self._spec

    def reset(self, seed: int | None = None) -> robot_mod.Step:
        rng = self._rng if seed is None else np.random.default_rng(seed)
        m, d, cfg = self.model, self.data, self.config
        mujoco.mj_resetData(m, d)
        noise = np.asarray(cfg.start_noise)
        q0 = np.asarray(cfg.home) + rng.uniform(-noise, noise)
        q0 = np.clip(q0, self._lo, self._hi)
        d.qpos[self._qadr] = q0
        self._goal = np.asarray(cfg.sample_goal(rng), dtype=np.float64)
        d.mocap_pos[self._goal_mocap] = self._goal
        self._target = q0.copy()
        d.ctrl[self._act] = q0
        mujoco.mj_forward(m, d)
        self._index = 0
        self._done = False
        return self._observe()

    def step(self, action: npt.NDArray[np.floating]) -> robot_mod.Step:
        if self._done:
            raise robot_mod.RobotError(
                f"{self.config.robot_type}: the episode is over; call reset() first"
            )
        a = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        if a.shape != self._target.shape or not np.all(np.isfinite(a)):
            raise robot_mod.RobotError(
                f"{self.config.robot_type}: action must be {self._target.shape[0]} finite "
                f"numbers, got {np.asarray(action).tolist()}"
            )
        q = self.data.qpos[self._qadr]
        window = 2.0 * self._max_delta
        target = np.clip(self._target + a * self._max_delta, q - window, q + window)
        self._target = np.clip(target, self._lo, self._hi)
        return self._advance()

    def hold(self) -> robot_mod.Step:
        self._target = np.clip(self.data.qpos[self._qadr], self._lo, self._hi)
        return self._advance()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # -- simulation --------------------------------------------------------------------

    @property
    def goal(self) -> Vec:
        return self._goal.copy()

    def scripted_policy(self) -> JacobianReach:
        """A controller that drives the end effector to the goal (for demos and tests)."""
        return JacobianReach(self)

    def _advance(self) -> robot_mod.Step:
        m, d = self.model, self.data
        d.ctrl[self._act] = self._target
        fault = step_checked(m, d, self._nsub)
        # mj_step leaves positions one physics step ahead of the kinematics it computed.
        mujoco.mj_kinematics(m, d)
        if fault:
            fault = f"{self.config.robot_type}: {fault} at step {self._index + 1}"
        if not self._done:
            self._index += 1
            if fault or self._index >= self._spec.max_episode_steps:
                self._done = True
        if fault and self._last is not None:
            # The state now is MuJoCo's reset (or NaN): the last valid one is what we know.
            return dataclasses.replace(self._last, index=self._index, terminated=False,
                                       truncated=True, unstable=fault)
        return self._observe(truncated=self._done)


    def _observe(self, truncated: bool = False) -> robot_mod.Step:
        d, cfg, k = self.data, self.config, self.config.task_dims
        q = d.qpos[self._qadr]
        qd = d.qvel[self._dadr]
        ee = d.site_xpos[self._site].copy()
        obs = np.concatenate(
            [
                np.cos(q),
                np.sin(q),
                qd / cfg.max_joint_speed,
                ee[:k],
                self._goal[:k],
                (self._goal - ee)[:k],
            ]
        ).astype(np.float32)
        info = {
            "ee_pos": ee.astype(np.float32),
            "goal_pos": self._goal.astype(np.float32),
        }
        images: dict[str, npt.NDArray[np.uint8]] = {}
        if self._renderer is not None:
            for cam in self._cameras:
                self._renderer.update_scene(d, camera=cam)
                images[cam] = self._renderer.render()
        self._last = robot_mod.Step(
            observation=obs, info=info, index=self._index, images=images, truncated=truncated
        )
        return self._last


class JacobianReach:
    """Scripted reach: damped-least-squares steps of the end effector toward the goal.

    A function of the observation alone (joint angles from cos/sin, end effector and goal
    positions), with its own kinematics copy of the arm's model, so it can drive any
    robot with the same model and observation layout — a real one included. Redundant
    joints are pulled toward the home pose in the Jacobian's null space.
    """

    def __init__(self, arm: MujocoArm, *, gain: float = 0.6, damping: float = 0.02) -> None:
        self._arm = arm
        self._model = arm.model
        self._data = mujoco.MjData(arm.model)
        self._gain = gain
        self._damping = damping
        self._n = len(arm.config.joints)
        self._k = arm.config.task_dims
        self._home = np.asarray(arm.config.home)
        self._jacp = np.zeros((3, arm.model.nv))

    def __call__(self, observation: npt.NDArray[np.floating]) -> npt.NDArray[np.float32]:
        n, k, arm = self._n, self._k, self._arm
        obs = np.asarray(observation, dtype=np.float64)
        q = np.arctan2(obs[n : 2 * n], obs[:n])
        ee, goal = obs[3 * n : 3 * n + k], obs[3 * n + k : 3 * n + 2 * k]
        m, d = self._model, self._data
        d.qpos[arm._qadr] = q
        mujoco.mj_kinematics(m, d)
        mujoco.mj_comPos(m, d)
        mujoco.mj_jacSite(m, d, self._jacp, None, arm._site)
        jac = self._jacp[:k, arm._dadr]
        jjt = jac @ jac.T + self._damping**2 * np.eye(k)
        dq = jac.T @ np.linalg.solve(jjt, self._gain * (goal - ee))
        # Null-space pull toward home keeps a redundant arm away from its joint limits.
        null = np.eye(n) - jac.T @ np.linalg.solve(jjt, jac)
        dq += null @ (0.1 * (self._home - q))
        action = dq / arm._max_delta
        peak = float(np.max(np.abs(action)))
        if peak > 1.0:
            action /= peak
        out: npt.NDArray[np.float32] = action.astype(np.float32)
        return out


def _require(m: mujoco.MjModel, kind: mujoco.mjtObj, name: str, robot: str, what: str) -> int:
    idx = int(mujoco.mj_name2id(m, kind, name))
    if idx < 0:
        raise robot_mod.RobotError(f"{robot}: the model has no {what} named {name!r}")
    return idx


def _joint_indices(
    m: mujoco.MjModel, config: ArmConfig
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    qadr, dadr, act = [], [], []
    for joint in config.joints:
        j = _require(m, mujoco.mjtObj.mjOBJ_JOINT, joint, config.robot_type, "joint")
        if m.jnt_type[j] != mujoco.mjtJoint.mjJNT_HINGE:
            raise robot_mod.RobotError(f"{config.robot_type}: joint {joint!r} is not a hinge")
        a = _require(m, mujoco.mjtObj.mjOBJ_ACTUATOR, joint, config.robot_type, "actuator")
        if m.actuator_trnid[a, 0] != j:
            raise robot_mod.RobotError(
                f"{config.robot_type}: actuator {joint!r} does not drive joint {joint!r}"
            )
        qadr.append(int(m.jnt_qposadr[j]))
        dadr.append(int(m.jnt_dofadr[j]))
        act.append(a)
    if m.nu != len(act):
        raise robot_mod.RobotError(
            f"{config.robot_type}: the model has {m.nu} actuators but the type drives "
            f"{len(act)} joints"
        )
    return np.array(qadr), np.array(dadr), np.array(act)


def _target_limits(
    m: mujoco.MjModel, qadr: npt.NDArray[np.intp], act: npt.NDArray[np.intp], joints: Sequence[str]
) -> tuple[Vec, Vec]:
    lo = np.full(len(joints), -np.inf)
    hi = np.full(len(joints), np.inf)
    for i, joint in enumerate(joints):
        j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, joint)
        if m.jnt_limited[j]:
            lo[i], hi[i] = m.jnt_range[j]
        if m.actuator_ctrllimited[act[i]]:
            lo[i] = max(lo[i], m.actuator_ctrlrange[act[i], 0])
            hi[i] = min(hi[i], m.actuator_ctrlrange[act[i], 1])
    return lo, hi


def _make_renderer(m: mujoco.MjModel, height: int, width: int, robot: str) -> mujoco.Renderer:
    try:
        return mujoco.Renderer(m, height=height, width=width)
    except ValueError as exc:  # larger than the model's offscreen buffer
        raise robot_mod.RobotError(f"{robot}: camera size {height}x{width}: {exc}") from exc
    except Exception as exc:  # the GL backend raises its own types (EGL, OSMesa, GLFW)
        raise robot_mod.RobotError(
            f"{robot}: cannot render cameras offscreen ({type(exc).__name__}: {exc}); "
            "install Mesa's EGL (libegl1) or build the robot without cameras"
        ) from exc
