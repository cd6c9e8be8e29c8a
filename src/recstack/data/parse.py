"""Lenient parsers shared by validation: they turn raw columns into typed ones, null where a value fails.

Each returns a Polars expression; a null result for a non-null input is how validation spots a bad value,
so none of these may raise on bad data.
"""

from __future__ import annotations

import polars as pl

from recstack.data.schema import TIMESTAMP_DTYPE, TIMESTAMP_FORMATS, DataError

# ISO-8601 shapes tried in order (with and without offset, "T" or space, optional fraction, date only).
_ISO_FORMATS = (
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%.fZ",
    "%Y-%m-%d %H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S",
    "%Y-%m-%d %H:%M:%S",
    "%Y-%m-%d",
)
_EPOCH_UNITS = {"unix_s": 1_000_000, "unix_ms": 1_000, "unix_us": 1}
_INT_PATTERN = r"^\s*[+-]?\d+\s*$"


def check_timestamp_format(fmt: str) -> None:
    """Raise DataError unless ``fmt`` is one of ``TIMESTAMP_FORMATS`` or a strftime pattern."""
    if fmt not in TIMESTAMP_FORMATS and "%" not in fmt:
        raise DataError(
            f"timestamp_format must be one of {', '.join(TIMESTAMP_FORMATS)} or a strftime pattern "
            f"containing '%' (e.g. '%d/%m/%Y %H:%M'), got {fmt!r}"
        )


def _epoch_to_datetime(expr: pl.Expr, fmt: str) -> pl.Expr:
    # Via Float64 so "978300760.0" and 9.783e8 parse too; microsecond epoch -> Datetime(us, UTC).
    micros = (expr.cast(pl.Float64, strict=False) * _EPOCH_UNITS[fmt]).round(0)
    # Out-of-range epochs would overflow Int64 microseconds: treat them as unparseable.
    micros = pl.when(micros.abs() < 9.2e18).then(micros)
    return micros.cast(pl.Int64, strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _text_to_datetime(expr: pl.Expr, fmt: str) -> pl.Expr:
    text = expr.str.strip_chars()
    if fmt in _EPOCH_UNITS:
        return _epoch_to_datetime(text, fmt)
    formats = _ISO_FORMATS if fmt == "iso" else (fmt,)
    parsed = []
    for f in formats:
        aware = "%z" in f or "%:z" in f or f.endswith("Z")
        p = text.str.strptime(pl.Datetime("us", "UTC" if aware else None), f, strict=False)
        if not aware:
            # Naive times are taken to be UTC: sources without an offset almost always log server time.
            p = p.dt.replace_time_zone("UTC")
        parsed.append(p.dt.convert_time_zone("UTC"))
    return pl.coalesce(parsed)


def parse_timestamp(column: str, dtype: pl.DataType, fmt: str) -> pl.Expr:
    """Expression turning ``column`` (of ``dtype``) into ``Datetime("us", "UTC")``, null where unparseable.

    Args:
        column: column name.
        dtype: the column's current dtype (Datetime, Date, numeric or String).
        fmt: one of ``TIMESTAMP_FORMATS`` or a strftime pattern, used for numeric and text values.
    """
    check_timestamp_format(fmt)
    col = pl.col(column)
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            col = col.dt.replace_time_zone("UTC")
        return col.dt.convert_time_zone("UTC").dt.cast_time_unit("us").cast(TIMESTAMP_DTYPE)
    if dtype == pl.Date:
        return col.cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
    if dtype.is_numeric():
        return _epoch_to_datetime(col, fmt if fmt in _EPOCH_UNITS else "unix_s")
    if dtype == pl.Null:
        return pl.lit(None, dtype=TIMESTAMP_DTYPE)
    return _text_to_datetime(col.cast(pl.String), fmt)


def parse_float(column: str, dtype: pl.DataType) -> pl.Expr:
    """``column`` as Float64; null for text that is not a number and for NaN / infinity."""
    col = pl.col(column)
    if dtype == pl.String:
        col = col.str.strip_chars()
    f = col.cast(pl.Float64, strict=False)
    return pl.when(f.is_finite()).then(f)


def is_blank(column: str, dtype: pl.DataType) -> pl.Expr:
    """True where the value is null, or an empty / whitespace-only string."""
    col = pl.col(column)
    if dtype == pl.String:
        return col.is_null() | (col.str.strip_chars() == "")
    return col.is_null()


def ids_are_integers(frame: pl.LazyFrame, column: str, dtype: pl.DataType) -> bool:
    """Whether every non-blank value of an id column is an integer (so it can be typed Int64).

    Floats count only when integral (Parquet written by pandas often stores int ids as float).
    """
    if dtype.is_integer():
        return True
    if dtype.is_float():
        col = pl.col(column)
        return bool(frame.select((col.is_null() | (col == col.round(0))).all()).collect().item())
    if dtype == pl.String:
        col = pl.col(column)
        ok = col.is_null() | (col.str.strip_chars() == "") | col.str.contains(_INT_PATTERN)
        return bool(frame.select(ok.all()).collect().item())
    return False


def cast_id(column: str, dtype: pl.DataType, as_int: bool) -> pl.Expr:
    """An id column typed Int64 (when ``as_int``) or String; blank strings become null."""
    col = pl.col(column)
    if as_int:
        if dtype == pl.String:
            col = col.str.strip_chars()
        return col.cast(pl.Float64 if dtype.is_float() else pl.Int64, strict=False).cast(
            pl.Int64, strict=False
        )
    text = col.cast(pl.String)
    return pl.when(text.str.strip_chars() != "").then(text)
