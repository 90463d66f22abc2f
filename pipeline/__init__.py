"""Stream jobs: the fleet controller, reward jobs, the Delta sink and replay (DESIGN §1, §4).

Modules: ``fleet`` (registry + scheduler, pure) and ``controller`` (its Kafka process),
``rewards`` (reward plug-ins) and ``reward_job`` (the faust app), ``tables`` (events <->
Delta rows) and ``sink`` (Kafka -> Delta, exactly once), ``history`` (replay, back-fill,
SQL). See ``pipeline/README.md``.
"""

__all__ = ["controller", "fleet", "history", "reward_job", "rewards", "sink", "tables"]
