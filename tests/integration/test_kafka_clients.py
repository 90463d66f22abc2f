"""Both Python Kafka clients USER uses, and transactions, against the real broker."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from confluent_kafka import Consumer, KafkaError, Producer

from tests.conftest import create_topic
from topics.settings import KafkaSettings


def _drain(consumer: Consumer, want: int, timeout_s: float = 30.0) -> list[bytes]:
    """Poll until ``want`` records arrived or the deadline passes."""
    values: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(values) < want and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None:
            continue
        assert msg.error() is None, msg.error()
        values.append(msg.value())
    return values


def test_confluent_kafka_round_trip_keeps_order_per_partition(
    kafka: KafkaSettings, unique: str
) -> None:
    topic = f"ck-{unique}"
    create_topic(kafka, topic)
    producer = Producer(kafka.producer_config())
    for i in range(100):
        producer.produce(topic, key=b"robot-1", value=str(i).encode())
    assert producer.flush(30) == 0
    consumer = Consumer(kafka.consumer_config(f"g-{unique}"))
    consumer.subscribe([topic])
    try:
        assert _drain(consumer, 100) == [str(i).encode() for i in range(100)]
    finally:
        consumer.close()


def test_aiokafka_round_trip(kafka: KafkaSettings, unique: str) -> None:
    topic = f"aio-{unique}"
    create_topic(kafka, topic)

    async def run() -> list[bytes]:
        producer = AIOKafkaProducer(**kafka.aiokafka_kwargs(), enable_idempotence=True)
        await producer.start()
        try:
            for i in range(20):
                await producer.send_and_wait(topic, key=b"k", value=f"aio-{i}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, **kafka.aiokafka_kwargs(), group_id=f"g-{unique}",
            auto_offset_reset="earliest", enable_auto_commit=False,
        )
        await consumer.start()
        got: list[bytes] = []
        try:
            async with asyncio.timeout(30):
                async for msg in consumer:
                    got.append(msg.value)
                    if len(got) == 20:
                        break
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(run()) == [f"aio-{i}".encode() for i in range(20)]


def test_confluent_and_aiokafka_read_each_others_records(
    kafka: KafkaSettings, unique: str
) -> None:
    topic = f"mix-{unique}"
    create_topic(kafka, topic)
    producer = Producer(kafka.producer_config())
    producer.produce(topic, key=b"k", value=b"from librdkafka")
    assert producer.flush(30) == 0

    async def read_one() -> bytes:
        consumer = AIOKafkaConsumer(
            topic, **kafka.aiokafka_kwargs(), group_id=f"g-{unique}",
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            msg = await asyncio.wait_for(consumer.getone(), 30)
            return bytes(msg.value)
        finally:
            await consumer.stop()

    assert asyncio.run(read_one()) == b"from librdkafka"


def test_read_committed_sees_committed_transactions_and_never_aborted_ones(
    kafka: KafkaSettings, unique: str
) -> None:
    topic = f"txn-{unique}"
    create_topic(kafka, topic)
    producer = Producer(kafka.producer_config(transactional_id=f"txn-{unique}"))
    producer.init_transactions(30)

    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, value=f"committed-{i}".encode())
    producer.commit_transaction(30)

    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic, value=f"aborted-{i}".encode())
    producer.flush(30)  # the aborted records really reach the log
    producer.abort_transaction(30)

    producer.begin_transaction()
    producer.produce(topic, value=b"after-abort")
    producer.commit_transaction(30)

    committed = Consumer(kafka.consumer_config(f"rc-{unique}", read_committed=True))
    committed.subscribe([topic])
    uncommitted = Consumer(kafka.consumer_config(f"ru-{unique}", read_committed=False))
    uncommitted.subscribe([topic])
    try:
        seen = _drain(committed, 6)
        assert seen == [f"committed-{i}".encode() for i in range(5)] + [b"after-abort"]
        # nothing more is visible to read_committed, though the log holds the aborted ones
        raw = _drain(uncommitted, 11)
        assert [v for v in raw if v.startswith(b"aborted")] == [
            f"aborted-{i}".encode() for i in range(5)
        ]
        extra = committed.poll(1.0)
        assert extra is None or (extra.error() is not None and (
            extra.error().code() == KafkaError._PARTITION_EOF
        ))
    finally:
        committed.close()
        uncommitted.close()
