"""Topic specs, Kafka settings, serde and the thin Kafka shells (DESIGN §2–3).

Import modules, not names: ``from topics import catalog; catalog.TRANSITIONS_RAW``.

* :mod:`topics.catalog`, :mod:`topics.settings`, :mod:`topics.admin` — topics as code;
* :mod:`topics.serde` — encode/decode any event by topic spec, with schema headers;
* :mod:`topics.validation` — accept or refuse one record (pure), dead letters;
* :mod:`topics.producer`, :mod:`topics.consumer` — confluent-kafka shells.
"""

from topics import admin, catalog, consumer, producer, serde, settings, validation

__all__ = ["admin", "catalog", "consumer", "producer", "serde", "settings", "validation"]
