"""Stream jobs: controller, reward jobs, the Delta sink and replay (DESIGN §1, §4)."""

__all__: list[str] = []
