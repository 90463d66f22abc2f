"""Naming of weight streams: one per (experiment, robot type)."""

from __future__ import annotations


def weights_stream(experiment_id: str, robot_type: str) -> str:
    """The id of the weights stream one robot type of an experiment runs.

    A heterogeneous experiment trains one policy per robot type (their observation and
    action spaces differ), so each type's weights are a stream of their own; this id is
    the ``experiment_id`` of its weights chunks, manifests and learner metrics.  An agent
    leased to ``experiment_id`` follows ``weights_stream(experiment_id, its robot type)``.
    """
    return f"{experiment_id}.{robot_type}"
