"""Generic event-log adapter (CSV / TSV / Parquet / JSON-lines) and the source registry."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from recstack.data.adapters import SOURCES, load_source
from recstack.data.adapters.events import load_event_log
from recstack.data.io import INTERACTIONS_FILE
from recstack.data.schema import (
    CATEGORIES,
    CATEGORIES_DTYPE,
    CREATED_AT,
    EVENT_TYPE,
    ITEM_ID,
    TIMESTAMP,
    TITLE,
    USER_ID,
    VALUE,
    DataError,
)

MAPPING = {USER_ID: "uid", ITEM_ID: "sku", TIMESTAMP: "ts", EVENT_TYPE: "event", VALUE: "qty"}
ROWS = [
    {"uid": "u1", "sku": "A", "ts": "2024-01-01T10:00:00Z", "event": "view", "qty": "1", "extra": "x"},
    {"uid": "", "sku": "B", "ts": "notatime", "event": "buy", "qty": "2", "extra": "y"},
    {"uid": "u2", "sku": "A", "ts": "2024-01-02T11:30:00Z", "event": "buy", "qty": "3", "extra": "z"},
]


def _csv(path: Path, rows: list[dict[str, str]], separator: str = ",") -> Path:
    header = separator.join(rows[0])
    path.write_text("\n".join([header, *(separator.join(r.values()) for r in rows)]) + "\n")
    return path


def _typed_frame() -> pl.DataFrame:
    return pl.DataFrame(
        {
            "uid": [1, 2],
            "sku": ["A", "B"],
            "ts": [datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)],
            "qty": [1.5, 2.0],
        }
    )


def test_csv_mapping_keeps_raw_strings_and_bad_rows(tmp_path: Path) -> None:
    raw = load_event_log(_csv(tmp_path / "log.csv", ROWS), columns=MAPPING)
    assert isinstance(raw.interactions, pl.LazyFrame)
    assert raw.timestamp_format == "iso" and raw.source == "events"
    inter = raw.interactions.collect()
    assert inter.columns == [USER_ID, ITEM_ID, TIMESTAMP, EVENT_TYPE, VALUE]  # unmapped "extra" dropped
    assert all(dtype == pl.String for dtype in inter.dtypes)
    assert inter.height == 3
    assert inter.row(1) == (None, "B", "notatime", "buy", "2")  # empty id + bad time survive
    assert raw.items is None and raw.users is None


def test_tsv_and_optional_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path / "log.tsv", ROWS, separator="\t")
    raw = load_event_log(path, columns={USER_ID: "uid", ITEM_ID: "sku", TIMESTAMP: "ts"})
    # event_type / value are left out for validation to fill with defaults.
    assert raw.interactions.collect_schema().names() == [USER_ID, ITEM_ID, TIMESTAMP]


def test_parquet_keeps_native_types(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    _typed_frame().write_parquet(path)
    raw = load_event_log(path, columns={USER_ID: "uid", ITEM_ID: "sku", TIMESTAMP: "ts", VALUE: "qty"})
    schema = raw.interactions.collect_schema()
    assert schema[USER_ID] == pl.Int64 and schema[VALUE] == pl.Float64
    assert schema[TIMESTAMP] == pl.Datetime("us", "UTC")


def test_jsonl_and_directory_of_parts(tmp_path: Path) -> None:
    log_dir = tmp_path / "events"
    log_dir.mkdir()
    for i, chunk in enumerate((ROWS[:2], ROWS[2:])):
        (log_dir / f"part-{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chunk))
    (log_dir / "_SUCCESS").write_text("")  # writer bookkeeping, not data
    raw = load_event_log(log_dir, columns=MAPPING, timestamp_format="%Y-%m-%dT%H:%M:%SZ")
    inter = raw.interactions.collect()
    assert inter.height == 3 and inter[USER_ID].to_list() == ["u1", "", "u2"]
    assert raw.timestamp_format == "%Y-%m-%dT%H:%M:%SZ"


def test_directory_of_parquet_parts(tmp_path: Path) -> None:
    log_dir = tmp_path / "events"
    log_dir.mkdir()
    frame = _typed_frame()
    frame.head(1).write_parquet(log_dir / "part-0.parquet")
    frame.tail(1).write_parquet(log_dir / "part-1.pq")
    raw = load_event_log(log_dir, columns={USER_ID: "uid", ITEM_ID: "sku"})
    assert raw.interactions.collect()[USER_ID].to_list() == [1, 2]
    assert any("no timestamp" in note for note in raw.notes)


def test_canonical_names_need_no_mapping(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,1700000000\n")
    raw = load_event_log(path, timestamp_format="unix_s")
    assert raw.interactions.collect().rows() == [("1", "2", "1700000000")]


def test_mapping_to_absent_column_lists_real_columns(tmp_path: Path) -> None:
    path = _csv(tmp_path / "log.csv", ROWS)
    with pytest.raises(
        DataError, match=r"item_id -> 'item'.*\['uid', 'sku', 'ts', 'event', 'qty', 'extra'\]"
    ):
        load_event_log(path, columns={USER_ID: "uid", ITEM_ID: "item"})


def test_required_ids_must_resolve(tmp_path: Path) -> None:
    path = _csv(tmp_path / "log.csv", ROWS)
    with pytest.raises(DataError, match=r"no column for \['item_id'\]"):
        load_event_log(path, columns={USER_ID: "uid"})


def test_unknown_canonical_name_and_bad_inputs(tmp_path: Path) -> None:
    path = _csv(tmp_path / "log.csv", ROWS)
    with pytest.raises(DataError, match="unknown canonical name"):
        load_event_log(path, columns={**MAPPING, "rating": "qty"})
    with pytest.raises(DataError, match="timestamp_format"):
        load_event_log(path, columns=MAPPING, timestamp_format="seconds")
    odd = tmp_path / "log.txt"
    odd.write_text("a,b\n")
    with pytest.raises(DataError, match="suffix '.txt'"):
        load_event_log(odd, columns=MAPPING)
    with pytest.raises(DataError, match="does not exist"):
        load_event_log(tmp_path / "missing.csv", columns=MAPPING)


def test_items_and_users_tables(tmp_path: Path) -> None:
    log = _csv(tmp_path / "log.csv", ROWS)
    items = tmp_path / "items.csv"
    items.write_text('sku,name,tags,price\nA,"Kettle, steel",kitchen|home,20\nB,Mug,,5\n')
    users = tmp_path / "users.jsonl"
    users.write_text('{"uid": "u1", "country": "FR"}\n{"uid": "u2", "country": "DE"}\n')
    raw = load_event_log(
        log,
        columns=MAPPING,
        items_path=items,
        item_columns={ITEM_ID: "sku", TITLE: "name", CATEGORIES: "tags"},
        users_path=users,
        user_columns={USER_ID: "uid"},
    )
    assert raw.items is not None and raw.users is not None
    item_frame = raw.items.collect()
    assert item_frame.columns == [ITEM_ID, TITLE, CATEGORIES, CREATED_AT, "price"]
    assert item_frame.schema[CATEGORIES] == CATEGORIES_DTYPE
    assert item_frame[CATEGORIES].to_list() == [["kitchen", "home"], []]
    assert item_frame[TITLE].to_list() == ["Kettle, steel", "Mug"]
    assert raw.users.collect().rows() == [("u1", "FR"), ("u2", "DE")]


def test_item_table_without_categories_gets_empty_lists(tmp_path: Path) -> None:
    log = _csv(tmp_path / "log.csv", ROWS)
    items = tmp_path / "items.parquet"
    pl.DataFrame({"item_id": ["A"], "tags": [["x", "y"]]}).write_parquet(items)
    raw = load_event_log(log, columns=MAPPING, items_path=items)
    assert raw.items is not None
    assert raw.items.collect()[CATEGORIES].to_list() == [[]]
    raw = load_event_log(log, columns=MAPPING, items_path=items, item_columns={CATEGORIES: "tags"})
    assert raw.items is not None
    assert raw.items.collect()[CATEGORIES].to_list() == [["x", "y"]]


# --- registry -------------------------------------------------------------------------------------------
def test_registry_names() -> None:
    assert set(SOURCES) == {
        "movielens-100k", "movielens-1m", "movielens-20m", "movielens-25m", "movielens-latest",
        "events", "synthetic", "canonical",
    }  # fmt: skip


def test_load_source_forwards_event_options(tmp_path: Path) -> None:
    path = _csv(tmp_path / "log.csv", ROWS)
    raw = load_source("events", path, columns=MAPPING, timestamp_format="iso")
    assert raw.source == "events" and raw.interactions.collect().height == 3
    with pytest.raises(DataError, match="colums"):
        load_source("events", path, colums=MAPPING)


def test_load_source_canonical_and_synthetic(tmp_path: Path) -> None:
    pl.DataFrame({USER_ID: [1], ITEM_ID: [2], TIMESTAMP: [1_700_000_000]}).write_parquet(
        tmp_path / INTERACTIONS_FILE
    )
    for name in ("canonical", "synthetic"):
        raw = load_source(name, tmp_path)
        assert raw.source == name and raw.interactions.collect().height == 1


def test_load_source_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"(?s)unknown data source 'movielens'.*movielens-100k"):
        load_source("movielens", tmp_path)
    with pytest.raises(DataError, match=r"nowhere.*data\.path"):
        load_source("movielens-100k", tmp_path / "nowhere")
    with pytest.raises(DataError, match="takes no options"):
        load_source("movielens-1m", tmp_path, columns={})
