"""Learners: policies, algorithms, replay buffers and checkpoints (DESIGN §5).

Modules (import the module, not its names):

- ``learners.core`` — the role interfaces (Policy, Algorithm, Sampler, ReplayBuffer) and
  the data between them (StepBatch, Batch, TrainingState);
- ``learners.policies`` — policy kinds by name and the safetensors weight format; the
  only part agents may import;
- ``learners.replay`` — the in-memory ring buffer and RLPD's mixing sampler;
- ``learners.sac`` — SAC and its RLPD preset;
- ``learners.checkpoint`` — atomic checkpoints with source positions;
- ``learners.loop`` — one experiment's learner (per-robot-type SAC, dedupe, UTD cap,
  weight publishing, checkpoints, metrics) as pure logic over a step source;
- ``learners.service`` — ``userctl learn``: the loop wired to Delta (warm start) and
  Kafka (live steps, robots, weights, metrics);
- ``learners.lineage`` — what each published version trained on (run, warm start, the
  live offsets taken before each update), carried by manifests and checkpoints;
- ``learners.rerun`` — ``userctl replay --learner``: a run replayed from Delta, bit for bit;
- ``learners.outcomes`` — episode outcomes (the policy's own success) for the stop and
  the report (numpy only);
- ``learners.fakes`` — a pure-numpy point-mass task for tests.

This file imports nothing, so ``import learners.policies`` stays light for agents.
"""

__all__ = ["checkpoint", "core", "fakes", "lineage", "loop", "outcomes", "policies", "replay",
           "rerun", "sac", "service"]
