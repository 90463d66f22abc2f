"""`userctl broker start|stop|status|logs` — the local Kafka broker."""

from __future__ import annotations

import argparse
import os
import sys
import time

from infra.broker import Broker, BrokerSettings

BOOTSTRAP_ENV = "USER_KAFKA_BOOTSTRAP"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broker", help="run the local Apache Kafka broker (KRaft)")
    bsub = p.add_subparsers(dest="broker_cmd", required=True)
    s = bsub.add_parser("start", help="start the broker (idempotent) and wait until it answers")
    s.add_argument("--secure", action="store_true",
                   help="SASL_SSL + ACLs (as USER_SECURE=1): makes certificates and users "
                   "first if missing (`userctl security init`)")
    s.set_defaults(func=_start)
    s = bsub.add_parser("run", help="start the broker and stay in the foreground until "
                        "SIGTERM/SIGINT, then stop it (a role under `userctl up`)")
    s.set_defaults(func=_run)
    s = bsub.add_parser("stop", help="stop gracefully, then forcefully after a timeout")
    s.set_defaults(func=_stop)
    s = bsub.add_parser("status", help="is it running and answering?")
    s.set_defaults(func=_status)
    s = bsub.add_parser("logs", help="print the broker log")
    s.add_argument("-n", "--lines", type=int, default=50, help="lines from the end (default 50)")
    s.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    s.set_defaults(func=_logs)
    s = bsub.add_parser("classpath", help="print the Kafka classpath (resolving jars if needed)")
    s.set_defaults(func=_classpath)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _external() -> str | None:
    """The user's own cluster, if USER_KAFKA_BOOTSTRAP names one."""
    return os.environ.get(BOOTSTRAP_ENV) or None


def _start(args: argparse.Namespace) -> int:
    external = _external()
    broker = Broker(BrokerSettings(secure=True) if args.secure else BrokerSettings())
    if external and external != broker.settings.bootstrap:
        print(f"{BOOTSTRAP_ENV}={external} is set: using that cluster, not starting a local broker")
        return 0
    if broker.settings.secure:
        from infra import security
        from topics.settings import KafkaSettings

        running = broker.pid()
        security.start_secure(broker, KafkaSettings().sites.sites, say=_say)
        print(f"Kafka {broker.version} is up{' (already running)' if running else ''} with "
              f"SASL_SSL on {broker.settings.bootstrap} (admin: mutual TLS on "
              f"{broker.settings.internal_bootstrap})")
        print("clients: eval \"$(userctl security env operator)\"  (or agent-<site>, learner, …)")
        return 0
    result = broker.start(say=_say)
    if result.already_running:
        print(f"Kafka is already running (pid {result.pid}) on {broker.settings.bootstrap}")
    else:
        print(f"Kafka {broker.version} is up (pid {result.pid}) on {broker.settings.bootstrap}")
    if broker.settings.bootstrap != "127.0.0.1:9092" and not external:
        print(f"clients: export {BOOTSTRAP_ENV}={broker.settings.bootstrap}")
    return 0


def _run(args: argparse.Namespace) -> int:
    """The broker of this USER_HOME as a supervised role: its lifetime is this process's."""
    import signal

    broker = Broker(BrokerSettings())
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    result = broker.start(say=_say)
    print(f"Kafka {broker.version} is up (pid {result.pid}) on {broker.settings.bootstrap}; "
          "stops with this process", flush=True)
    while not stopping:
        if broker.pid() is None:
            print(f"userctl: Kafka (pid {result.pid}) exited; see {broker.log_file}",
                  file=sys.stderr)
            return 1
        time.sleep(0.5)
    broker.stop(say=_say)
    return 0


def _stop(args: argparse.Namespace) -> int:
    broker = Broker(BrokerSettings())
    if broker.stop(say=_say):
        print("Kafka stopped")
    else:
        print("Kafka is not running")
    return 0


def _status(args: argparse.Namespace) -> int:
    broker = Broker(BrokerSettings())
    st = broker.status()
    external = _external()
    if external and external != st.bootstrap:
        from infra.broker import topic_count

        n = topic_count(external)
        state = f"answering, {n} topics" if n is not None else "NOT answering"
        print(f"external cluster {external} ({BOOTSTRAP_ENV}): {state}")
        return 0 if n is not None else 1
    if not st.running:
        print(f"Kafka {st.version}: stopped (data: {st.data_dir})")
        return 3
    answer = f"answering, {st.topics} topics" if st.answering else "NOT answering"
    print(f"Kafka {st.version}: running (pid {st.pid}) on {st.bootstrap}, {answer}")
    print(f"data: {st.data_dir}")
    return 0 if st.answering else 1


def _logs(args: argparse.Namespace) -> int:
    broker = Broker(BrokerSettings())
    path = broker.log_file
    if not path.exists():
        print(f"no broker log yet at {path}; start the broker with `userctl broker start`")
        return 1
    with path.open("rb") as f:
        lines = f.read().decode(errors="replace").splitlines()
        for line in lines[-args.lines:] if args.lines > 0 else []:
            print(line)
        if not args.follow:
            return 0
        try:
            while True:
                chunk = f.readline()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.3)
        except KeyboardInterrupt:
            return 0


def _classpath(args: argparse.Namespace) -> int:
    broker = Broker(BrokerSettings())
    broker.ensure_jars(say=_say)
    print(broker.classpath())
    return 0
