"""Stream jobs: the fleet controller, reward jobs, the Delta sink and replay (DESIGN §1, §4).

Modules: ``fleet`` (registry + scheduler, pure) and ``controller`` (its Kafka process),
``rewards`` (reward plug-ins) and ``reward_job`` (the faust app), ``tables`` (events <->
Delta rows), ``delta_writer`` (rows + app transactions into Delta, exactly once; no Kafka)
and ``sink`` (its Kafka runner), ``history`` (replay, back-fill, SQL). See ``pipeline/README.md``.
"""

__all__ = [
    "controller", "delta_writer", "fleet", "history", "reward_job", "rewards", "sink", "tables",
]
