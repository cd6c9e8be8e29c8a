"""Small helpers for the JSON files stages leave behind (metrics, reports, specs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def write_json(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` as sorted, indented JSON (stable bytes for DVC), creating parent folders."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return p


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming it in the error if it is missing or broken."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{p} does not exist: run the stage that writes it first") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON ({exc})") from exc
