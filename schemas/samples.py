"""Example robot specs and well-formed transition batches, for tests, benchmarks and docs.

Everything here is deterministic given the ``rng`` seed and valid by construction:
batches pass :func:`schemas.transitions.check_content` and
:func:`~schemas.transitions.check_against` their spec.
"""

from __future__ import annotations

import numpy as np

from schemas import events, transitions
from schemas.spaces import ArraySpec, CameraSpec, RobotSpec


def robot_spec(
    *,
    obs_dim: int = 32,
    act_dim: int = 4,
    cameras: tuple[str, ...] = (),
    image_hw: tuple[int, int] = (84, 84),
    info: dict[str, int] | None = None,
    robot_type: str = "reacher",
) -> RobotSpec:
    """A robot with a flat observation, a [-1, 1] action box and optional cameras/info."""
    return RobotSpec(
        robot_type=robot_type,
        observation=ArraySpec(shape=(obs_dim,)),
        action=ArraySpec(shape=(act_dim,), low=-1.0, high=1.0),
        cameras=tuple(CameraSpec(name=c, height=image_hw[0], width=image_hw[1])
                      for c in cameras),
        info={k: ArraySpec(shape=(d,)) for k, d in (info or {}).items()},
    )


def batch(
    spec: RobotSpec,
    n: int,
    *,
    rng: np.random.Generator | int = 0,
    site: str = "lab-a",
    robot_id: str = "r1",
    experiment_id: str = "exp-1",
    episode_len: int = 50,
    first_step: int = 0,
    episode: str = "ep-0",
    incarnation: str | None = None,
) -> transitions.TransitionBatch:
    """``n`` consecutive steps of ``spec``'s robot, episodes of ``episode_len`` steps
    (the last step of each truncated, end reason ``time_limit``), every 7th step a human
    intervention.  Step ``first_step + i`` has ``seq`` ``first_step + i`` in
    ``incarnation`` (default: one per ``episode`` prefix, ``inc-<episode>``)."""
    gen = np.random.default_rng(rng)
    steps = np.arange(first_step, first_step + n)
    episode_no = steps // episode_len
    step = (steps % episode_len).astype(np.int32)
    truncated = step == episode_len - 1
    k = int(truncated.sum())
    obs_shape = spec.observation.shape
    act_shape = spec.action.shape
    intervention = steps % 7 == 3
    t0 = 1_700_000_000_000_000_000
    period = int(1e9 / spec.control_hz)
    images = {
        c.name: gen.integers(0, 256, (n, *c.shape), dtype=np.uint8) for c in spec.cameras
    }
    return transitions.TransitionBatch.build(
        events.TransitionBatchV2(site=site, robot_id=robot_id, experiment_id=experiment_id,
                                 robot_type=spec.robot_type, n_steps=n,
                                 incarnation=incarnation or f"inc-{episode}"),
        episode_id=np.char.add(f"{episode}-", episode_no.astype(np.str_)),
        step=step,
        seq=steps,
        observation=gen.standard_normal((n, *obs_shape), dtype=np.float32),
        action=gen.uniform(-1, 1, (n, *act_shape)).astype(np.float32),
        policy_version=steps // 100,
        observed_ns=t0 + steps * period,
        acted_ns=t0 + steps * period + period // 10,
        intervention=intervention,
        policy_action=np.where(intervention[:, None], 0.5, 0.0).astype(np.float32)
        * np.ones((n, *act_shape), np.float32),
        truncated=truncated,
        end_reason=np.where(truncated, events.EpisodeEndReason.TIME_LIMIT.value, ""),
        final_observation=gen.standard_normal((k, *obs_shape), dtype=np.float32),
        images=images,
        final_images={
            c.name: gen.integers(0, 256, (k, *c.shape), dtype=np.uint8) for c in spec.cameras
        },
        info={name: gen.standard_normal((n, *a.shape), dtype=np.float32)
              for name, a in spec.info.items()},
    )
