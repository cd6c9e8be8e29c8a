"""Lenient parsers: good values parse, bad ones become null (and never raise)."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest

from recstack.data.parse import cast_id, ids_are_integers, parse_float, parse_timestamp
from recstack.data.schema import DataError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2021-01-02T03:04:05", datetime(2021, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2021-01-02 03:04:05.5", datetime(2021, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
        ("2021-01-02T03:04:05+02:00", datetime(2021, 1, 2, 1, 4, 5, tzinfo=UTC)),
        ("2021-01-02T03:04:05Z", datetime(2021, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2021-01-02", datetime(2021, 1, 2, tzinfo=UTC)),
        ("notatime", None),
        ("", None),
    ],
)
def test_iso_timestamps(text: str, expected: datetime | None) -> None:
    out = pl.DataFrame({"t": [text]}).select(parse_timestamp("t", pl.String, "iso"))["t"].item()
    assert out == expected


def test_epoch_and_strftime() -> None:
    df = pl.DataFrame({"t": ["978300760", " 978300760.0 ", "abc", "1e30"]})
    out = df.select(parse_timestamp("t", pl.String, "unix_s"))["t"].to_list()
    assert out[:2] == [datetime(2000, 12, 31, 22, 12, 40, tzinfo=UTC)] * 2 and out[2:] == [None, None]
    ms = pl.DataFrame({"t": [978300760000]}).select(parse_timestamp("t", pl.Int64, "unix_ms"))["t"].item()
    assert ms == datetime(2000, 12, 31, 22, 12, 40, tzinfo=UTC)
    custom = pl.DataFrame({"t": ["02/01/2021 10:00"]}).select(
        parse_timestamp("t", pl.String, "%d/%m/%Y %H:%M")
    )
    assert custom["t"].item() == datetime(2021, 1, 2, 10, tzinfo=UTC)


def test_unknown_format_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="timestamp_format must be one of"):
        parse_timestamp("t", pl.String, "epoch")


def test_floats_and_ids() -> None:
    df = pl.DataFrame({"v": ["1.5", "x", "nan", "inf", None]})
    assert df.select(parse_float("v", pl.String))["v"].to_list() == [1.5, None, None, None, None]
    lf = pl.LazyFrame({"u": ["1", " 2", "", None]})
    assert ids_are_integers(lf, "u", pl.String)
    assert not ids_are_integers(pl.LazyFrame({"u": ["1", "a"]}), "u", pl.String)
    assert not ids_are_integers(pl.LazyFrame({"u": [1.0, 2.5]}), "u", pl.Float64)
    assert lf.select(cast_id("u", pl.String, True)).collect()["u"].to_list() == [1, 2, None, None]
