"""Runs one third-party suite environment for a USER robot in another Python (issue 11 §4).

A suite that pins an older MuJoCo than USER's (Meta-World 3.1.1: ``mujoco==3.3.0``) lives
in its own virtual environment; the robot adapter starts this file with that
environment's interpreter and talks to it over stdin/stdout, one JSON object per line
(no pickle). This file imports only the standard library, numpy and the suite, never USER.

Requests: ``{"op": "make", "suite": "metaworld", "env": "reach-v3", "seed": 0,
"max_episode_steps": 500}``, ``{"op": "reset", "seed": 7}``, ``{"op": "step", "action":
[...]}``, ``{"op": "close"}``. Replies: ``{"obs": [...], "truncated": false}`` (``make``:
``{"ok": true, "mujoco": "3.3.0"}``), or ``{"error": "one line"}``.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def _make(request: dict[str, Any]) -> Any:
    if request.get("suite") != "metaworld":
        raise ValueError(f"unknown suite {request.get('suite')!r}")
    import gymnasium as gym
    import metaworld  # noqa: F401 - registers the Meta-World/ environments

    return gym.make("Meta-World/MT1", env_name=request["env"], seed=request.get("seed"),
                    max_episode_steps=int(request["max_episode_steps"]))


def main() -> int:
    # This file's folder holds USER's adapters (``metaworld.py``…), which would shadow the
    # suites' own packages.
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    env: Any = None
    out = sys.stdout
    sys.stdout = sys.stderr  # suites print; only replies go to the parent
    for line in sys.stdin:
        try:
            request = json.loads(line)
            op = request["op"]
            if op == "make":
                import mujoco

                env = _make(request)
                reply: dict[str, Any] = {"ok": True, "mujoco": mujoco.__version__}
            elif op == "reset":
                obs, _ = env.reset(seed=request.get("seed"))
                reply = {"obs": [float(x) for x in obs], "truncated": False}
            elif op == "step":
                obs, _, _, truncated, _ = env.step(request["action"])
                reply = {"obs": [float(x) for x in obs], "truncated": bool(truncated)}
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
