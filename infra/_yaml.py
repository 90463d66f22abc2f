"""Read a YAML file into a pydantic model, with errors a person can act on."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_model(path: Path, model: type[M], what: str) -> M:
    """``model`` validated from the YAML file ``path``.

    Exits (``SystemExit``) with one line per problem, each naming the field, when the
    file is missing, is not YAML, or does not validate.
    """
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SystemExit(f"userctl: no {what} file {path}") from None
    except yaml.YAMLError as exc:
        raise SystemExit(f"userctl: {path} is not valid YAML: {exc}") from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [f"userctl: {path} is not a valid {what}:"]
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            lines.append(f"  {where}: {err['msg']}")
        raise SystemExit("\n".join(lines)) from None
