"""Make the catalog's topics on a broker and compare them with their specs.

``ensure_topics`` is idempotent: it creates what is missing, leaves what matches, and
reports (or, with ``alter=True``, fixes) any existing topic whose config differs from
its spec.  Partitions can be added but never removed, so a topic with more partitions
than its spec is reported and left alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import cast

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from topics.catalog import CATALOG, TopicSpec
from topics.settings import LIBRDKAFKA_LOG, KafkaSettings


class BrokerUnreachableError(RuntimeError):
    """No broker answered at the configured bootstrap address."""

    def __init__(self, bootstrap: str, detail: str = "") -> None:
        super().__init__(
            f"no Kafka broker answers at {bootstrap}"
            + (f" ({detail})" if detail else "")
            + "; start one with `userctl broker start` or point USER_KAFKA_BOOTSTRAP at yours"
        )
        self.bootstrap = bootstrap


class BrokerAuthError(BrokerUnreachableError):
    """The broker answered but refused who we are (SASL or TLS): one actionable line."""

    def __init__(self, bootstrap: str, principal: str, detail: str) -> None:
        RuntimeError.__init__(
            self, f"Kafka at {bootstrap} refused {principal}: {detail}; check "
            "USER_KAFKA_SASL_USERNAME / USER_KAFKA_SASL_PASSWORD_FILE (`userctl security env "
            "<role>`) or rerun `userctl security init`")
        self.bootstrap = bootstrap
        self.principal = principal


#: librdkafka errors that mean "we were refused", not "nobody answered".
_AUTH_ERRORS = {KafkaError._AUTHENTICATION: "authentication failed (wrong password?)",
                KafkaError._SSL: "the TLS handshake failed (wrong CA or certificate?)"}


class _Admin(AdminClient):
    """An AdminClient that remembers the last authentication/TLS error librdkafka reported."""

    refused: str | None = None

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in _AUTH_ERRORS:
            self.refused = _AUTH_ERRORS[err.code()]


class State(StrEnum):
    CREATED = "created"
    OK = "ok"
    DRIFT = "drift"
    ALTERED = "altered"
    MISSING = "missing"


@dataclass(frozen=True)
class Difference:
    """One setting where broker and spec disagree."""

    setting: str
    spec: str
    broker: str


@dataclass(frozen=True)
class TopicReport:
    """What the broker holds for one spec, and what (if anything) was done about it."""

    spec: TopicSpec
    state: State
    partitions_spec: int
    partitions_broker: int | None
    configs_broker: dict[str, str] = field(default_factory=dict)
    differences: tuple[Difference, ...] = ()


def admin_client(settings: KafkaSettings) -> AdminClient:
    holder: list[_Admin] = []

    def on_error(err: KafkaError) -> None:
        if holder:
            holder[0]._on_error(err)

    conf: dict[str, object] = {**settings.admin_config(), "error_cb": on_error}
    # confluent-kafka's stub types an admin config as scalars only; librdkafka takes
    # ``error_cb`` like every client does.
    client = _Admin(cast("dict[str, str | int | float | bool]", conf), logger=LIBRDKAFKA_LOG)
    holder.append(client)
    return client


def wait_for_broker(admin: AdminClient, settings: KafkaSettings, timeout_s: float = 10.0) -> None:
    """Return once the cluster answers a metadata request; else raise
    :class:`BrokerAuthError` (it refused our credentials) or BrokerUnreachableError."""
    # Ask in short slices: a refusal (reported through the error callback) ends the wait
    # at once instead of after the whole timeout.
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic())))
            return
        except KafkaException as exc:
            admin.poll(0)  # serve the error callbacks: was it a refusal?
            refused = getattr(admin, "refused", None)
            if refused:
                raise BrokerAuthError(settings.bootstrap, settings.principal, refused) from None
            if time.monotonic() >= deadline:
                raise BrokerUnreachableError(settings.bootstrap, str(exc.args[0])) from None


def _broker_state(
    admin: AdminClient, names: Sequence[str], timeout_s: float
) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    metadata = admin.list_topics(timeout=timeout_s)
    partitions = {
        name: len(meta.partitions)
        for name, meta in metadata.topics.items()
        if name in names and meta.error is None
    }
    configs: dict[str, dict[str, str]] = {}
    if partitions:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in partitions]
        for resource, future in admin.describe_configs(resources).items():
            entries = future.result(timeout=timeout_s)
            configs[resource.name] = {k: str(v.value) for k, v in entries.items()}
    return partitions, configs


def _differences(
    spec: TopicSpec, settings: KafkaSettings, partitions: int, configs: dict[str, str]
) -> tuple[Difference, ...]:
    diffs = []
    want = spec.partition_count(settings.sites)
    if partitions != want:
        diffs.append(Difference("partitions", str(want), str(partitions)))
    for key, value in spec.topic_configs().items():
        have = configs.get(key, "")
        if have != value:
            diffs.append(Difference(key, value, have))
    return tuple(diffs)


def describe_topics(
    settings: KafkaSettings,
    specs: Iterable[TopicSpec] = CATALOG,
    *,
    admin: AdminClient | None = None,
    timeout_s: float = 10.0,
) -> list[TopicReport]:
    """Compare each spec with the broker; changes nothing."""
    admin = admin or admin_client(settings)
    specs = list(specs)
    wait_for_broker(admin, settings, timeout_s)
    partitions, configs = _broker_state(admin, [s.name for s in specs], timeout_s)
    reports = []
    for spec in specs:
        want = spec.partition_count(settings.sites)
        if spec.name not in partitions:
            reports.append(TopicReport(spec, State.MISSING, want, None))
            continue
        diffs = _differences(spec, settings, partitions[spec.name], configs[spec.name])
        reports.append(
            TopicReport(
                spec,
                State.DRIFT if diffs else State.OK,
                want,
                partitions[spec.name],
                configs[spec.name],
                diffs,
            )
        )
    return reports


def ensure_topics(
    settings: KafkaSettings,
    specs: Iterable[TopicSpec] = CATALOG,
    *,
    alter: bool = False,
    admin: AdminClient | None = None,
    timeout_s: float = 30.0,
) -> list[TopicReport]:
    """Create every missing topic; report (or with ``alter``, fix) those that drifted.

    Idempotent: a second call creates nothing and reports every topic ``ok``.  Raises
    :class:`BrokerUnreachableError` when no broker answers.
    """
    admin = admin or admin_client(settings)
    specs = list(specs)
    reports = describe_topics(settings, specs, admin=admin, timeout_s=timeout_s)
    missing = [r.spec for r in reports if r.state is State.MISSING]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    s.name,
                    num_partitions=s.partition_count(settings.sites),
                    replication_factor=settings.replication_factor,
                    config=s.topic_configs(),
                )
                for s in missing
            ],
            operation_timeout=timeout_s,
        )
        for name, future in futures.items():
            try:
                future.result(timeout=timeout_s)
            except KafkaException as exc:
                # Another process created it between our describe and create: fine.
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise RuntimeError(f"could not create topic {name!r}: {exc.args[0]}") from None
    if alter:
        for report in reports:
            if report.state is State.DRIFT:
                _alter(admin, settings, report, timeout_s)
    after = describe_topics(settings, specs, admin=admin, timeout_s=timeout_s)
    created = {s.name for s in missing}
    altered = {r.spec.name for r in reports if r.state is State.DRIFT and alter}
    result = []
    for report in after:
        if report.spec.name in created and report.state is State.OK:
            report = TopicReport(
                report.spec, State.CREATED, report.partitions_spec, report.partitions_broker,
                report.configs_broker,
            )
        elif report.spec.name in altered and report.state is State.OK:
            report = TopicReport(
                report.spec, State.ALTERED, report.partitions_spec, report.partitions_broker,
                report.configs_broker,
            )
        result.append(report)
    return result


def _alter(
    admin: AdminClient, settings: KafkaSettings, report: TopicReport, timeout_s: float
) -> None:
    spec = report.spec
    entries = [
        ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)
        for key, value in spec.topic_configs().items()
    ]
    resource = ConfigResource(ConfigResource.Type.TOPIC, spec.name, incremental_configs=entries)
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(timeout=timeout_s)
    want = spec.partition_count(settings.sites)
    if report.partitions_broker is not None and report.partitions_broker < want:
        for future in admin.create_partitions([NewPartitions(spec.name, want)]).values():
            future.result(timeout=timeout_s)
