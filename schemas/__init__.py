"""Events: frozen, versioned pydantic models and their Arrow schemas (DESIGN §3).

* :mod:`schemas.spaces` — what a robot observes and accepts (array, camera, robot specs);
* :mod:`schemas.events` — every control event on the common envelope, and the reasons
  a record is refused;
* :mod:`schemas.registry` — (schema name, version) -> model, and upcasters;
* :mod:`schemas.transitions` — numpy transition batches and their one derived Arrow form;
* :mod:`schemas.samples` — example specs and valid batches for tests and benchmarks.

This package imports no other project package.  Import modules, not names:
``from schemas import events; events.HeartbeatV1(...)``.
"""

from schemas import events, registry, samples, spaces, transitions

__all__ = ["events", "registry", "samples", "spaces", "transitions"]
