"""The Delta history, reused: replay to a topic, back-fill a reward, ask in SQL (DESIGN §4).

* :func:`replay` republishes an experiment's raw steps from ``transitions_raw`` to a
  topic, stream by stream (robot incarnation) in the order taken (original batches,
  original event ids and step identities), so a new stream job or learner can consume a
  past experiment.
* :func:`backfill` scores the history with another reward function and writes the rows
  to ``transitions`` next to the existing ones (each row names its ``reward_fn``).  It
  writes only steps that function does not hold yet — by step identity, the one dedupe
  rule of ``topics.tables`` — stream by stream in the order taken, in commits that each
  carry an app transaction, so it can be stopped and rerun: nothing is written twice,
  nothing of another function is touched.
* :func:`sql` runs DuckDB SQL over every table (``transitions_raw``, ``transitions``,
  ``episodes``, ``policies``) as Arrow datasets; other readers (polars, Spark, pandas via
  ``deltalake``) read the same tables without this code.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake

from pipeline import rewards, tables
from pipeline.delta_writer import open_table
from topics import catalog, limits, serde
from topics import tables as contract
from topics.producer import EventProducer
from topics.settings import KafkaSettings

log = logging.getLogger(__name__)

#: Rows per back-fill commit.
BACKFILL_CHUNK_ROWS = 50_000


class HistoryError(LookupError):
    """A table or experiment that is not in the history; the message says what to do."""


def _table(root: Path | str, name: str) -> DeltaTable:
    dt = open_table(tables.table_path(root, name))
    if dt is None:
        raise HistoryError(f"no Delta table {name!r} under {root}; is the sink writing there "
                           "(`userctl sink --root …`)?")
    return dt


def experiment_rows(root: Path | str, table: str, experiment: str,
                    columns: list[str] | None = None) -> pa.Table:
    """All rows of ``experiment`` in ``table`` (a partition read)."""
    dataset = _table(root, table).to_pyarrow_dataset()
    return dataset.to_table(columns=columns, filter=ds.field("experiment_id") == experiment)


# -- replay -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayReport:
    topic: str
    batches: int
    steps: int
    robots: tuple[str, ...]
    too_large: int = 0
    """steps not sent: one step alone is larger than the topic's ``max.message.bytes``."""


def _partitions_of(kafka: KafkaSettings, topic: str) -> int:
    from confluent_kafka.admin import AdminClient

    meta = AdminClient(kafka.admin_config()).list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise HistoryError(f"topic {topic!r} does not exist on {kafka.bootstrap}; create it "
                           "first (e.g. `infra/bin/kafka-topics --create --topic …`)")
    return len(meta.partitions)


def replay(kafka: KafkaSettings, root: Path | str, experiment: str, to_topic: str,
           *, producer: EventProducer | None = None) -> ReplayReport:
    """Publish ``experiment``'s raw batches to ``to_topic`` (``transitions.raw`` wire form,
    key ``site/robot``).  The partition is the robot's site partition when the topic has
    enough partitions, else Kafka's key hash: either way one robot stays on one partition,
    in the order it took its steps."""
    data = experiment_rows(root, tables.TRANSITIONS_RAW, experiment)
    if data.num_rows == 0:
        raise HistoryError(f"experiment {experiment!r} has no rows in "
                           f"{tables.TRANSITIONS_RAW}")
    by_site = _partitions_of(kafka, to_topic) >= kafka.sites.partition_count
    own = producer is None
    out = producer or EventProducer(kafka, role="replay")
    # Batches are cut to the topic's limit as the broker has it (a refused record would
    # fail the records produced with it).
    limit = limits.TopicLimits(kafka).limit(to_topic, catalog.TRANSITIONS_RAW.max_message_bytes)
    batches = steps = too_large = 0
    robots: set[str] = set()
    for batch in tables.batches_from_rows(data):
        try:
            rec = serde.encode(catalog.TRANSITIONS_RAW, batch,
                               sites=kafka.sites if by_site else None)
        except serde.RecordTooLarge as exc:  # over the catalog's limit: cut below
            rec = exc.record
        parts, unsendable = limits.split_to_fit(replace(rec, topic=to_topic), limit)
        too_large += len(unsendable)
        for part in parts:
            while True:
                try:
                    out.send_encoded(part)
                    break
                except BufferError:  # local queue full: let it drain
                    out.flush()
            batches += 1
        steps += len(batch) - len(unsendable)
        robots.add(batch.robot_id)
    out.flush()
    if too_large:
        log.error("%d steps of %s not replayed: each alone is larger than %s's limit of %d "
                  "bytes", too_large, experiment, to_topic, limit)
    if own:
        log.info("replayed %d batches (%d steps) of %s to %s", batches, steps, experiment,
                 to_topic)
    return ReplayReport(to_topic, batches, steps, tuple(sorted(robots)), too_large)


# -- back-fill ----------------------------------------------------------------------------


@dataclass
class BackfillReport:
    reward_fn: str
    steps: int = 0
    commits: int = 0
    skipped: int = 0
    robots: dict[str, int] = field(default_factory=dict)


def high_water(root: Path | str, experiment: str, reward_fn: str) -> contract.HighWater:
    """The dedupe marks of ``reward_fn``'s rows of ``experiment`` in ``transitions``."""
    marks = contract.HighWater()
    dt = open_table(tables.table_path(root, tables.TRANSITIONS))
    if dt is None:
        return marks
    dataset = dt.to_pyarrow_dataset()
    columns = [c for c in (*contract.STREAM, "seq", "observed_ns") if c in dataset.schema.names]
    marks.load(dataset.to_table(
        columns=columns,
        filter=(ds.field("experiment_id") == experiment) & (ds.field("reward_fn") == reward_fn)))
    return marks


def _rewarded_rows(fn: rewards.Registered, raw: pa.Table) -> Iterator[pa.Table]:
    # A robot's steps sit on one partition; in `transitions` they keep its number, and
    # offset -1 marks rows written by a back-fill rather than read from Kafka.
    parts = raw.group_by("robot_id").aggregate([("kafka_partition", "max")])
    partition_of = dict(zip(parts.column("robot_id").to_pylist(),
                            parts.column("kafka_partition_max").to_pylist(), strict=True))
    for batch in tables.batches_from_rows(raw):
        yield tables.batch_rows(rewards.apply(fn, batch),
                                tables.Source("backfill", int(partition_of[batch.robot_id]), -1))


def backfill(root: Path | str, experiment: str, fn: rewards.Registered) -> BackfillReport:
    """Write ``fn``'s rewards for every raw step of ``experiment`` that ``transitions``
    does not yet hold for ``fn``.  Idempotent and resumable; rows of other reward
    functions are never read or rewritten."""
    raw = experiment_rows(root, tables.TRANSITIONS_RAW, experiment)
    report = BackfillReport(fn.id)
    if raw.num_rows == 0:
        raise HistoryError(f"experiment {experiment!r} has no rows in {tables.TRANSITIONS_RAW}")
    raw = contract.sort_steps(contract.with_step_id(raw))
    keep = high_water(root, experiment, fn.id).fresh(
        raw.column("seq").to_numpy(), experiment_id=experiment,
        robot_id=raw.column("robot_id").to_numpy(zero_copy_only=False),
        incarnation=raw.column("incarnation").to_numpy(zero_copy_only=False), reward_fn=fn.id)
    report.skipped = int((~keep).sum())
    raw = raw.filter(pa.array(keep))
    path = tables.table_path(root, tables.TRANSITIONS)
    app_id = contract.backfill_app_id(experiment, fn.id)
    pending: list[pa.Table] = []
    rows = 0

    def commit() -> None:
        nonlocal pending, rows
        if not pending:
            return
        dt = open_table(path)
        version = (dt.transaction_version(app_id) or 0) + 1 if dt is not None else 1
        data = pa.concat_tables(pending, promote_options="permissive")
        write_deltalake(dt if dt is not None else path, data, mode="append",
                        schema_mode="merge", partition_by=list(tables.PARTITION_BY),
                        commit_properties=CommitProperties(
                            app_transactions=[Transaction(app_id, version)]))
        report.commits += 1
        report.steps += data.num_rows
        for r, n in zip(*np.unique(data.column("robot_id").to_numpy(zero_copy_only=False),
                                   return_counts=True), strict=True):
            report.robots[str(r)] = report.robots.get(str(r), 0) + int(n)
        pending, rows = [], 0

    for part in _rewarded_rows(fn, raw):
        pending.append(part)
        rows += part.num_rows
        if rows >= BACKFILL_CHUNK_ROWS:
            commit()
    commit()
    return report


# -- SQL ----------------------------------------------------------------------------------

#: Success rate and mean return per robot per policy version, from ``transitions``.
#: An episode succeeds if any of its steps does; its policy version is its first step's.
SUCCESS_BY_ROBOT_AND_VERSION = """
WITH ep AS (
  SELECT robot_id, episode_id, min(policy_version) AS policy_version,
         bool_or(success) AS success, sum(reward) AS episode_return, count(*) AS steps
  FROM transitions
  WHERE experiment_id = $experiment AND reward_fn = $reward_fn
  GROUP BY robot_id, episode_id)
SELECT robot_id, policy_version, count(*) AS episodes,
       round(avg(CAST(success AS INTEGER)), 3) AS success_rate,
       round(avg(episode_return), 3) AS mean_return, CAST(sum(steps) AS BIGINT) AS steps
FROM ep GROUP BY robot_id, policy_version ORDER BY robot_id, policy_version
"""


#: Intervention rate per robot per policy version, from ``transitions_raw`` (the executed
#: action's flag; demo episodes — incarnations starting with ``$demo_prefix`` — left out).
INTERVENTIONS_BY_ROBOT_AND_VERSION = """
SELECT robot_id, policy_version, count(DISTINCT episode_id) AS episodes,
       count(*) AS steps, CAST(sum(CAST(intervention AS INTEGER)) AS BIGINT) AS interventions,
       round(avg(CAST(intervention AS INTEGER)), 4) AS intervention_rate
FROM transitions_raw
WHERE experiment_id = $experiment AND NOT starts_with(incarnation, $demo_prefix)
GROUP BY robot_id, policy_version ORDER BY robot_id, policy_version
"""

#: Per policy version, all robots together (the HG-DAgger report: does each version need
#: the operator less and succeed more?): steps and interventions from ``transitions_raw``
#: (demos left out); episodes, success rate (``$reward_fn``'s success on any step) and
#: autonomous success rate (a success no human touched) from ``transitions``.  An episode
#: counts for the version that chose most of its steps (versions change mid-episode when
#: the learner publishes); success is NULL for a version that led no episode.
BY_VERSION = """
WITH raw AS (
  SELECT robot_id, episode_id, policy_version, intervention FROM transitions_raw
  WHERE experiment_id = $experiment AND NOT starts_with(incarnation, $demo_prefix)),
steps AS (
  SELECT policy_version, count(*) AS steps,
         CAST(sum(CAST(intervention AS INTEGER)) AS BIGINT) AS interventions
  FROM raw GROUP BY policy_version),
ep_version AS (
  SELECT robot_id, episode_id, policy_version,
         row_number() OVER (PARTITION BY robot_id, episode_id
                            ORDER BY count(*) DESC, policy_version) AS rank
  FROM raw GROUP BY robot_id, episode_id, policy_version),
ep AS (
  SELECT v.robot_id, v.episode_id, v.policy_version, t.taken
  FROM ep_version v JOIN (SELECT robot_id, episode_id, bool_or(intervention) AS taken
                          FROM raw GROUP BY robot_id, episode_id) t
       USING (robot_id, episode_id)
  WHERE v.rank = 1),
won AS (
  SELECT robot_id, episode_id, bool_or(success) AS success FROM transitions
  WHERE experiment_id = $experiment AND reward_fn = $reward_fn
  GROUP BY robot_id, episode_id),
per AS (
  SELECT ep.policy_version, count(*) AS episodes,
         avg(CAST(coalesce(won.success, false) AS INTEGER)) AS success_rate,
         avg(CAST(coalesce(won.success, false) AND NOT ep.taken AS INTEGER))
           AS autonomous_success_rate,
         avg(CAST(ep.taken AS INTEGER)) AS taken_over_rate
  FROM ep LEFT JOIN won USING (robot_id, episode_id) GROUP BY ep.policy_version)
SELECT s.policy_version, coalesce(p.episodes, 0) AS episodes, s.steps, s.interventions,
       round(s.interventions / s.steps, 4) AS intervention_rate,
       round(p.taken_over_rate, 3) AS episodes_taken_over,
       round(p.success_rate, 3) AS success_rate,
       round(p.autonomous_success_rate, 3) AS autonomous_success_rate
FROM steps s LEFT JOIN per p USING (policy_version) ORDER BY s.policy_version
"""

#: The same over time: per robot, per ``$bucket_s`` seconds of ``observed_ns``.
INTERVENTIONS_OVER_TIME = """
WITH s AS (
  SELECT robot_id, intervention, policy_version,
         -- BIGINT: a bound integer parameter is INT32 to DuckDB, and 3 s in ns is not.
         (observed_ns - min(observed_ns) OVER ()) // (CAST($bucket_s AS BIGINT) * 1000000000)
           AS bucket
  FROM transitions_raw
  WHERE experiment_id = $experiment AND NOT starts_with(incarnation, $demo_prefix))
SELECT robot_id, CAST(bucket * $bucket_s AS BIGINT) AS from_s, count(*) AS steps,
       min(policy_version) AS first_version, max(policy_version) AS last_version,
       round(avg(CAST(intervention AS INTEGER)), 4) AS intervention_rate
FROM s GROUP BY robot_id, bucket ORDER BY robot_id, bucket
"""


def sql(root: Path | str, query: str, params: dict[str, object] | None = None) -> pa.Table:
    """Run DuckDB ``query`` with every existing history table as a view of its name."""
    import duckdb

    con = duckdb.connect()
    try:
        for name in tables.TABLE_OF_TOPIC.values():
            dt = open_table(tables.table_path(root, name))
            if dt is not None:
                con.register(name, dt.to_pyarrow_dataset())
        relation = con.sql(query, params=params or None)
        if relation is None:  # a statement that returns no rows
            return pa.table({})
        result: pa.Table = relation.to_arrow_table()
        return result
    finally:
        con.close()
