"""`userctl up|down|status` — run a topology of USER processes under the supervisor."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from infra import role_status, supervisor
from infra.broker import INFRA, Broker, BrokerSettings
from topics import lag
from topics.settings import KafkaSettings

DEFAULT_TOPOLOGY = INFRA / "topology.yaml"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("up", help="start a topology's processes under a supervisor")
    p.add_argument("topology", nargs="?", type=Path, default=DEFAULT_TOPOLOGY,
                   help=f"topology YAML (default {DEFAULT_TOPOLOGY.relative_to(INFRA.parent)})")
    p.add_argument("-d", "--detach", action="store_true",
                   help="run the supervisor in the background and return")
    p.set_defaults(func=_up)
    p = sub.add_parser("down", help="stop a running topology (gracefully)")
    p.add_argument("topology", nargs="?", type=Path, default=DEFAULT_TOPOLOGY)
    p.set_defaults(func=_down)
    p = sub.add_parser("status", help="the roles of a running topology")
    p.add_argument("topology", nargs="?", type=Path, default=DEFAULT_TOPOLOGY)
    p.set_defaults(func=_status)


def _home() -> Path:
    return BrokerSettings().home


def _ensure_kafka() -> None:
    """Start our broker unless the user has a cluster, then make the topics."""
    from infra import security
    from topics import admin
    from topics.settings import KafkaSettings

    if security.requested():  # USER_SECURE=1: SASL_SSL, users, ACLs; we act as the operator
        security.ensure_cluster(say=lambda m: print(m, file=sys.stderr))
        return
    if not os.environ.get("USER_KAFKA_BOOTSTRAP"):
        result = Broker().start(say=lambda m: print(m, file=sys.stderr))
        if not result.already_running:
            print(f"started Kafka (pid {result.pid})")
    admin.ensure_topics(KafkaSettings())


def _up(args: argparse.Namespace) -> int:
    topo = supervisor.load_topology(args.topology)
    home = _home()
    running = supervisor.supervisor_pid(home, topo.name)
    if running is not None:
        print(f"topology {topo.name} is already up (supervisor pid {running})")
        return 0
    if "USER_KAFKA_BOOTSTRAP" not in topo.env:  # else its brokers are roles, or external
        _ensure_kafka()
    if args.detach:
        log_dir = home / "logs" / topo.name
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / "supervisor.log").open("ab") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "infra.cli", "up", str(args.topology.resolve())],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 30
        while supervisor.read_state(home, topo.name) is None or (
                supervisor.supervisor_pid(home, topo.name) != proc.pid):
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"userctl: the supervisor did not come up; see {log_dir}/supervisor.log",
                      file=sys.stderr)
                return 2
            time.sleep(0.2)
        print(f"topology {topo.name} is up: {len(topo.roles)} roles (supervisor pid "
              f"{proc.pid}); `userctl status`, `userctl down`; logs in {log_dir}")
        return 0
    from infra import security

    sup = supervisor.Supervisor(security.for_topology(topo), home)

    def on_signal(signum: int, _frame: object) -> None:
        sup.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"topology {topo.name}: {', '.join(topo.roles)} (Ctrl-C stops everything)")
    return sup.run()


def _down(args: argparse.Namespace) -> int:
    topo = supervisor.load_topology(args.topology)
    home = _home()
    pid = supervisor.supervisor_pid(home, topo.name)
    if pid is None:
        print(f"topology {topo.name} is not up")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while supervisor.supervisor_pid(home, topo.name) is not None:
        if time.monotonic() > deadline:
            print(f"userctl: supervisor {pid} did not stop within 60 s", file=sys.stderr)
            return 2
        time.sleep(0.2)
    print(f"topology {topo.name} is down")
    return 0


def _status(args: argparse.Namespace) -> int:
    topo = supervisor.load_topology(args.topology)
    home = _home()
    state = supervisor.read_state(home, topo.name)
    pid = supervisor.supervisor_pid(home, topo.name)
    if state is None:
        print(f"topology {topo.name} has never run here")
        return 3
    print(f"topology {topo.name}: " + (f"up (supervisor pid {pid})" if pid else "down"))
    rows = [["ROLE", "STATE", "PID", "UPTIME", "RESTARTS", "LAST EXIT", "LAG", "LAST ERROR"]]
    now = time.time()
    roles = state.get("roles", [])
    assert isinstance(roles, list)
    env = {**os.environ, **topo.env}
    groups = {name: role_status.role_group(spec, env) for name, spec in topo.roles.items()}
    lags = role_status.group_lags(KafkaSettings(), sorted({g for g in groups.values() if g}))
    logs = home / "logs" / topo.name
    for r in roles:
        running = bool(r["running"]) and pid is not None
        state_word = "running" if running else ("gave up" if r["gave_up"] else "stopped")
        uptime = f"{now - float(r['started_at']):.0f}s" if running else "-"
        group = lags.get(groups.get(r["name"]) or "")
        behind = "-" if group is None else f"{lag.age(group.seconds)} ({group.records} rec)"
        rows.append([r["name"], state_word, str(r["pid"] or "-"), uptime,
                     str(r["restarts"]), "-" if r["last_exit"] is None else str(r["last_exit"]),
                     behind, role_status.last_error(logs / f"{r['name']}.log") or "-"])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    for r in roles:
        for line in r.get("history", []):
            print(f"  {r['name']}: {line}")
    if pid:
        _replication_lag(topo, env)
    return 0 if pid else 3


def _replication_lag(topo: supervisor.Topology, env: dict[str, str]) -> None:
    """Per-site MirrorMaker 2 lag, for a topology with `mirror run` roles: records on
    the source its last flushed offsets have not reached, each way; and one line for each
    site whose link is down (its MirrorMaker heartbeats stopped reaching the cloud)."""
    from infra import cmd_mirror

    cloud = env.get("USER_KAFKA_BOOTSTRAP", KafkaSettings().bootstrap)
    for name, spec in topo.roles.items():
        args = spec.userctl or []
        if args[:2] != ["mirror", "run"] or "--site" not in args or "--edge" not in args:
            continue
        site, edge = args[args.index("--site") + 1], args[args.index("--edge") + 1]
        try:
            flows = cmd_mirror.site_lag(site, edge, cloud)
        except Exception as exc:  # a status line, never a traceback
            print(f"  replication {site}: unknown ({type(exc).__name__}: {exc})")
            continue
        for line in cmd_mirror.lag_lines(flows):
            print(f"  replication {line}  [{name}]")
    from pipeline.controller import ControllerSettings

    hold = env.get("USER_CONTROLLER_SITE_HOLD_S",
                   f"{ControllerSettings.model_fields['site_hold_s'].default:.0f}")
    for site, silent in role_status.unreachable_sites(KafkaSettings(bootstrap=cloud)).items():
        print(f"  site {site}: unreachable, no MirrorMaker heartbeat for {silent:.0f} s "
              f"(the controller holds its robots' leases up to {hold} s)")
