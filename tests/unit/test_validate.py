"""Validation on deliberately broken files: every problem kind is counted, quarantined and explained."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from recstack.data.ingest import IngestError, ingest
from recstack.data.schema import RawData
from recstack.data.validate import INTERACTION_PROBLEMS, validate

AS_OF = "2024-06-01"

# One clean row plus one row per problem kind; row numbers (1-based, header excluded) in comments.
EVENTS_CSV = """uid,sku,ts,event,qty
u1,i1,2024-01-01T10:00:00,click,1
u2,i2,2024-01-02T10:00:00,click,1
u3,i1,2024-01-03T10:00:00,click,1
u1,i2,2024-01-04T10:00:00,buy,2
,i1,2024-01-05T10:00:00,click,1
u4,,2024-01-05T10:00:00,click,1
u5,i1,yesterday-ish,click,1
u6,i1,2031-01-01T00:00:00,click,1
u7,i2,2024-01-06T10:00:00,click,lots
u8,i2,2024-01-07T10:00:00,,1
u1,i1,2024-01-01T10:00:00,click,1
u9,i999,2024-01-08T10:00:00,click,1
"""
# rows 5..12 are bad, one problem kind each, in INTERACTION_PROBLEMS order
EXPECTED_ROWS = {
    "missing_user_id": 5,
    "missing_item_id": 6,
    "bad_timestamp": 7,
    "future_timestamp": 8,
    "bad_value": 9,
    "missing_event_type": 10,
    "duplicate": 11,
    "unknown_item": 12,
}
ITEMS_CSV = """item,name,genres
i1,Blue Train,jazz|blues
i2,Kind of Blue,jazz
i2,Kind of Blue (dup),jazz
,Nameless,rock
"""
COLUMNS = {"user_id": "uid", "item_id": "sku", "timestamp": "ts", "event_type": "event", "value": "qty"}


@pytest.fixture()
def broken_log(tmp_path: Path) -> dict:
    (tmp_path / "events.csv").write_text(EVENTS_CSV)
    (tmp_path / "items.csv").write_text(ITEMS_CSV)
    return {
        "columns": COLUMNS,
        "timestamp_format": "iso",
        "items_path": str(tmp_path / "items.csv"),
        "item_columns": {"item_id": "item", "title": "name", "categories": "genres"},
    }


def test_every_problem_kind_is_counted_and_quarantined(tmp_path: Path, broken_log: dict) -> None:
    out = tmp_path / "out"
    result = ingest(
        "events", tmp_path / "events.csv", out, options=broken_log, max_bad_fraction=0.9, as_of=AS_OF
    )
    report = result.report
    counts = {(p.table, p.problem): p.count for p in report.problems}
    for problem in INTERACTION_PROBLEMS:
        assert counts[("interactions", problem)] == 1, problem
    assert counts[("items", "duplicate_item_id")] == 1
    assert counts[("items", "missing_item_id")] == 1
    assert report.rows["interactions"] == 12 and report.bad_rows["interactions"] == 8

    quarantine = pl.read_parquet(out / "quarantine" / "interactions.parquet")
    assert dict(zip(quarantine["problem"], quarantine["_row"], strict=True)) == EXPECTED_ROWS
    # Original text survives untouched in quarantine (under the canonical column names).
    assert quarantine.filter(pl.col("problem") == "bad_timestamp")["timestamp"].item() == "yesterday-ish"
    assert quarantine.filter(pl.col("problem") == "bad_value")["value"].item() == "lots"
    # Clean + quarantined = every input row: nothing lost.
    clean = pl.read_parquet(out / "interactions.parquet")
    assert clean.height + quarantine.height == 12
    assert clean.schema["timestamp"] == pl.Datetime("us", "UTC")
    on_disk = json.loads((out / "validation_report.json").read_text())
    assert on_disk["bad_rows"]["interactions"] == 8
    ex = next(p for p in on_disk["problems"] if p["problem"] == "bad_timestamp")["examples"][0]
    assert ex["timestamp"] == "yesterday-ish" and ex["_row"] == 7


def test_stage_fails_above_threshold_with_a_clear_message(tmp_path: Path, broken_log: dict) -> None:
    out = tmp_path / "out"
    with pytest.raises(IngestError) as err:
        ingest("events", tmp_path / "events.csv", out, options=broken_log, max_bad_fraction=0.1, as_of=AS_OF)
    msg = str(err.value)
    assert "8 of 12 interactions rows" in msg and "max_bad_fraction=10.00%" in msg
    for problem in INTERACTION_PROBLEMS:
        assert f"{problem}=1" in msg
    assert str(out / "validation_report.json") in msg
    # Report and quarantine are written even when the stage fails; clean tables are not.
    assert (out / "quarantine" / "interactions.parquet").exists()
    assert not (out / "interactions.parquet").exists()


def test_future_check_uses_as_of_and_tolerance() -> None:
    inter = pl.LazyFrame(
        {"user_id": [1, 2], "item_id": [1, 1], "timestamp": ["2024-01-01T12:00:00", "2024-01-03T00:00:00"]}
    )
    raw = RawData(inter, timestamp_format="iso")
    as_of = datetime(2024, 1, 1, tzinfo=UTC)
    r = validate(raw, as_of=as_of, max_bad_fraction=1.0)
    assert r.report.bad_rows["interactions"] == 1  # 12:00 is within the 1-day tolerance, the 3rd is not


def test_missing_column_names_the_table_and_columns() -> None:
    raw = RawData(pl.LazyFrame({"user_id": [1], "item": [2], "timestamp": [3]}))
    with pytest.raises(ValueError, match=r"interactions table lacks required column\(s\) \['item_id'\]"):
        validate(raw)


def test_mixed_id_types_are_unified_as_text() -> None:
    inter = pl.LazyFrame({"user_id": [1, 2], "item_id": ["a", "b"], "timestamp": [1, 2]})
    users = pl.LazyFrame({"user_id": ["1", "x"]})
    r = validate(RawData(inter, users=users), as_of=datetime(2024, 1, 1, tzinfo=UTC))
    assert r.data.interactions.collect().schema["user_id"] == pl.String
    assert any("user ids are integers in one table" in n for n in r.report.notes)


def test_default_value_and_event_type_when_source_has_none() -> None:
    inter = pl.LazyFrame({"user_id": [1], "item_id": [2], "timestamp": [1_700_000_000]})
    clean = validate(RawData(inter), as_of=datetime(2024, 1, 1, tzinfo=UTC)).data.interactions.collect()
    assert clean["value"].item() == 1.0 and clean["event_type"].item() == "interaction"
    assert clean["timestamp"].item() == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_validation_report_on_ml100k(ml100k_path: Path, tmp_path: Path) -> None:
    result = ingest("movielens-100k", ml100k_path, tmp_path / "ingest", max_bad_fraction=0.0)
    r = result.report
    assert r.passed and r.rows == {"interactions": 100_000, "items": 1682, "users": 943}
    assert r.bad_rows == {"interactions": 0, "items": 0, "users": 0}
    assert r.clean_stats["interacting_users"] == 943


def test_unparseable_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "ragged.csv").write_text("uid,sku,ts\nu1,i1,2024-01-01\nu2,i2,2024-01-02,extra,more\n")
    with pytest.raises(ValueError, match="source 'events' could not be parsed into rows: found more fields"):
        columns = {"user_id": "uid", "item_id": "sku", "timestamp": "ts"}
        ingest("events", tmp_path / "ragged.csv", tmp_path / "out", options={"columns": columns})


def test_partitioned_validation_equals_one_part(tmp_path: Path, broken_log: dict) -> None:
    """Parts of 2 rows (so 6+ user parts) give the same report, quarantine and clean rows as one part."""
    one, many = tmp_path / "one", tmp_path / "many"
    common = {"options": broken_log, "max_bad_fraction": 0.9, "as_of": AS_OF}
    a = ingest("events", tmp_path / "events.csv", one, partition_rows=0, **common).report
    b = ingest("events", tmp_path / "events.csv", many, partition_rows=2, **common).report
    assert a.model_dump() == b.model_dump()
    for name in ("quarantine/interactions.parquet", "items.parquet", "users.parquet"):
        assert pl.read_parquet(one / name).equals(pl.read_parquet(many / name)), name
    key = ["user_id", "item_id", "timestamp", "event_type"]
    clean_one = pl.read_parquet(one / "interactions.parquet").sort(key)
    assert clean_one.equals(pl.read_parquet(many / "interactions.parquet").sort(key))
    # The duplicate is the repeat (row 11), never its first occurrence, whichever part user u1 fell in.
    assert b.problems[[p.problem for p in b.problems].index("duplicate")].examples[0]["_row"] == 11
    # The scratch parts are gone.
    assert not list(tmp_path.glob(".recstack-scratch-*"))


def test_partition_rows_must_not_be_negative(tmp_path: Path, broken_log: dict) -> None:
    with pytest.raises(ValueError, match="partition_rows must be positive"):
        ingest("events", tmp_path / "events.csv", tmp_path / "o", options=broken_log, partition_rows=-1)
