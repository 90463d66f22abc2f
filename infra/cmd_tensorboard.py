"""`userctl tensorboard EXPERIMENT` — TensorBoard on an experiment's learner scalars.

The learner writes ``runs/<experiment>/tb/<robot type>/`` (``learners.tensorboard``);
this starts TensorBoard's server on that directory (bound to 127.0.0.1).  The server is
an optional extra: ``pip install -e '.[tensorboard]'``.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

from infra.broker import REPO
from learners import tensorboard


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tensorboard", help="TensorBoard on an experiment's learner scalars")
    p.add_argument("experiment", nargs="?",
                   help="experiment name (default: every experiment under --runs)")
    p.add_argument("--runs", type=Path, default=None,
                   help="runs directory (default USER_TENSORBOARD_RUNS, else ./runs)")
    p.add_argument("--port", type=int, default=6006, help="port on 127.0.0.1 (default 6006)")
    p.add_argument("--print-logdir", action="store_true",
                   help="print the log directory and exit (no server)")
    p.set_defaults(func=_tensorboard)


def logdir_for(runs: Path, experiment: str | None) -> Path:
    """The directory TensorBoard is pointed at; raises SystemExit with a one-line reason."""
    if experiment is None:
        if not runs.is_dir():
            raise SystemExit(f"userctl tensorboard: no runs directory {runs}; run a learner "
                             "or `userctl demo` first")
        return runs
    path = tensorboard.log_dir(runs, experiment)
    if not path.is_dir():
        known = sorted(p.parent.name for p in runs.glob("*/tb")) if runs.is_dir() else []
        raise SystemExit(
            f"userctl tensorboard: no TensorBoard files for {experiment!r} in {path}"
            + (f" (experiments with files: {', '.join(known)})" if known
               else "; the learner writes them while it trains"))
    return path


def _tensorboard(args: argparse.Namespace) -> int:
    runs = args.runs or tensorboard.TensorBoardSettings().runs
    if not runs.is_absolute() and not runs.exists():
        runs = REPO / runs  # the learner's working directory under `userctl up`/demo
    logdir = logdir_for(runs, args.experiment)
    if args.print_logdir:
        print(logdir)
        return 0
    if importlib.util.find_spec("tensorboard") is None:
        raise SystemExit("userctl tensorboard: the TensorBoard server is not installed; "
                         "install it with `.venv/bin/pip install -e '.[tensorboard]'`")
    print(f"TensorBoard on {logdir}: http://127.0.0.1:{args.port}/ (Ctrl-C stops it)",
          flush=True)
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
           "--host", "127.0.0.1", "--port", str(args.port)]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:
        return 0
