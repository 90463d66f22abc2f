"""Schema registry: (schema name, version) -> model, and upcasters between versions.

Readers accept every version ever written.  A payload of an old version is upcast one
version at a time by plain functions on its JSON object (``dict -> dict``, the
``eventsourcing`` library's approach) until it reaches the newest model, which then
validates it.  A record of a version newer than the reader knows is refused, never
guessed at.

Adding ``HeartbeatV2``::

    def heartbeat_v1_to_v2(payload: dict[str, object]) -> dict[str, object]:
        return {**payload, "battery": None}

    REGISTRY.register(HeartbeatV2, upcast_from_previous=heartbeat_v1_to_v2)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from pydantic import ValidationError

from schemas.events import (
    ALL_V1,
    V1_INCARNATION,
    Envelope,
    RejectReason,
    RewardedTransitionBatchV2,
    SchemaError,
    TransitionBatchV2,
    schema_id,
)

#: Turns a payload of version N into one of version N + 1 (``schema_version`` is set by
#: the registry, the function need not touch it).
Upcaster = Callable[[dict[str, object]], dict[str, object]]


class Registry:
    """The models and upcasters a reader knows.  Not thread-safe while registering."""

    def __init__(self, models: Iterable[type[Envelope]] = ()) -> None:
        self._models: dict[tuple[str, int], type[Envelope]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}
        self._latest: dict[str, int] = {}
        for model in models:
            self.register(model)

    def copy(self) -> Registry:
        """An independent registry with the same models and upcasters."""
        other = Registry()
        other._models = dict(self._models)
        other._upcasters = dict(self._upcasters)
        other._latest = dict(self._latest)
        return other

    def register(self, model: type[Envelope], *, upcast_from_previous: Upcaster | None = None
                 ) -> None:
        """Add ``model``.  Version N > 1 needs an upcaster from version N - 1.

        Raises ``ValueError`` on a duplicate, a gap in versions or a missing upcaster.
        """
        name, version = schema_id(model)
        if (name, version) in self._models:
            raise ValueError(f"schema {name} v{version} is registered twice")
        if version < 1:
            raise ValueError(f"schema {name}: versions start at 1, not {version}")
        if version > 1:
            if (name, version - 1) not in self._models:
                raise ValueError(f"schema {name} v{version}: register v{version - 1} first")
            if upcast_from_previous is None:
                raise ValueError(
                    f"schema {name} v{version} needs an upcaster from v{version - 1}, "
                    "so that readers keep accepting old records"
                )
            self._upcasters[(name, version - 1)] = upcast_from_previous
        self._models[(name, version)] = model
        self._latest[name] = max(version, self._latest.get(name, 0))

    def names(self) -> list[str]:
        return sorted(self._latest)

    def latest(self, name: str) -> type[Envelope]:
        """The newest model of ``name``; raises ``SchemaError(UNKNOWN_SCHEMA)``."""
        if name not in self._latest:
            raise SchemaError(RejectReason.UNKNOWN_SCHEMA, f"no schema named {name!r}")
        return self._models[(name, self._latest[name])]

    def model(self, name: str, version: int) -> type[Envelope]:
        """The model of exactly ``name`` v``version``; raises ``SchemaError``."""
        self.latest(name)
        try:
            return self._models[(name, version)]
        except KeyError:
            raise SchemaError(
                RejectReason.UNKNOWN_VERSION,
                f"schema {name!r} has no version {version} "
                f"(this reader knows up to v{self._latest[name]})",
            ) from None

    def upcast(self, name: str, version: int, payload: Mapping[str, object]
               ) -> tuple[int, dict[str, object]]:
        """Upcast ``payload`` of ``name`` v``version`` to the newest version.

        Returns ``(newest version, payload)``; raises ``SchemaError``.
        """
        self.model(name, version)
        data = dict(payload)
        while version < self._latest[name]:
            try:
                data = self._upcasters[(name, version)](data)
            except Exception as exc:  # an upcaster's bug must not stop a consumer
                raise SchemaError(
                    RejectReason.UPCAST_FAILED,
                    f"upcasting {name} v{version} -> v{version + 1} failed: {exc!r}",
                ) from exc
            version += 1
            data["schema_version"] = version
        return version, data

    def load(self, name: str, version: int, payload: Mapping[str, object]) -> Envelope:
        """Validate ``payload`` (a JSON object of ``name`` v``version``) as the newest model.

        Raises ``SchemaError`` whose reason names the first problem.
        """
        newest, data = self.upcast(name, version, payload)
        model = self._models[(name, newest)]
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise validation_error(name, exc) from None


def validation_error(name: str, exc: ValidationError) -> SchemaError:
    """Map pydantic's first error onto a reject reason with a one-line detail."""
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    kind = first["type"]
    if kind == "missing":
        reason = RejectReason.MISSING_FIELD
    elif kind == "extra_forbidden":
        reason = RejectReason.EXTRA_FIELD
    elif kind == "finite_number":
        reason = RejectReason.NON_FINITE
    else:
        reason = RejectReason.INVALID_FIELD
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return SchemaError(reason, f"{name}: {where}: {first['msg']}{more}")


def batch_header_v1_to_v2(payload: dict[str, object]) -> dict[str, object]:
    """A V1 batch header (raw or rewarded) as V2: V1 steps all belong to the
    ``V1_INCARNATION``.  The rows are upcast with the header by
    :func:`schemas.transitions.from_arrow` (``seq`` := ``observed_ns``)."""
    return {**payload, "incarnation": V1_INCARNATION}


#: Every event this code base writes, at every version.
REGISTRY = Registry(ALL_V1)
REGISTRY.register(TransitionBatchV2, upcast_from_previous=batch_header_v1_to_v2)
REGISTRY.register(RewardedTransitionBatchV2, upcast_from_previous=batch_header_v1_to_v2)
