"""The reward job: a faust-streaming app that scores ``transitions.raw`` into ``transitions``.

One app (one consumer group, ``rewards-<name>-<version>``) per reward function, so
several functions run side by side over the same raw stream and each rewarded row names
its function; more instances of one function share the partitions as a group.  A
rewarded batch goes to the *same partition* number of ``transitions`` as its raw batch
came from, so a site's and a robot's order carries over.

Delivery: **at-least-once**.  faust acknowledges a raw record once the agent has handed
its rewarded batch to the producer, and before committing offsets it flushes the producer
(``processing_guarantee="at_least_once"``).  A crash between the send and the commit
scores the record again, so ``transitions`` may hold a batch twice; the Delta sink drops
such repeats (``pipeline.delta_writer``: a step is written once per reward function, by
step identity, ``topics.tables.HighWater``), so no duplicate reaches Delta.

The scoring itself is :func:`score`, a pure function of a Kafka record; the faust app
around it is a few lines.  Raw batches are validated against the spec their robot
announced on ``robots`` (:class:`topics.robots.RobotSpecs`): one outside its robot's
bounds goes to ``dlq`` (``out_of_bounds``), never to ``transitions``.  For a robot not
announced yet the check holds the stream up to 2 s (at most once per 30 s per robot; that
module's doc).  Rewarded batches are cut to the broker's limit of ``transitions``
(:func:`fit`, as the agents' outbox does); a step too large even alone is dead-lettered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import faust

from pipeline import rewards
from pipeline.tables import user_home
from schemas.events import RejectReason
from schemas.transitions import TransitionBatch
from topics import catalog, limits, robots, serde, validation
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)


#: Most raw records a job takes from faust at once, and how long it waits to fill them:
#: one wake-up of the agent (and one ack round) per take instead of one per record; a take
#: of image batches (~1 MB a record) holds tens of MB.
TAKE_RECORDS = 64
TAKE_WITHIN_S = 0.05
#: Most bytes of records the producer sends to one partition in one request.
PRODUCE_BATCH_BYTES = 1_000_000


def app_id(fn: rewards.Registered, suffix: str = "") -> str:
    """The faust app id (and consumer group) of ``fn``'s job."""
    return f"rewards-{fn.name}-{fn.version}{suffix}".replace("@", "-")


def score(fn: rewards.Registered, record: validation.Record, *, out_topic: str,
          dlq_topic: str, consumer: str = "",
          validate: Callable[[validation.Record], validation.Accepted | validation.Rejected]
          = validation.validate) -> serde.Encoded:
    """The record to publish for one raw record: its rewarded batch on ``out_topic``
    (same partition, same key), or its dead letter on ``dlq_topic``.  ``validate`` checks
    the record (the job passes :meth:`topics.robots.RobotSpecs.validate`: against its
    robot's announced bounds).  Never raises for bad input."""
    # Validate as the catalog topic: a namespaced topic only changes the name.
    result = validate(replace(record, topic=catalog.TRANSITIONS_RAW.name))
    if isinstance(result, validation.Accepted) and isinstance(result.event, TransitionBatch):
        try:
            rewarded = rewards.apply(fn, result.event)
            try:
                encoded = serde.encode(catalog.TRANSITIONS, rewarded)
            except serde.RecordTooLarge as too_large:  # cut to the limit by fit()
                encoded = too_large.record
            return replace(encoded, topic=out_topic, partition=record.partition)
        except (ValueError, ArithmeticError) as exc:  # SchemaError/RewardError included
            reason = getattr(exc, "reason", RejectReason.DECODER_ERROR)
            result = validation.Rejected(record, reason, f"{fn.id}: {exc}")
    elif isinstance(result, validation.Accepted):
        result = validation.Rejected(record, RejectReason.WRONG_TOPIC,
                                     "not a transition batch")
    rejected = replace(result, record=record)
    log.warning("dead letter %s[%d]@%d: %s", record.topic, record.partition, record.offset,
                validation.excerpt(rejected.detail))
    letter = validation.dead_letter(rejected, consumer=consumer)
    return replace(serde.encode(catalog.DLQ, letter), topic=dlq_topic)


def fit(out: serde.Encoded, limit: int, *, dlq_topic: str, consumer: str = ""
        ) -> list[serde.Encoded]:
    """``out`` as records of at most ``limit`` bytes (the topic's ``max.message.bytes``,
    :func:`topics.limits.split_to_fit`): its parts in row order, then a dead letter
    (``oversize``) for each step too large even alone."""
    parts, unsendable = limits.split_to_fit(out, limit)
    for rec in unsendable:
        log.error("%s: a step of %d bytes is over the limit of %d: dead-lettered", rec.topic,
                  limits.record_bytes(rec), limit)
        refused = validation.Rejected(
            validation.Record(rec.topic, -1, -1, rec.value, rec.key, tuple(rec.headers)),
            RejectReason.OVERSIZE, f"{limits.record_bytes(rec)} bytes, over {rec.topic}'s "
            f"max.message.bytes of {limit}")
        letter = validation.dead_letter(refused, consumer=consumer)
        parts.append(replace(serde.encode(catalog.DLQ, letter), topic=dlq_topic))
    return parts


def build_app(kafka: KafkaSettings, fn: rewards.Registered, *, topic_suffix: str = "",
              datadir: Path | None = None) -> faust.App:
    """The faust app that runs ``fn`` over ``transitions.raw`` (+ ``topic_suffix``)."""
    name = app_id(fn, topic_suffix)
    datadir = datadir or user_home() / "faust"
    datadir.mkdir(parents=True, exist_ok=True)
    group = kafka.faust_settings()
    app = faust.App(
        name,
        broker=kafka.faust_broker_url(),
        broker_credentials=kafka.faust_credentials(),  # SASL_SSL on a secured cluster
        datadir=str(datadir / name),
        store="memory://",
        web_enabled=False,
        topic_allow_declare=False,  # topics are made by `userctl topics create`
        topic_disable_leader=True,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # aiokafka keeps one request in flight per partition and batches only records that
        # fit its batch size (16 KiB by default): a rewarded batch is larger, so each record
        # went alone, one broker round trip each.  Batches of up to PRODUCE_BATCH_BYTES
        # (below every topic's record limit here) carry many records per round trip.
        producer_max_batch_size=PRODUCE_BATCH_BYTES,
        producer_max_request_size=kafka.message_max_bytes,
        consumer_max_fetch_size=kafka.message_max_bytes,
        key_serializer="raw",
        value_serializer="raw",
        # The project's session timeout: a killed job's partitions move on within it.
        broker_session_timeout=group["broker_session_timeout"],
        broker_heartbeat_interval=group["broker_heartbeat_interval"],
        broker_rebalance_timeout=group["broker_rebalance_timeout"],
        broker_request_timeout=group["broker_request_timeout"],
    )
    source = app.topic(catalog.TRANSITIONS_RAW.name + topic_suffix, key_type=bytes,
                       value_type=bytes, allow_empty=True)
    out_topic = catalog.TRANSITIONS.name + topic_suffix
    dlq_topic = catalog.DLQ.name + topic_suffix
    # Raw batches are checked against their robot's announced spec (bounds included).
    specs = robots.RobotSpecs(kafka, role=f"{name}-robots", topic_suffix=topic_suffix)
    # Rewarded batches are cut to the broker's limit of the topic (a refused record would
    # fail the records produced with it).
    topic_limits = limits.TopicLimits(kafka, topic_suffix=topic_suffix)

    @app.agent(source)
    async def reward(stream):  # type: ignore[no-untyped-def]
        # Delivery: at-least-once (see the module doc).  Records are taken many at a time
        # (up to TAKE_RECORDS, or what came within TAKE_WITHIN_S); take_events acks the
        # taken records only after this body has handed every rewarded batch of them to
        # the producer, and faust flushes the producer before it commits those offsets.
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(TAKE_RECORDS, within=TAKE_WITHIN_S):
            specs.poll(0.0)
            # The limits come from the broker (cached for minutes, a lookup can take up to
            # its timeout): asked off the event loop, so faust's heartbeats and fetches go on.
            limit_of = {topic: await loop.run_in_executor(None, topic_limits.limit, topic)
                        for topic in (out_topic, dlq_topic)}
            for event in events:
                msg = event.message
                record = validation.Record(
                    topic=msg.topic, partition=msg.partition, offset=msg.offset,
                    value=event.value, key=event.key,
                    headers=tuple((k, v) for k, v in (msg.headers or [])),
                    timestamp_ms=int(msg.timestamp * 1000) if msg.timestamp else None)
                out = score(fn, record, out_topic=out_topic, dlq_topic=dlq_topic,
                            consumer=name, validate=specs.validate)
                limit = limit_of.get(out.topic) or topic_limits.limit(out.topic)
                for part in fit(out, limit, dlq_topic=dlq_topic, consumer=name):
                    await app.producer.send(part.topic, part.key, part.value,
                                            part.partition, None, list(part.headers))

    return app


def run(kafka: KafkaSettings, fn: rewards.Registered, *, topic_suffix: str = "",
        datadir: Path | None = None, loglevel: str = "INFO") -> None:
    """Run ``fn``'s job until SIGTERM/SIGINT (a faust worker in this process)."""
    app = build_app(kafka, fn, topic_suffix=topic_suffix, datadir=datadir)
    log.info("reward job %s: %s%s -> %s%s, kafka %s", fn.id, catalog.TRANSITIONS_RAW.name,
             topic_suffix, catalog.TRANSITIONS.name, topic_suffix, kafka.redacted())
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
