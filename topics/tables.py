"""The Delta history's shared names: what the sink writes and every reader looks up.

The Delta sink (``pipeline``) writes the history; learners read it.  They may not import
each other (DESIGN §6), so the few names both must agree on live here, beside the topic
catalog: table names, the default history root and sink name, and how the sink names
the app transaction that records how far it has written each Kafka partition.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

#: The rewarded-transitions table: one row per step per reward function (``reward_fn``).
TRANSITIONS: Final = "transitions"

#: Every table is partitioned by this column, so one experiment's history is a prefix.
PARTITION_COLUMN: Final = "experiment_id"

def user_home() -> Path:
    """The state directory every USER process shares (``USER_HOME``; `userctl` sets it)."""
    return Path(os.environ.get("USER_HOME", ".user"))


def default_root() -> Path:
    """Where the tables live unless ``USER_SINK_ROOT`` says otherwise: ``<USER_HOME>/delta``."""
    return user_home() / "delta"

#: The sink's name unless ``USER_SINK_NAME`` says otherwise; it prefixes the app ids.
DEFAULT_SINK_NAME: Final = "delta-sink"


def table_path(root: Path | str, table: str) -> str:
    """Where ``table`` lives under the history ``root``."""
    return str(Path(root) / table)


def app_id(sink_name: str, topic: str, partition: int) -> str:
    """The Delta app-transaction id under which ``sink_name`` records the last offset of
    ``topic``'s ``partition`` it has written (``topic`` as named on the broker)."""
    return f"{sink_name}-{topic}-{partition}"
