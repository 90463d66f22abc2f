"""Runs one third-party suite environment for a USER robot in another Python (issue 11 §4).

A suite that pins an older MuJoCo than USER's (Meta-World 3.1.1: ``mujoco==3.3.0``;
gym-hil: ``< 3.9``) lives in its own virtual environment (``make suites``); the robot
adapters (``agents/sim/metaworld.py``, ``fetch.py``, ``gym_hil.py``) start this file with
that environment's interpreter and talk to it over stdin/stdout, one JSON object per line
(no pickle). This file imports only the standard library, numpy and the suites, never USER.

Requests: ``{"op": "make", "suite": "metaworld", "env": "reach-v3", "seed": 0,
"max_episode_steps": 500, "kwargs": {}}`` (suites: ``metaworld``, ``gymnasium`` — any registered
gymnasium id, after importing ``gymnasium_robotics``, ``gym_hil`` or ``lerobot_env_so101``),
``{"op": "reset", "seed": 7}``, ``{"op": "step", "action": [...]}``, ``{"op": "expert"}``
(the suite's own scripted policy's action for the current observation, Meta-World only),
``{"op": "close"}``.

Replies: ``{"obs": ..., "terminated": false, "truncated": false, "success": false}`` where
``obs`` is a list of floats, or for a dict observation a dict of such lists (nested dicts
flattened to ``"outer/inner"`` keys); ``success`` is the suite's own success flag
(``info["success"]``, ``info["is_success"]`` or ``info["succeed"]``). ``make``:
``{"ok": true, "mujoco": "3.3.0"}``; ``expert``: ``{"action": [...]}``. Any failure:
``{"error": "one line"}``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

_SUCCESS_KEYS = ("success", "is_success", "succeed")


def _make(request: dict[str, Any]) -> Any:
    suite = request.get("suite")
    import gymnasium as gym

    if suite == "metaworld":
        import metaworld  # noqa: F401 - registers the Meta-World/ environments

        # MT1's task list (its 50 goal/object layouts) comes from this seed: a fixed one
        # when none is given, so every robot of a fleet draws from the same published set.
        seed = request.get("seed")
        return gym.make("Meta-World/MT1", env_name=request["env"],
                        seed=0 if seed is None else seed,
                        max_episode_steps=int(request["max_episode_steps"]))
    if suite == "gymnasium":
        env_id = str(request["env"])
        if env_id.startswith("gym_hil/"):
            import gym_hil  # noqa: F401 - registers gym_hil/ environments
        elif env_id.startswith("lerobot_env_so101/"):
            import lerobot_env_so101  # noqa: F401 - registers the SO-101 environments
        else:
            import gymnasium_robotics

            gym.register_envs(gymnasium_robotics)
        return gym.make(env_id, max_episode_steps=int(request["max_episode_steps"]),
                        **dict(request.get("kwargs") or {}))
    raise ValueError(f"unknown suite {suite!r}")


def _flat(obs: Any, prefix: str = "") -> Any:
    if isinstance(obs, dict):
        out: dict[str, Any] = {}
        for key, value in obs.items():
            inner = _flat(value, f"{prefix}{key}/")
            if isinstance(inner, dict):
                out.update(inner)
            else:
                out[f"{prefix}{key}"] = inner
        return out
    return [float(x) for x in obs.reshape(-1)] if hasattr(obs, "reshape") else list(obs)


def _expert(request: dict[str, Any]) -> Any:
    """Meta-World's scripted policy for the environment (``metaworld.policies``)."""
    from metaworld import policies

    name = "Sawyer" + "".join(p.capitalize() for p in request["env"].split("-")) + "Policy"
    cls = getattr(policies, name, None)
    if cls is None:
        raise ValueError(f"Meta-World has no scripted policy {name}")
    return cls()


def main() -> int:
    # This file's folder holds USER's adapters (``metaworld.py``…), which would shadow the
    # suites' own packages.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    env: Any = None
    expert: Any = None
    made: dict[str, Any] = {}
    last: Any = None
    out = sys.stdout
    sys.stdout = sys.stderr  # suites print; only replies go to the parent
    for line in sys.stdin:
        try:
            request = json.loads(line)
            op = request["op"]
            if op == "make":
                import mujoco

                env, made = _make(request), request
                reply: dict[str, Any] = {"ok": True, "mujoco": mujoco.__version__}
            elif op == "reset":
                if request.get("seed") is not None:
                    # gym-hil draws the cube's start from numpy's global generator.
                    import numpy as np

                    np.random.seed(int(request["seed"]) % 2**32)
                last, _ = env.reset(seed=request.get("seed"))
                if made.get("suite") == "metaworld" and request.get("seed") is not None:
                    # Meta-World picks the episode's task before seeding: reset again, so
                    # the pick comes from the seeded generator too.
                    last, _ = env.reset()
                reply = {"obs": _flat(last), "terminated": False, "truncated": False,
                         "success": False}
            elif op == "step":
                last, _, terminated, truncated, info = env.step(request["action"])
                success = next((bool(info[k]) for k in _SUCCESS_KEYS if k in info), False)
                reply = {"obs": _flat(last), "terminated": bool(terminated),
                         "truncated": bool(truncated), "success": success}
            elif op == "expert":
                if made.get("suite") != "metaworld":
                    raise ValueError("only Meta-World ships scripted policies")
                expert = expert or _expert(made)
                reply = {"action": [float(a) for a in expert.get_action(last)]}
            elif op == "close":
                if env is not None:
                    env.close()
                out.write(json.dumps({"ok": True}) + "\n")
                out.flush()
                return 0
            else:
                reply = {"error": f"unknown op {op!r}"}
        except Exception as exc:  # reported to the parent in one line, never a traceback
            text = (str(exc).strip().splitlines() or [""])[0]
            reply = {"error": f"{type(exc).__name__}: {text}"[:500]}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
