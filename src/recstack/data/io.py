"""Reading and writing a dataset directory in the canonical schema (Parquet).

Layout of a canonical dataset directory::

    <dir>/interactions.parquet   # a file, or a directory of part files (large generated logs)
    <dir>/items.parquet          # optional
    <dir>/users.parquet          # optional
    <dir>/dataset.json           # optional: how it was made (generator settings, source...)

This is the format the synthetic generator writes, the ``synthetic`` source reads, and the ingest stage
writes its clean output in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from recstack.data.schema import CanonicalData, DataError, RawData

INTERACTIONS_FILE = "interactions.parquet"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
DATASET_INFO_FILE = "dataset.json"


def _scan(path: Path) -> pl.LazyFrame:
    # A directory of part files (chunked writers) or a single file.
    if path.is_dir():
        parts = sorted(path.glob("*.parquet"))
        if not parts:
            raise DataError(f"{path} is a directory without any *.parquet part files")
        return pl.scan_parquet(parts)
    return pl.scan_parquet(path)


def read_columns(path: str | Path, columns: list[str]) -> pl.DataFrame:
    """The ``columns`` of a Parquet file that it has, in that order (read only those: the feature tables
    also hold raw text and users' histories, gigabytes at millions of users)."""
    present = pl.read_parquet_schema(path)
    return pl.read_parquet(path, columns=[c for c in dict.fromkeys(columns) if c in present])


def scan_canonical(directory: str | Path, source: str = "canonical") -> RawData:
    """Lazily open a canonical dataset directory.

    Args:
        directory: a directory laid out as described in this module's docstring.
        source: the name recorded in the validation report.

    Raises:
        DataError: if the directory or its interactions file is missing.
    """
    d = Path(directory)
    if not d.is_dir():
        raise DataError(f"dataset directory {d} does not exist (expected {INTERACTIONS_FILE} inside it)")
    inter = d / INTERACTIONS_FILE
    if not inter.exists():
        raise DataError(f"{d} has no {INTERACTIONS_FILE}: not a canonical dataset directory")
    items = _scan(d / ITEMS_FILE) if (d / ITEMS_FILE).exists() else None
    users = _scan(d / USERS_FILE) if (d / USERS_FILE).exists() else None
    return RawData(
        interactions=_scan(inter), items=items, users=users, timestamp_format="unix_s", source=source
    )


def write_canonical(data: CanonicalData, directory: str | Path, info: dict[str, Any] | None = None) -> None:
    """Write validated tables to ``directory`` (created if needed), streaming where Polars can."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    data.interactions.sink_parquet(d / INTERACTIONS_FILE)
    data.items.sink_parquet(d / ITEMS_FILE)
    data.users.sink_parquet(d / USERS_FILE)
    if info is not None:
        (d / DATASET_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")


def read_canonical(directory: str | Path) -> CanonicalData:
    """Lazily open a directory written by :func:`write_canonical` (all three tables must exist)."""
    d = Path(directory)
    for name in (INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE):
        if not (d / name).exists():
            raise DataError(f"{d / name} is missing: run the ingest stage first")
    return CanonicalData(
        interactions=_scan(d / INTERACTIONS_FILE), items=_scan(d / ITEMS_FILE), users=_scan(d / USERS_FILE)
    )
