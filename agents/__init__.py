"""Robot agents: hardware abstraction, simulated robots and the agent process (DESIGN §1).

Modules: ``robot`` (the interface), ``registry`` (types by name), ``safety`` (clipping and
the e-stop), ``validation`` (start-up probe), ``pacing`` (real-time control periods),
``host`` (several robots on one clock), ``policies`` (random and scripted), ``sim``
(MuJoCo arms; imports MuJoCo), ``worker`` (one robot under leases and commands),
``spool`` + ``outbox`` (ordered, bounded, on-disk delivery), ``weights`` (learned policies
swapped in), ``agent`` (the process, with its Kafka adapters). See ``agents/README.md``.
"""

from agents import host, pacing, policies, registry, robot, safety, validation

__all__ = ["host", "pacing", "policies", "registry", "robot", "safety", "validation"]
