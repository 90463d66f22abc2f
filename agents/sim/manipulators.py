"""Real arm models — Franka Panda and UR5e — on a table, with an end-effector action space.

The arms and grippers are the MJCF that ships in the ``robosuite`` wheel (Panda + its
parallel gripper; UR5e + a Robotiq 2F-140), found through the installed package and never
downloaded at run time. robosuite's own environments do not run on MuJoCo 4 (its
bindings assert on joint types), so only its assets are used: the scene (table, the
task's objects) and the controller are ours, composed with MuJoCo's model-editing API
(``mujoco.MjSpec``: the gripper is attached to the arm's hand, the arm to the world).

Control — what SERL-style Franka setups expose: an action in [-1, 1]^4 is
``[dx, dy, dz, gripper]`` (``orientation=True``: [-1, 1]^7, ``[dx, dy, dz, droll,
dpitch, dyaw, gripper]``). The position part moves the end-effector target by up to
``max_ee_speed`` × period, clamped to the task's workspace box (the safety layer,
``agents.safety.Workspace``, cuts actions that would leave it); the orientation target
stays gripper-down unless ``orientation`` is on. A damped-least-squares differential-IK
step (``mujoco.mj_jacSite``, null space pulled toward the home pose) turns the target
into joint targets for the arm's position servos, once per control period; gravity is
compensated. The gripper action sets the finger target: -1 open, +1 closed.

Observation (float32; ``agents.sim.experts`` names the slices)::

    [ee (3), ee velocity (3, m/s), gripper opening (1; 1 open, 0 closed), task part]

Tasks (``agents.sim.tasks``): ``reach``, ``push``, ``pick_place``, or any ``user.tasks``
plug-in; ``info`` and success rules per task live in ``schemas.tasks``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import pathlib
from collections.abc import Sequence

import mujoco
import numpy as np
import numpy.typing as npt
import pydantic

from agents import registry, safety
from agents import robot as robot_mod
from agents.sim import arm, experts, tasks
from schemas import spaces

__all__ = ["PANDA", "PANDA_CONFIG", "UR5E", "UR5E_CONFIG", "Manipulator", "ManipulatorConfig",
           "robosuite_assets"]

Vec = npt.NDArray[np.float64]

#: Announced bounds of observation elements: positions (m), velocities (m/s).
_POSITION_BOUND_M = 10.0
_VELOCITY_BOUND = 100.0


@dataclasses.dataclass(frozen=True)
class ManipulatorConfig:
    """One real-model arm type: which wheel assets, which joints, how to drive them."""

    robot_type: str
    #: Arm MJCF under robosuite's ``models/assets``.
    robot_xml: str
    #: Gripper MJCF under robosuite's ``models/assets``.
    gripper_xml: str
    #: The arm's joints, base to wrist.
    joints: tuple[str, ...]
    #: A gripper-down pose the IK starts from (robosuite's ``init_qpos``).
    home: tuple[float, ...]
    #: Position-servo stiffness per joint (N·m/rad).
    kp: tuple[float, ...]
    #: Gripper actuator targets, fully open and fully closed.
    gripper_open: tuple[float, ...]
    gripper_closed: tuple[float, ...]
    #: A gripper joint whose position measures the opening, and its open/closed values.
    opening_joint: str
    opening_range: tuple[float, float]
    #: End-effector speed at |action| = 1 (m/s), and rotation speed (rad/s).
    max_ee_speed: float = 0.3
    max_ee_rot_speed: float = 1.0
    #: The tool centre (between the finger pads), along the gripper's approach axis from
    #: its ``eef`` body (m); the end effector the actions move and ``ee_pos`` reports.
    tcp_offset: float = 0.0
    #: The arm body the gripper is mounted on, and the gripper's root and tool bodies.
    hand_body: str = "right_hand"
    gripper_body: str = "right_gripper"
    tool_body: str = "eef"


PANDA_CONFIG = ManipulatorConfig(
    robot_type="panda",
    robot_xml="robots/panda/robot.xml",
    gripper_xml="grippers/panda_gripper.xml",
    joints=tuple(f"joint{i}" for i in range(1, 8)),
    home=(0.0, np.pi / 16, 0.0, -np.pi / 2 - np.pi / 3, 0.0, np.pi - 0.2, np.pi / 4),
    kp=(3000.0, 3000.0, 3000.0, 3000.0, 1500.0, 1000.0, 500.0),
    gripper_open=(0.04, -0.04),
    gripper_closed=(0.0, 0.0),
    opening_joint="finger_joint1",
    opening_range=(0.04, 0.0),
)

UR5E_CONFIG = ManipulatorConfig(
    robot_type="ur5e",
    robot_xml="robots/ur5e/robot.xml",
    gripper_xml="grippers/robotiq_gripper_140.xml",
    joints=("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint",
            "wrist_2_joint", "wrist_3_joint"),
    home=(-0.470, -1.735, 2.480, -2.275, -1.590, -1.991),
    kp=(3000.0, 3000.0, 2000.0, 800.0, 800.0, 400.0),
    gripper_open=(0.0, 0.0),
    gripper_closed=(0.7, -0.7),
    opening_joint="finger_joint",
    opening_range=(0.0, 0.7),
    tcp_offset=-0.034,
)


def robosuite_assets() -> pathlib.Path:
    """robosuite's ``models/assets`` folder, found without importing robosuite (whose
    import pulls in numba, OpenCV and input-device libraries we do not need).

    Raises ``RobotError`` (one line) when the package is not installed.
    """
    spec = importlib.util.find_spec("robosuite")
    if spec is None or not spec.submodule_search_locations:
        raise robot_mod.RobotError(
            "the Panda and UR5e models come from the robosuite wheel, which is not installed; "
            "run `make setup` (or pip install 'robosuite==1.5.1')")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "models" / "assets"


def build_spec(config: ManipulatorConfig, task: tasks.SceneTask) -> mujoco.MjSpec:
    """The scene as an ``MjSpec``: table, arm with gripper at the origin, task objects."""
    root = robosuite_assets()
    try:
        arm_spec = mujoco.MjSpec.from_file(str(root / config.robot_xml))
        gripper = mujoco.MjSpec.from_file(str(root / config.gripper_xml))
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0]
        raise robot_mod.RobotError(f"{config.robot_type}: robosuite's MJCF does not load: "
                                   f"{first}") from exc
    # robosuite drives the arm with torque motors and its own controllers; ours are
    # position servos, added below.
    for actuator in list(arm_spec.actuators):
        # MuJoCo >= 3.3.3 deletes through the spec; 3.3.0 (the version the third-party
        # suites pin) through the element.
        if hasattr(arm_spec, "delete"):
            arm_spec.delete(actuator)
        else:
            actuator.delete()

    world = mujoco.MjSpec()
    world.modelname = f"{config.robot_type}-{task.name}"
    world.option.timestep = 0.002
    world.option.integrator = mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    world.visual.global_.offwidth = 640
    world.visual.global_.offheight = 480
    light = world.worldbody.add_light(pos=[0.5, 0, 1.5], dir=[0, 0, -1])
    if hasattr(mujoco, "mjtLightType"):  # MuJoCo >= 3.3.3; 3.3.0 has a flag instead
        light.type = mujoco.mjtLightType.mjLIGHT_DIRECTIONAL
    else:
        light.directional = True
    world.worldbody.add_geom(name="floor", type=mujoco.mjtGeom.mjGEOM_PLANE, size=[2, 2, 0.1],
                             pos=[0, 0, -0.8], rgba=[0.4, 0.4, 0.4, 1])
    world.worldbody.add_geom(name="table", type=mujoco.mjtGeom.mjGEOM_BOX,
                             size=[0.35, 0.5, 0.02], pos=[0.55, 0, -0.02],
                             rgba=[0.75, 0.65, 0.5, 1], friction=[1.0, 0.005, 0.0001])
    world.worldbody.add_geom(name="pedestal", type=mujoco.mjtGeom.mjGEOM_CYLINDER,
                             size=[0.1, 0.4, 0], pos=[0, 0, -0.4], rgba=[0.2, 0.2, 0.2, 1])
    world.worldbody.add_camera(name="front", pos=[1.5, 0, 0.6], xyaxes=[0, 1, 0, -0.35, 0, 1])
    world.worldbody.add_camera(name="side", pos=[0.5, -1.2, 0.5], xyaxes=[1, 0, 0, 0, 0.4, 1])

    world.worldbody.add_frame().attach_body(arm_spec.body("base"), "robot/", "")
    hand = world.body(f"robot/{config.hand_body}")
    hand.add_frame().attach_body(gripper.body(config.gripper_body), "gripper/", "")
    world.body(f"gripper/{config.tool_body}").add_site(
        name="tcp", pos=[0, 0, config.tcp_offset], size=[0.005, 0.005, 0.005], group=3)
    fingers = []
    for body in world.bodies:
        if body.name.startswith(("robot/", "gripper/")):
            body.gravcomp = 1.0
        if body.name.startswith("gripper/"):
            fingers.append(body.name)
    # The linkage of a multi-bar gripper overlaps by design; its parts must not collide.
    for i, a in enumerate(fingers):
        for b in fingers[i + 1:]:
            world.add_exclude(bodyname1=a, bodyname2=b)
    for joint, kp in zip(config.joints, config.kp, strict=True):
        j = world.joint(f"robot/{joint}")
        j.armature = max(j.armature, 0.1)
        act = world.add_actuator(name=joint, target=f"robot/{joint}",
                                 trntype=mujoco.mjtTrn.mjTRN_JOINT)
        act.set_to_position(kp=kp, dampratio=1.0)
        act.ctrlrange = j.range
        act.ctrllimited = mujoco.mjtLimited.mjLIMITED_TRUE
    task.build(world)
    return world


@functools.lru_cache(maxsize=16)
def _compiled(config: ManipulatorConfig, task_name: str) -> mujoco.MjModel:
    """The compiled scene, cached per (type, task): compiling the meshes takes most of a
    second, copying the model does not."""
    task = tasks.get(task_name)
    spec = build_spec(config, task)
    try:
        return spec.compile()
    except ValueError as exc:
        first = str(exc).strip().splitlines()[0]
        raise robot_mod.RobotError(
            f"{config.robot_type}: the {task.name} scene does not compile: {first}") from exc


def _load(config: ManipulatorConfig, task: tasks.SceneTask) -> mujoco.MjModel:
    """A private copy of the compiled scene (robots never share a model)."""
    return copy.copy(_compiled(config, task.name))


class Manipulator(robot_mod.Robot):
    """A Panda or UR5e on a table (module docstring). Options are those ``make_robot``
    passes on; ``task`` names a scene task (``agents.sim.tasks``)."""

    def __init__(
        self,
        config: ManipulatorConfig,
        *,
        task: str = "reach",
        seed: int | None = None,
        control_hz: float = 20.0,
        max_episode_steps: int | None = None,
        cameras: Sequence[str] = (),
        camera_size: tuple[int, int] = (64, 64),
        orientation: bool = False,
    ) -> None:
        name = config.robot_type
        if not control_hz > 0:
            raise robot_mod.RobotError(f"{name}: control_hz must be positive, not {control_hz}")
        try:
            self.task = tasks.get(task)
        except KeyError as exc:
            raise robot_mod.RobotError(f"{name}: {exc.args[0]}") from exc
        self.config = config
        self.model = m = _load(config, self.task)
        self.data = mujoco.MjData(m)
        self._kin = mujoco.MjData(m)  # the IK's kinematics copy
        self._qadr = np.array([m.joint(f"robot/{j}").qposadr[0] for j in config.joints])
        self._dadr = np.array([m.joint(f"robot/{j}").dofadr[0] for j in config.joints])
        self._arm_act = np.array([m.actuator(j).id for j in config.joints])
        self._grip_act = np.array([i for i in range(m.nu) if i not in set(self._arm_act)])
        if len(self._grip_act) != len(config.gripper_open):
            raise robot_mod.RobotError(f"{name}: the gripper has {len(self._grip_act)} "
                                       f"actuators, the config {len(config.gripper_open)}")
        self._lo = m.jnt_range[[m.joint(f"robot/{j}").id for j in config.joints], 0].copy()
        self._hi = m.jnt_range[[m.joint(f"robot/{j}").id for j in config.joints], 1].copy()
        self._site = m.site("tcp").id
        self._open_q = m.joint(f"gripper/{config.opening_joint}").qposadr[0]
        self._nsub = max(1, round(1.0 / (control_hz * m.opt.timestep)))
        #: Simulated seconds per control step.
        self.period_s = self._nsub * m.opt.timestep
        self._step_m = config.max_ee_speed * self.period_s
        self._rot_step = config.max_ee_rot_speed * self.period_s
        self._orientation = orientation
        low, high = self.task.workspace
        #: The end-effector box the safety layer enforces.
        self.workspace = safety.Workspace(low=low, high=high, step_m=self._step_m)

        height, width = camera_size
        if not (0 < height <= 4096 and 0 < width <= 4096):
            raise robot_mod.RobotError(
                f"{name}: camera_size must be (height, width) in 1..4096, not {camera_size}")
        for cam in cameras:
            if mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, cam) < 0:
                raise robot_mod.RobotError(f"{name}: the model has no camera named {cam!r}")
        self._cameras = tuple(cameras)
        n_obs = experts.TASK + self.task.observation_size
        obs_high = ((_POSITION_BOUND_M,) * 3 + (_VELOCITY_BOUND,) * 3 + (1.0,)
                    + (_POSITION_BOUND_M,) * self.task.observation_size)
        obs_low = (*(-h for h in obs_high[:6]), 0.0, *(-h for h in obs_high[7:]))
        try:
            self._spec = spaces.RobotSpec(
                robot_type=name,
                observation=spaces.ArraySpec(shape=(n_obs,), dtype="float32",
                                             low=obs_low, high=obs_high),
                action=spaces.ArraySpec(shape=(7 if orientation else 4,), dtype="float32",
                                        low=-1.0, high=1.0),
                cameras=tuple(spaces.CameraSpec(name=c, height=height, width=width)
                              for c in self._cameras),
                info={k: spaces.ArraySpec(shape=(3,), dtype="float32")
                      for k in self.task.info_keys},
                control_hz=control_hz,
                max_episode_steps=(self.task.max_episode_steps if max_episode_steps is None
                                   else max_episode_steps),
                task=self.task.name,
            )
        except pydantic.ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise robot_mod.RobotError(f"{name}: bad option ({where}: {first['msg']})") from exc
        self._renderer: mujoco.Renderer | None = None
        if self._cameras:
            self._renderer = arm._make_renderer(m, height, width, name)
        self._rng = np.random.default_rng(seed)
        self._home = np.asarray(config.home, dtype=np.float64)
        self._down = self._gripper_down()
        self._q_target = self._home.copy()
        self._p_target = np.zeros(3)
        self._r_target = self._down.copy()
        self._grip = np.asarray(config.gripper_open, dtype=np.float64)
        self._ee_prev = np.zeros(3)
        self._index = 0
        self._done = True

    # -- Robot -----------------------------------------------------------------------

    @property
    def spec(self) -> spaces.RobotSpec:
        return self._spec

    def reset(self, seed: int | None = None) -> robot_mod.Step:
        rng = self._rng if seed is None else np.random.default_rng(seed)
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        start = self.task.reset(m, d, rng)
        self._r_target = self._down.copy()
        q = self._ik(self._home, start, self._r_target, iterations=60)
        d.qpos[self._qadr] = q
        self._q_target = q.copy()
        self._p_target = np.asarray(start, dtype=np.float64).copy()
        self._grip = np.asarray(self.config.gripper_open, dtype=np.float64)
        d.ctrl[self._arm_act] = q
        d.ctrl[self._grip_act] = self._grip
        mujoco.mj_forward(m, d)
        self._ee_prev = d.site_xpos[self._site].copy()
        self._index = 0
        self._done = False
        return self._observe()

    def step(self, action: npt.NDArray[np.floating]) -> robot_mod.Step:
        if self._done:
            raise robot_mod.RobotError(
                f"{self.config.robot_type}: the episode is over; call reset() first")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != tuple(self._spec.action.shape) or not np.all(np.isfinite(a)):
            raise robot_mod.RobotError(
                f"{self.config.robot_type}: action must be {self._spec.action.shape[0]} "
                f"finite numbers, got {a.tolist()}")
        a = np.clip(a, -1.0, 1.0)
        # The target is relative to where the end effector is (no wind-up while the arm
        # lags or is blocked by contact) and stays in the workspace.
        ee = self.data.site_xpos[self._site]
        self._p_target = np.clip(ee + a[:3] * self._step_m, self.workspace.low,
                                 self.workspace.high)
        if self._orientation:
            self._r_target = _rotate(self._r_target, a[3:6] * self._rot_step)
        self._q_target = self._ik(self._q_target, self._p_target, self._r_target)
        cfg = self.config
        frac = (a[-1] + 1.0) / 2.0
        self._grip = (np.asarray(cfg.gripper_open)
                      + frac * (np.asarray(cfg.gripper_closed) - np.asarray(cfg.gripper_open)))
        return self._advance()

    def hold(self) -> robot_mod.Step:
        q = np.clip(self.data.qpos[self._qadr], self._lo, self._hi)
        self._q_target = q.copy()
        self._p_target = self.data.site_xpos[self._site].copy()
        return self._advance()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # -- control ---------------------------------------------------------------------

    def scripted_policy(self) -> experts.Policy:
        """The task's scripted expert (``agents.sim.experts``), for this action size."""
        policy = self.task.expert(self._step_m)
        if isinstance(policy, experts._Expert):
            policy.action_size = self._spec.action.shape[0]
        return policy

    def _gripper_down(self) -> Vec:
        """The tool frame pointing straight down, yawed as at the home pose."""
        k = self._kin
        k.qpos[self._qadr] = self._home
        mujoco.mj_kinematics(self.model, k)
        x = k.site_xmat[self._site].reshape(3, 3)[:, 0].copy()
        z = np.array([0.0, 0.0, -1.0])
        x -= (x @ z) * z
        x /= np.linalg.norm(x)
        return np.column_stack([x, np.cross(z, x), z])

    def _ik(self, q0: Vec, p_target: Vec, r_target: Vec, iterations: int = 3) -> Vec:
        """Joint targets that put the tool centre at ``p_target`` with orientation
        ``r_target``: damped-least-squares steps from ``q0``, redundancy resolved toward
        the home pose, clamped to the joint ranges."""
        m, k = self.model, self._kin
        jacp = np.zeros((3, m.nv))
        jacr = np.zeros((3, m.nv))
        n = len(self._qadr)
        q = np.asarray(q0, dtype=np.float64).copy()
        for _ in range(iterations):
            k.qpos[self._qadr] = q
            mujoco.mj_kinematics(m, k)
            mujoco.mj_comPos(m, k)
            rot = k.site_xmat[self._site].reshape(3, 3)
            err_p = p_target - k.site_xpos[self._site]
            err_r = 0.5 * sum(np.cross(rot[:, i], r_target[:, i]) for i in range(3))
            mujoco.mj_jacSite(m, k, jacp, jacr, self._site)
            jac = np.vstack([jacp[:, self._dadr], 0.3 * jacr[:, self._dadr]])
            err = np.concatenate([err_p, 0.3 * err_r])
            jjt = jac @ jac.T + 1e-4 * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            null = np.eye(n) - jac.T @ np.linalg.solve(jjt, jac)
            dq += null @ (0.05 * (self._home - q))
            dq = np.clip(dq, -0.3, 0.3)
            q = np.clip(q + dq, self._lo, self._hi)
        return q

    def _advance(self) -> robot_mod.Step:
        m, d = self.model, self.data
        d.ctrl[self._arm_act] = self._q_target
        d.ctrl[self._grip_act] = self._grip
        self._ee_prev = d.site_xpos[self._site].copy()
        mujoco.mj_step(m, d, nstep=self._nsub)
        mujoco.mj_kinematics(m, d)
        if not self._done:
            self._index += 1
            if self._index >= self._spec.max_episode_steps:
                self._done = True
        return self._observe(truncated=self._done)

    def _observe(self, truncated: bool = False) -> robot_mod.Step:
        m, d = self.model, self.data
        ee = d.site_xpos[self._site].copy()
        vel = (ee - self._ee_prev) / self.period_s
        q_open, q_closed = self.config.opening_range
        opening = float(np.clip((d.qpos[self._open_q] - q_closed) / (q_open - q_closed), 0, 1))
        task_obs, info = self.task.observe(m, d, ee)
        obs = np.concatenate([ee, vel, [opening], task_obs]).astype(np.float32)
        images: dict[str, npt.NDArray[np.uint8]] = {}
        if self._renderer is not None:
            for cam in self._cameras:
                self._renderer.update_scene(d, camera=cam)
                images[cam] = self._renderer.render()
        return robot_mod.Step(
            observation=obs, info={k: np.asarray(v, np.float32) for k, v in info.items()},
            index=self._index, images=images, truncated=truncated)


def _rotate(r: Vec, rotvec: Vec) -> Vec:
    """``r`` turned by the rotation vector ``rotvec`` (world frame)."""
    quat = np.zeros(4)
    mujoco.mju_axisAngle2Quat(quat, rotvec / (np.linalg.norm(rotvec) or 1.0),
                              float(np.linalg.norm(rotvec)))
    turn = np.zeros(9)
    mujoco.mju_quat2Mat(turn, quat)
    out: Vec = turn.reshape(3, 3) @ r
    return out


def _factory(config: ManipulatorConfig) -> registry.RobotFactory:
    def make(**options: object) -> Manipulator:
        return Manipulator(config, **options)  # type: ignore[arg-type]

    make.__doc__ = f"A {config.robot_type}; options as ``Manipulator`` takes them."
    return make


#: The ``user.robots`` entry points of the two arms (USER's pyproject declares them).
PANDA = registry.RobotType(factory=_factory(PANDA_CONFIG), tasks=tasks.names)
UR5E = registry.RobotType(factory=_factory(UR5E_CONFIG), tasks=tasks.names)
