"""Events: frozen, versioned pydantic models and their Arrow schemas (DESIGN §3).

This package imports no other project package.
"""

__all__: list[str] = []
