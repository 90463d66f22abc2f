"""What MirrorMaker 2 writes into the cloud, the cloud's faust roles can read.

MM2's producer compresses the batches it writes to the cloud (infra/mirror.py); the reward
job reads ``transitions.raw`` with aiokafka, which decodes zstd/lz4/snappy only with its
optional codec library.  Without it the reward job crashed on every mirrored batch
("UnsupportedCodecError: Libraries for zstd compression codec not found") and the
two-site topology could not learn.
"""

from __future__ import annotations

import asyncio
import re

from aiokafka import AIOKafkaConsumer
from confluent_kafka import Producer

from infra import mirror
from tests.conftest import create_topic
from topics.settings import KafkaSettings


def mm2_compression() -> set[str]:
    """The codecs the edges' MirrorMaker 2 producers are configured with."""
    props = mirror.mm2_properties(mirror.MirrorSettings(
        site="lab-a", edge_bootstrap="edge:9092", cloud_bootstrap="cloud:9192"))
    return set(re.findall(r"producer\.compression\.type\s*=\s*(\S+)", props))


def test_aiokafka_reads_batches_compressed_as_mirrormaker_writes_them(
        kafka: KafkaSettings, unique: str) -> None:
    codecs = mm2_compression()
    assert codecs, "MirrorMaker 2 is expected to compress what crosses the WAN"
    topic = f"mm2-codec-{unique}"
    create_topic(kafka, topic)
    sent = []
    for codec in sorted(codecs):
        producer = Producer({**kafka.producer_config(), "compression.type": codec,
                             "linger.ms": 50})
        values = [f"{codec}-{i}".encode() * 20 for i in range(50)]
        for v in values:
            producer.produce(topic, key=b"robot-1", value=v)
        assert producer.flush(30) == 0
        sent += values

    async def read_all() -> list[bytes]:
        consumer = AIOKafkaConsumer(topic, **kafka.aiokafka_kwargs(), group_id=f"g-{unique}",
                                    auto_offset_reset="earliest", enable_auto_commit=False)
        await consumer.start()
        got: list[bytes] = []
        try:
            while len(got) < len(sent):
                batch = await asyncio.wait_for(consumer.getmany(timeout_ms=1000), 30)
                got += [bytes(m.value) for msgs in batch.values() for m in msgs]
        finally:
            await consumer.stop()
        return got

    assert asyncio.run(read_all()) == sent
