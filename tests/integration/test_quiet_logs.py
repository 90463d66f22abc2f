"""librdkafka's own log lines go through Python logging, never raw onto stderr."""

from __future__ import annotations

import logging
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.conftest import free_port
from topics.settings import KafkaSettings


def test_librdkafka_lines_reach_python_logging_and_not_the_console(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:
    # Nothing listens on this port: librdkafka logs connection failures (%3|…|FAIL|…).
    settings = KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}")
    caplog.set_level(logging.DEBUG, logger="librdkafka")
    consumer = Consumer(settings.consumer_config("quiet-logs", role="test"))
    try:
        consumer.assign([TopicPartition("nothing-here", 0, 0)])
        deadline = time.monotonic() + 20
        while not any(r.name == "librdkafka" and r.levelno >= logging.WARNING
                  for r in caplog.records):
            assert time.monotonic() < deadline, "librdkafka logged nothing in 20 s"
            consumer.poll(0.2)
    finally:
        consumer.close()
    logged = [r for r in caplog.records if r.name == "librdkafka"]
    # A refused connection is an error to librdkafka (syslog 3): logged as one, not lost.
    assert any(r.levelno >= logging.WARNING for r in logged), [r.getMessage() for r in logged]
    captured = capfd.readouterr()
    assert "%3|" not in captured.err and "%4|" not in captured.err
    assert "%3|" not in captured.out and "%4|" not in captured.out
