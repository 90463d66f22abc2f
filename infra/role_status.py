"""What `userctl status` adds to each role: its consumer group's lag and its last error.

* **Lag**: a role that consumes as a group (the Delta sink, a reward job) is mapped to its
  group id from its command line and environment; the lag (records, and the age of the
  oldest unconsumed record) comes from ``topics.lag``, which reads committed offsets, so a
  stopped role's lag keeps growing instead of vanishing.
* **Last error**: the newest ``ERROR``/``CRITICAL`` line (or exception) in the role's log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from infra.supervisor import RoleSpec
from topics import lag
from topics import tables as shared_tables
from topics.settings import KafkaSettings

#: A log line that reports an error (the `userctl` log format, Python tracebacks, faust).
_ERROR = re.compile(r"\b(ERROR|CRITICAL)\b|^Traceback|^\w+(Error|Exception): ")
#: Bytes of a log read from its end to find the last error.
_TAIL_BYTES = 256 * 1024


def role_group(spec: RoleSpec, env: Mapping[str, str]) -> str | None:
    """The consumer group a role commits offsets under, or None if it has none."""
    args = spec.userctl or []
    merged = {**env, **spec.env}
    if args[:1] == ["sink"]:
        return merged.get("USER_SINK_NAME", shared_tables.DEFAULT_SINK_NAME)
    if args[:2] == ["rewards", "run"] and len(args) > 2:
        from pipeline import reward_job, rewards

        try:
            fn = rewards.lookup(args[2])
        except (KeyError, ValueError):
            return None
        return reward_job.app_id(fn)
    return None


def last_error(log: Path, *, max_len: int = 160) -> str:
    """The newest error line of ``log`` (shortened), or "" when there is none."""
    try:
        with log.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - _TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = text.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        line = lines[i].strip()
        if _ERROR.search(line):
            if line.startswith("Traceback"):  # the exception is the last indented-free line
                tail = [x for x in lines[i + 1:] if x and not x.startswith(" ")]
                line = tail[0].strip() if tail else line
            return line if len(line) <= max_len else line[:max_len - 1] + "…"
    return ""


def group_lags(kafka: KafkaSettings, groups: list[str]) -> dict[str, lag.GroupLag]:
    """Lag of each of ``groups`` that has committed offsets; {} when Kafka does not answer."""
    if not groups:
        return {}
    try:
        return {g.group: g for g in lag.group_lags(kafka, groups, timeout_s=5.0)}
    except TimeoutError:
        return {}


def unreachable_sites(kafka: KafkaSettings) -> dict[str, float]:
    """Mirrored sites whose link is down as the controller judges it — their MirrorMaker 2
    heartbeats stopped reaching this (the cloud) broker — with the seconds since the last
    one; {} with one broker (no mirror).  The controller holds such a site's robots and
    leases for up to ``USER_CONTROLLER_SITE_HOLD_S``; a site silent for longer than that
    and 15 minutes is no longer listed."""
    import time

    from pipeline.controller import ControllerSettings
    from pipeline.fleet import Fleet
    from topics import mirror_heartbeats

    settings = ControllerSettings()
    limit = Fleet(settings.heartbeat_timeout_s).link_timeout_s
    heard = mirror_heartbeats.last_heard(kafka, topic=settings.mirror_heartbeats_topic,
                                         lookback_s=max(settings.site_hold_s, 900.0))
    now = time.time()
    return {site: now - t for site, t in sorted(heard.items()) if now - t > limit}
