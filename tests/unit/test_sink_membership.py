"""The sink rebuilds a group consumer that stays out of its group while the broker answers
(seen after a broker restart in the docker e2e tier), never because of an outage alone."""

from __future__ import annotations

from pipeline.sink import Membership


def test_a_consumer_out_of_its_group_while_the_broker_answers_is_stuck_after_the_limit() -> None:
    m = Membership(after_s=60.0)
    for t in range(0, 60, 5):
        m.observe(in_group=False, broker_answers=True, now=float(t))
        assert not m.stuck(float(t))
    m.observe(in_group=False, broker_answers=True, now=60.0)
    assert m.stuck(60.0)


def test_a_broker_outage_alone_never_makes_the_consumer_stuck() -> None:
    m = Membership(after_s=60.0)
    for t in range(0, 600, 5):
        m.observe(in_group=False, broker_answers=False, now=float(t))
        assert not m.stuck(float(t))


def test_an_outage_or_a_rejoin_restarts_the_clock() -> None:
    m = Membership(after_s=60.0)
    m.observe(in_group=False, broker_answers=True, now=0.0)
    m.observe(in_group=False, broker_answers=False, now=50.0)  # outage: not the consumer's fault
    m.observe(in_group=False, broker_answers=True, now=55.0)
    assert not m.stuck(100.0)
    assert m.stuck(115.0)
    m.observe(in_group=True, broker_answers=True, now=116.0)
    assert not m.stuck(500.0)
