"""Serving-time loads read only what they use: the same arrays as from the whole tables, less memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl

from recstack.data.io import ITEMS_FILE, USERS_FILE, read_columns
from recstack.features.spec import FeatureSpec
from recstack.models.inputs import FeatureTables, ItemFeatures, UserFeatures
from recstack.serving.bundle import CodedColumn
from recstack.serving.popular import PopularLists


def test_feature_tables_from_their_columns_equal_the_whole_tables(small_features: Path) -> None:
    spec = FeatureSpec.load(small_features)
    whole_items = pl.read_parquet(small_features / ITEMS_FILE)
    whole_users = pl.read_parquet(small_features / USERS_FILE)
    assert set(ItemFeatures.columns(spec)) < set(whole_items.columns)  # the titles, raw values... stay out
    assert "history" in whole_users.columns and "history" not in UserFeatures.columns(spec)
    lean = FeatureTables.load(small_features)
    full_items = ItemFeatures.from_table(whole_items, spec)
    full_users = UserFeatures.from_table(whole_users, spec)
    for got, want in ((lean.items.single, full_items.single), (lean.users.single, full_users.single)):
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    for name, ragged in full_items.bags.items():
        np.testing.assert_array_equal(lean.items.bags[name].values, ragged.values)
        np.testing.assert_array_equal(lean.items.bags[name].offsets, ragged.offsets)
    assert lean.items.cardinalities == full_items.cardinalities
    assert lean.users.cardinalities == full_users.cardinalities


def test_read_columns_skips_absent_columns_and_keeps_the_order(tmp_path: Path) -> None:
    pl.DataFrame({"a": [1], "b": ["x"], "c": [2.0]}).write_parquet(tmp_path / "t.parquet")
    got = read_columns(tmp_path / "t.parquet", ["c", "missing", "a", "c"])
    assert got.columns == ["c", "a"]


def test_coded_column_gives_back_each_value_and_none() -> None:
    raw = ["north", None, "east", "north", "west", None]
    col = CodedColumn.from_series(pl.Series("region", raw))
    assert col.values.tolist() == ["east", "north", "west"]
    assert col.codes.dtype == np.int32 and col.codes.tolist() == [1, -1, 0, 1, 2, -1]
    assert [col[i] for i in range(len(col))] == raw
    empty = CodedColumn.from_series(pl.Series("region", [None, None], dtype=pl.String))
    assert [empty[i] for i in range(2)] == [None, None]


def test_popular_lists_count_the_window_then_all_time_then_the_index() -> None:
    t0 = datetime(2026, 1, 31, tzinfo=UTC)
    old, new = t0 - timedelta(days=20), t0 - timedelta(days=1)
    # item: (recent events, old events): 3 (2, 0), 1 (1, 3), 2 (1, 1), 4 (1, 1), 5 (0, 9); item 0 is unknown
    events = [(3, new)] * 2 + [(1, new)] + [(1, old)] * 3 + [(2, new), (2, old), (4, new), (4, old)]
    events += [(5, old)] * 9 + [(0, new)] * 5
    interactions = pl.DataFrame(
        {
            "user_idx": np.arange(len(events), dtype=np.int32) % 4 + 1,
            "item_idx": np.array([i for i, _ in events], dtype=np.int32),
            "timestamp": [t for _, t in events],
        }
    )
    users = pl.DataFrame({"user_idx": [1, 2, 3, 4], "region": ["n", "n", "s", None]}).with_columns(
        pl.col("user_idx").cast(pl.Int32)
    )
    lists = PopularLists.build(interactions, users, ["region", "absent"], window_days=7, size=4)
    assert lists.global_items.tolist() == [3, 1, 2, 4]  # 5 has the most events, none recent
    every = PopularLists.build(interactions, users, [], window_days=None, size=10)
    assert every.global_items.tolist() == [5, 1, 2, 3, 4]  # 2, 3 and 4 tie at 2: by index
    assert set(lists.segments) == {"region"} and set(lists.segments["region"]) == {"n", "s"}
    for value, members in (("n", {1, 2}), ("s", {3})):
        rows = interactions.with_row_index().filter(pl.col("user_idx").is_in(list(members)))
        mine = PopularLists.build(rows.drop("index"), users, [], window_days=7, size=4)
        assert lists.segments["region"][value].tolist() == mine.global_items.tolist()
