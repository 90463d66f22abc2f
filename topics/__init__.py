"""Topic specs, Kafka settings and topic administration (DESIGN §2).

Import modules, not names: ``from topics import catalog; catalog.TRANSITIONS_RAW``.
"""

from topics import admin, catalog, settings

__all__ = ["admin", "catalog", "settings"]
