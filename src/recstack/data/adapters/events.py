"""Generic event-log adapter: CSV / TSV, Parquet or JSON-lines files with a column mapping.

A log is one file or a directory of files of one format. ``columns`` maps canonical names to the log's
column names, e.g. ``{"user_id": "uid", "item_id": "sku", "timestamp": "ts", "event_type": "event",
"value": "qty"}``; canonical names the mapping leaves out are taken from a column of the same name if the
file has one. Only mapped columns are kept in ``interactions``; ``event_type`` and ``value`` may be absent
(validation fills the defaults).

Types: CSV / TSV are read with every column as ``String`` (nothing is parsed, so a malformed value such as
an empty id or ``"notatime"`` reaches validation as text); Parquet and JSON-lines keep their native types
(validation accepts typed columns). Optional item and user tables are read the same way: their mapped
columns get canonical names and every other column is kept as an attribute.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl

from recstack.data.schema import (
    CATEGORIES,
    CATEGORIES_DTYPE,
    CREATED_AT,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    ITEM_ID,
    TIMESTAMP,
    TIMESTAMP_DTYPE,
    TIMESTAMP_FORMATS,
    TITLE,
    USER_ID,
    DataError,
    RawData,
)

# File suffix -> format. Compressed text (.csv.gz) is not scannable lazily by polars, hence not listed.
FORMAT_BY_SUFFIX: dict[str, str] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
}
FORMATS: tuple[str, ...] = ("csv", "tsv", "parquet", "jsonl")
_FORMAT_ALIASES = {"ndjson": "jsonl", "pq": "parquet"}
_SEPARATORS = {"csv": ",", "tsv": "\t"}
# JSON-lines types are inferred from every row: a value of another type after the first rows would
# otherwise fail the whole read at collect time. Costs one extra pass over the file when it is opened.
JSONL_INFER_SCHEMA_ROWS: int | None = None

REQUIRED_INTERACTION_COLUMNS = (USER_ID, ITEM_ID)
USER_COLUMNS_KNOWN = (USER_ID,)


def _normalise_format(fmt: str) -> str:
    fmt = _FORMAT_ALIASES.get(fmt.lower(), fmt.lower())
    if fmt not in FORMATS:
        raise DataError(f"unknown event log format {fmt!r}: use one of {', '.join(FORMATS)}")
    return fmt


def _data_files(path: Path, fmt: str | None) -> tuple[list[Path], str]:
    """The files to read and their format: ``path`` itself or the data files under a directory."""
    if not path.exists():
        raise DataError(f"event log {path} does not exist; set data.path to a file or directory of events")
    if path.is_file():
        if fmt is None:
            fmt = FORMAT_BY_SUFFIX.get(path.suffix.lower())
            if fmt is None:
                raise DataError(
                    f"{path}: cannot tell the format from the suffix {path.suffix!r}; "
                    f"use one of {', '.join(FORMAT_BY_SUFFIX)} or pass format= ({', '.join(FORMATS)})"
                )
        return [path], _normalise_format(fmt)
    # Hidden and "_"-prefixed files are writer bookkeeping (_SUCCESS, .crc), never data.
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in FORMAT_BY_SUFFIX
        and not any(part.startswith((".", "_")) for part in p.relative_to(path).parts)
    )
    if fmt is not None:
        fmt = _normalise_format(fmt)
        files = [p for p in files if FORMAT_BY_SUFFIX[p.suffix.lower()] == fmt]
    if not files:
        wanted = fmt or ", ".join(FORMAT_BY_SUFFIX)
        raise DataError(f"{path} is a directory without any data files ({wanted})")
    formats = {FORMAT_BY_SUFFIX[p.suffix.lower()] for p in files}
    if len(formats) > 1:
        raise DataError(f"{path} mixes formats {sorted(formats)}: pass format= to choose one")
    return files, fmt or formats.pop()


def scan_table(path: str | Path, fmt: str | None = None) -> pl.LazyFrame:
    """Lazily open a CSV/TSV (all String), Parquet or JSON-lines file or directory of such files.

    Args:
        path: a file, or a directory whose data files (searched recursively) share one format.
        fmt: ``"csv"``, ``"tsv"``, ``"parquet"`` or ``"jsonl"``; inferred from the suffix when ``None``.

    Raises:
        DataError: if the path is missing, its format unknown, or the files cannot be opened.
    """
    files, fmt = _data_files(Path(path), fmt)
    try:
        if fmt in _SEPARATORS:
            return pl.scan_csv(files, separator=_SEPARATORS[fmt], infer_schema=False)
        if fmt == "parquet":
            return pl.scan_parquet(files)
        return pl.scan_ndjson(files, infer_schema_length=JSONL_INFER_SCHEMA_ROWS)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"{path}: cannot be read as {fmt} ({err})") from err


def _columns_of(frame: pl.LazyFrame, path: str | Path) -> list[str]:
    try:
        return frame.collect_schema().names()
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"{path}: cannot read the column names ({err})") from err


def _resolve_mapping(
    mapping: Mapping[str, str] | None,
    known: tuple[str, ...],
    required: tuple[str, ...],
    available: list[str],
    path: str | Path,
) -> dict[str, str]:
    """canonical -> source column, defaulting every known name the file has under its own name."""
    given = dict(mapping or {})
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise DataError(
            f"column mapping for {path} has unknown canonical name(s) {unknown}; valid: {list(known)}"
        )
    resolved = {name: name for name in known if name in available}
    resolved.update(given)
    absent = {canon: src for canon, src in resolved.items() if src not in available}
    if absent:
        wanted = ", ".join(f"{canon} -> {src!r}" for canon, src in absent.items())
        raise DataError(f"{path} has no column(s) for {wanted}; its columns are {available}")
    missing = [name for name in required if name not in resolved]
    if missing:
        raise DataError(
            f"{path}: no column for {missing}; map them, e.g. columns={{'{missing[0]}': '<column>'}}. "
            f"Its columns are {available}"
        )
    sources = list(resolved.values())
    duplicated = sorted({s for s in sources if sources.count(s) > 1})
    if duplicated:
        raise DataError(f"column mapping for {path} uses {duplicated} for more than one canonical name")
    return resolved


def _rename_keep_rest(
    frame: pl.LazyFrame, mapping: dict[str, str], available: list[str], path: str | Path
) -> pl.LazyFrame:
    """Rename mapped columns to canonical names and keep all others as attributes."""
    renamed = {src: canon for canon, src in mapping.items() if src != canon}
    clashes = sorted(set(renamed.values()) & (set(available) - set(renamed)))
    if clashes:
        raise DataError(
            f"{path}: mapping another column onto {clashes} clashes with the file's own column(s) of that "
            "name; map that name explicitly or rename the column in the source"
        )
    return frame.rename(renamed)


def _categories(frame: pl.LazyFrame, separator: str, path: str | Path) -> pl.LazyFrame:
    schema = frame.collect_schema()
    if CATEGORIES not in schema:
        return frame.with_columns(pl.lit([], dtype=CATEGORIES_DTYPE).alias(CATEGORIES))
    dtype = schema[CATEGORIES]
    col = pl.col(CATEGORIES)
    if dtype == pl.String:
        # "" and null mean "no category"; separator-split text otherwise ("a|b" -> ["a", "b"]).
        as_list = (
            pl.when(col.is_null() | (col.str.strip_chars() == ""))
            .then(pl.lit([], dtype=CATEGORIES_DTYPE))
            .otherwise(col.str.split(separator).list.eval(pl.element().str.strip_chars()))
        )
    elif isinstance(dtype, pl.List):
        as_list = col.fill_null(pl.lit([], dtype=dtype)).cast(CATEGORIES_DTYPE)
    else:
        raise DataError(f"{path}: column mapped to {CATEGORIES} must be text or a list, got {dtype}")
    return frame.with_columns(as_list.alias(CATEGORIES))


def _items(path: str | Path, columns: Mapping[str, str] | None, separator: str) -> pl.LazyFrame:
    frame = scan_table(path)
    available = _columns_of(frame, path)
    mapping = _resolve_mapping(columns, ITEM_COLUMNS, (ITEM_ID,), available, path)
    frame = _categories(_rename_keep_rest(frame, mapping, available, path), separator, path)
    present = frame.collect_schema().names()
    if TITLE not in present:
        frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(TITLE))
    if CREATED_AT not in present:
        frame = frame.with_columns(pl.lit(None, dtype=TIMESTAMP_DTYPE).alias(CREATED_AT))
    rest = [c for c in frame.collect_schema().names() if c not in ITEM_COLUMNS]
    return frame.select(*ITEM_COLUMNS, *rest)


def _users(path: str | Path, columns: Mapping[str, str] | None) -> pl.LazyFrame:
    frame = scan_table(path)
    available = _columns_of(frame, path)
    mapping = _resolve_mapping(columns, USER_COLUMNS_KNOWN, (USER_ID,), available, path)
    frame = _rename_keep_rest(frame, mapping, available, path)
    rest = [c for c in frame.collect_schema().names() if c != USER_ID]
    return frame.select(USER_ID, *rest)


def _check_timestamp_format(timestamp_format: str) -> None:
    if timestamp_format not in TIMESTAMP_FORMATS and "%" not in timestamp_format:
        raise DataError(
            f"timestamp_format {timestamp_format!r} is neither one of {list(TIMESTAMP_FORMATS)} "
            "nor a strftime pattern (with '%')"
        )


def load_event_log(
    path: str | Path,
    *,
    format: str | None = None,
    columns: Mapping[str, str] | None = None,
    timestamp_format: str = "iso",
    items_path: str | Path | None = None,
    item_columns: Mapping[str, str] | None = None,
    users_path: str | Path | None = None,
    user_columns: Mapping[str, str] | None = None,
    category_separator: str = "|",
) -> RawData:
    """Map an event log (and optional item / user tables) onto the canonical schema.

    Args:
        path: a ``.csv``/``.tsv``/``.parquet``/``.pq``/``.jsonl``/``.ndjson`` file or a directory of them.
        format: ``"csv"``, ``"tsv"``, ``"parquet"`` or ``"jsonl"``; inferred from the suffix when ``None``.
        columns: canonical interaction name -> log column. ``user_id`` and ``item_id`` must resolve (by
            mapping or by a column of that name); ``timestamp``, ``event_type``, ``value`` are optional.
        timestamp_format: how ``timestamp`` / ``created_at`` text or numbers are parsed: ``"unix_s"``,
            ``"unix_ms"``, ``"unix_us"``, ``"iso"`` or a strftime pattern.
        items_path: optional item table (same formats); its other columns are kept as attributes.
        item_columns: canonical item name (``item_id``, ``title``, ``categories``, ``created_at``) ->
            column. Missing ``title`` / ``created_at`` become null, missing ``categories`` empty lists.
        users_path: optional user table; its other columns are kept as attributes.
        user_columns: ``{"user_id": <column>}`` when the id column has another name.
        category_separator: splits a text ``categories`` column into a list ("a|b" -> ["a", "b"]).

    Returns:
        ``RawData`` whose ``interactions`` hold the mapped columns under canonical names (String for
        CSV/TSV, native types otherwise); ``items`` / ``users`` are ``None`` when no path is given.

    Raises:
        DataError: for a missing path, an unknown format, or a mapping naming a column the file lacks (the
            message lists the file's columns).
    """
    _check_timestamp_format(timestamp_format)
    frame = scan_table(path, format)
    available = _columns_of(frame, path)
    mapping = _resolve_mapping(columns, INTERACTION_COLUMNS, REQUIRED_INTERACTION_COLUMNS, available, path)
    interactions = frame.select(
        pl.col(mapping[name]).alias(name) for name in INTERACTION_COLUMNS if name in mapping
    )
    notes = [f"event log {Path(path).name}: columns {mapping}"]
    if TIMESTAMP not in mapping:
        notes.append("no timestamp column mapped: events have no time order")
    return RawData(
        interactions=interactions,
        items=_items(items_path, item_columns, category_separator) if items_path is not None else None,
        users=_users(users_path, user_columns) if users_path is not None else None,
        timestamp_format=timestamp_format,
        source="events",
        notes=notes,
    )
