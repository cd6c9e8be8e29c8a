"""Splits: protocol P1 exactly (hand-checked cases and the ML-100K counts), temporal and random."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from recstack.data.ingest import ingest
from recstack.data.io import read_canonical
from recstack.data.schema import DataError
from recstack.data.split import dedupe_pairs, make_split, split_counts

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _frame(rows: list[tuple[int, int, int]]) -> pl.DataFrame:
    """(user, item, day offset) rows -> canonical interactions."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [T0 + timedelta(days=r[2]) for r in rows],
            "event_type": ["x"] * len(rows),
            "value": [1.0] * len(rows),
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )


def _labels(split: pl.DataFrame, user: int) -> list[str]:
    return split.filter(pl.col("user_id") == user)["split"].to_list()


def test_p1_hand_computed() -> None:
    # user 1: 10 interactions -> n_test = floor(2 + .5) = 2; train part 8 -> n_valid = floor(1.6 + .5) = 2
    # user 2: 7 -> n_test = floor(1.4 + .5) = 1; train 6 -> n_valid = floor(1.2 + .5) = 1
    # user 3: 4 interactions -> stays in train entirely
    # user 4: 5 -> n_test 1; train part 4 < 5 -> no valid
    rows = [(1, i, i) for i in range(10)] + [(2, i, i) for i in range(7)] + [(3, i, i) for i in range(4)]
    rows += [(4, i, i) for i in range(5)]
    s = make_split(_frame(rows))
    assert _labels(s, 1) == ["train"] * 6 + ["valid"] * 2 + ["test"] * 2
    assert _labels(s, 2) == ["train"] * 5 + ["valid"] + ["test"]
    assert _labels(s, 3) == ["train"] * 4
    assert _labels(s, 4) == ["train"] * 4 + ["test"]
    assert split_counts(s)["evaluated_users"] == 3


def test_p1_ties_broken_by_item_id_and_input_order_irrelevant() -> None:
    rows = [(1, 9, 0), (1, 3, 0), (1, 5, 0), (1, 1, 0), (1, 7, 0)]  # all at the same time
    s = make_split(_frame(rows).sample(fraction=1.0, shuffle=True, seed=3))
    assert s["item_id"].to_list() == [1, 3, 5, 7, 9]
    assert s.filter(pl.col("split") == "test")["item_id"].to_list() == [9]


def test_dedupe_keeps_latest() -> None:
    d = dedupe_pairs(_frame([(1, 1, 0), (1, 1, 5), (1, 2, 1)]))
    assert d.height == 2
    assert d.filter(pl.col("item_id") == 1)["timestamp"].item() == T0 + timedelta(days=5)


def test_global_temporal_and_cutoff() -> None:
    rows = [(u, i, 10 * u + i) for u in range(5) for i in range(10)]
    s = make_split(_frame(rows), "global_temporal", cutoff="2024-01-30")
    test = s.filter(pl.col("split") == "test")
    assert test["timestamp"].min() >= datetime(2024, 1, 30, tzinfo=UTC)
    assert s.filter(pl.col("split") != "test")["timestamp"].max() < datetime(2024, 1, 30, tzinfo=UTC)
    q = make_split(_frame(rows), "global_temporal", test_fraction=0.2)
    assert q.filter(pl.col("split") == "test").height == 10
    with pytest.raises(DataError, match="no interaction before the cut-off"):
        make_split(_frame(rows), "global_temporal", cutoff="2000-01-01")


def test_random_split_deterministic() -> None:
    rows = [(u, i, i) for u in range(50) for i in range(20)]
    a = make_split(_frame(rows), "random", seed=7)
    b = make_split(_frame(rows).reverse(), "random", seed=7)
    c = make_split(_frame(rows), "random", seed=8)
    assert a.equals(b) and not a.equals(c)
    assert 0.15 < (a["split"] == "test").mean() < 0.25


def test_bad_split_parameters() -> None:
    with pytest.raises(DataError, match="unknown split method 'weird'"):
        make_split(_frame([(1, 1, 1)]), "weird")
    with pytest.raises(DataError, match="test_fraction must be in"):
        make_split(_frame([(1, 1, 1)]), test_fraction=1.5)


def test_p1_on_ml100k_matches_protocol_counts(ml100k_path: Path, tmp_path: Path) -> None:
    ingest("movielens-100k", ml100k_path, tmp_path)
    inter = dedupe_pairs(read_canonical(tmp_path).interactions.collect())
    s = make_split(inter)
    counts = split_counts(s)
    assert counts["train"] + counts["valid"] == 80_000
    assert counts["test"] == 20_000
    assert counts["evaluated_users"] == 943
    assert make_split(inter).equals(s)  # deterministic


def test_global_temporal_part_cut_at_the_whole_logs_times() -> None:
    """A part of a long log holding only late users is cut at the given times, not refused for having no
    interaction before the cut-off (only the whole log must have one)."""
    late = _frame([(1, 1, 50), (1, 2, 60), (2, 1, 70)])
    cut, vcut = T0 + timedelta(days=40), T0 + timedelta(days=20)
    out = make_split(late, "global_temporal", cutoff=cut, valid_cutoff=vcut)
    assert out["split"].to_list() == ["test", "test", "test"]
    with pytest.raises(DataError, match="no interaction before the cut-off"):
        make_split(late, "global_temporal", cutoff=cut)  # the whole log: nothing to train on
