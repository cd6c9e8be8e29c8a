"""Source adapters: every input format is mapped onto the canonical column names (``RawData``).

``load_source(source, path, **options)`` is the one entry point the ingest stage calls with
``params.yaml: data.source`` / ``data.path`` / ``data.options``; ``SOURCES`` lists what it accepts.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from recstack.data.adapters.events import load_event_log
from recstack.data.adapters.movielens import load_movielens_1m, load_movielens_100k, load_movielens_csv
from recstack.data.io import scan_canonical
from recstack.data.schema import DataError, RawData


@dataclass(frozen=True)
class Source:
    """A registered source.

    Attributes:
        loader: ``loader(path, **options) -> RawData``.
        description: one line for error messages and docs.
        takes_options: whether ``options`` are forwarded (only the generic event log has any).
    """

    loader: Callable[..., RawData]
    description: str
    takes_options: bool = False


SOURCES: dict[str, Source] = {
    "movielens-100k": Source(load_movielens_100k, "MovieLens 100K folder (u.data, u.item, u.user)"),
    "movielens-1m": Source(load_movielens_1m, "MovieLens 1M folder (ratings.dat, movies.dat, users.dat)"),
    "movielens-20m": Source(load_movielens_csv, "MovieLens 20M folder (ratings.csv, movies.csv)"),
    "movielens-25m": Source(load_movielens_csv, "MovieLens 25M folder (ratings.csv, movies.csv)"),
    "movielens-latest": Source(
        load_movielens_csv, "MovieLens latest / latest-small folder (ratings.csv, ...)"
    ),
    "events": Source(load_event_log, "CSV / Parquet / JSON-lines event log with a column mapping", True),
    "synthetic": Source(partial(scan_canonical, source="synthetic"), "generated dataset (canonical Parquet)"),
    "canonical": Source(partial(scan_canonical, source="canonical"), "any canonical Parquet dataset folder"),
}


def load_source(source: str, path: str | Path, **options: Any) -> RawData:
    """Open ``path`` with the adapter registered as ``source``.

    Args:
        source: a key of ``SOURCES``.
        path: the dataset file or folder.
        **options: adapter options (``events`` only: ``columns``, ``format``, ``timestamp_format``, ...).

    Returns:
        The adapter's ``RawData`` with ``source`` set to the registry name.

    Raises:
        DataError: for an unknown source, a missing path, options given to a source without any, or
            whatever the adapter rejects.
    """
    spec = SOURCES.get(source)
    if spec is None:
        valid = "\n".join(f"  {name}: {s.description}" for name, s in SOURCES.items())
        raise DataError(f"unknown data source {source!r}; valid sources:\n{valid}")
    location = Path(path)
    if not location.exists():
        raise DataError(
            f"data path {location} (resolved: {location.resolve()}) does not exist for source {source!r}: "
            "set the data.path parameter to the dataset folder or file"
        )
    if options and not spec.takes_options:
        raise DataError(f"source {source!r} takes no options, got {sorted(options)}; remove data.options")
    try:
        # Bind first so that a misspelt option is reported as such, not as a TypeError from deep inside.
        inspect.signature(spec.loader).bind(location, **options)
    except TypeError as err:
        raise DataError(f"invalid data.options for source {source!r}: {err}") from err
    raw = spec.loader(location, **options)
    raw.source = source
    return raw


__all__ = [
    "SOURCES",
    "Source",
    "load_event_log",
    "load_movielens_1m",
    "load_movielens_100k",
    "load_movielens_csv",
    "load_source",
]
