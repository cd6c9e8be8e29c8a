"""Validated settings from YAML: one loader for every pydantic-described file (policy, serving...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_validated(
    model: type[M], source: str | Path | dict[str, Any] | None, what: str, error: type[ValueError]
) -> M:
    """``model`` from a mapping, a YAML file path, or None (its defaults).

    Raises:
        error: the file is missing or the content does not validate; the message names the file (or
            ``what``) and every failing field with its problem.
    """
    if source is None:
        return model()
    where = what
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise error(f"{what} file {path} does not exist")
        where = str(path)
        source = yaml.safe_load(path.read_text()) or {}
    try:
        return model.model_validate(source)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
        raise error(f"invalid {where}: {problems}") from None
