"""Run one of Apache Kafka's own CLI tools on the broker's classpath.

``infra/bin/kafka-topics`` and its siblings exec ``python -m infra.kafka_tools NAME ARGS…``;
this module resolves the jars (once) and replaces itself with the JVM running the tool's
main class, so arguments, output and exit code are exactly Kafka's.
"""

from __future__ import annotations

import os
import sys

from infra.broker import INFRA, Broker, BrokerError

#: Script name (as in Kafka's bin/) → main class, for the pinned Kafka 4.1.
TOOLS: dict[str, str] = {
    "kafka-topics": "org.apache.kafka.tools.TopicCommand",
    "kafka-console-consumer": "org.apache.kafka.tools.consumer.ConsoleConsumer",
    "kafka-console-producer": "org.apache.kafka.tools.ConsoleProducer",
    "kafka-consumer-groups": "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
    "kafka-get-offsets": "org.apache.kafka.tools.GetOffsetShell",
    "kafka-dump-log": "kafka.tools.DumpLogSegments",
    "kafka-configs": "kafka.admin.ConfigCommand",
    "kafka-storage": "kafka.tools.StorageTool",
    "kafka-acls": "org.apache.kafka.tools.AclCommand",
}

#: Each tool's flag naming a client config file (default ``--command-config``).
CONFIG_FLAGS = {"kafka-console-consumer": "--consumer.config",
                "kafka-console-producer": "--producer.config"}


def secure_args(tool: str, args: list[str], broker: Broker) -> list[str]:
    """On the secured cluster (USER_SECURE=1), ``args`` plus the 0600 client config that
    `userctl security init` wrote (operator's SCRAM; the admin's certificate for
    kafka-acls, with the INTERNAL listener as bootstrap) unless the caller gave one."""
    from infra import security

    paths = security.Paths(broker.home)
    if not broker.settings.secure or tool in ("kafka-storage", "kafka-dump-log"):
        return args
    flag = CONFIG_FLAGS.get(tool, "--command-config")
    extra: list[str] = []
    if flag not in args:
        config = paths.admin_properties if tool == "kafka-acls" else paths.client_properties
        extra += [flag, str(config)]
    if "--bootstrap-server" not in args:
        bootstrap = (broker.settings.internal_bootstrap if tool == "kafka-acls"
                     else broker.settings.bootstrap)
        extra += ["--bootstrap-server", bootstrap]
    return [*args, *extra]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in TOOLS:
        print(f"usage: python -m infra.kafka_tools {{{','.join(TOOLS)}}} [ARGS…]", file=sys.stderr)
        return 2
    broker = Broker()
    try:
        java = broker.java()
        broker.ensure_jars(say=lambda m: print(m, file=sys.stderr, flush=True))
    except BrokerError as exc:
        print(f"{argv[0]}: {exc}", file=sys.stderr)
        return 2
    cmd = [
        java, "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
        f"-Dlog4j2.configurationFile={INFRA / 'kafka' / 'tools-log4j2.properties'}",
        "-cp", broker.classpath(), TOOLS[argv[0]], *secure_args(argv[0], argv[1:], broker),
    ]
    os.execv(java, cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
