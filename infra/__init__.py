"""infra: the composition root — CLI, broker, launcher (DESIGN §6)."""

__all__: list[str] = []
