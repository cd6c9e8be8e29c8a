"""Features: encoders, spec round trip, point-in-time activity, and the features stage on ML-100K."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from recstack.data.ingest import ingest
from recstack.features.build import build_features
from recstack.features.encoders import NumericEncoder, Vocabulary, list_lookup_expr, tokenize_expr
from recstack.features.spec import FeatureSpec
from recstack.features.transform import encode_users, item_activity, user_histories

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_vocabulary_orders_by_frequency_and_maps_unknown_to_zero() -> None:
    v = Vocabulary.fit(pl.Series("x", ["b", "a", "b", "c", "b", "a", None]), "x")
    assert v.values.to_list() == ["b", "a", "c"]
    assert v.lookup(["a", "b", "zzz", None]).tolist() == [2, 1, 0, 0]
    assert v.decode(np.array([1, 0, 3])) == ["b", None, "c"]
    assert Vocabulary.fit(pl.Series("x", [1, 1, 2]), "x", min_count=2).values.to_list() == [1]


def test_large_vocabulary_round_trips_through_parquet(tmp_path: Path) -> None:
    ids = pl.Series("user_id", np.arange(25_000))
    v = Vocabulary.fit(ids, "user_id")
    assert v.inline is None
    v.save_values(tmp_path)
    loaded = Vocabulary.model_validate_json(v.model_dump_json())
    loaded.load_values(tmp_path)
    assert loaded.lookup([0, 24_999, 99_999]).tolist() == v.lookup([0, 24_999, 99_999]).tolist()
    assert loaded.lookup([99_999]).tolist() == [0]


def test_numeric_encoder_standardizes_and_buckets() -> None:
    enc = NumericEncoder.fit(pl.Series("a", [1.0, 2.0, 3.0, 4.0, 5.0]), "a", n_buckets=4)
    out = pl.DataFrame({"a": [1.0, 3.0, None, 100.0]}).select(
        enc.transform_expr(pl.col("a")).alias("z"), enc.bucketize_expr(pl.col("a")).alias("b")
    )
    assert out["z"][1] == pytest.approx(0.0) and out["z"][2] == 0.0
    assert out["b"].to_list() == [1, 2, 0, 4]


def test_title_tokens_drop_unknown() -> None:
    df = pl.DataFrame({"t": ["Blue Train", "Kind of Blue", None]}).with_columns(
        tok=tokenize_expr(pl.col("t"))
    )
    vocab = Vocabulary.fit(pl.Series("tok", ["blue", "blue", "train"]), "tok")
    assert df.select(list_lookup_expr(vocab, pl.col("tok")))["tok"].to_list() == [[1, 2], [1], []]


def _inter(rows: list[tuple[int, int, int]]) -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": [T0 + timedelta(days=r[2]) for r in rows],
        },
        schema_overrides={"timestamp": pl.Datetime("us", "UTC")},
    )


def test_item_activity_is_point_in_time() -> None:
    inter = _inter([(1, 1, 0), (2, 1, 8), (3, 1, 9), (1, 2, 10)])
    as_of = T0 + timedelta(days=9)
    act = item_activity(inter, as_of, [7], inclusive=False).collect().sort("item_id")
    # strictly before day 9: item 1 seen at days 0 and 8 (only day 8 within 7 days); item 2 not yet
    assert act["item_id"].to_list() == [1]
    assert act["pop_all"].to_list() == [2] and act["pop_7d"].to_list() == [1]
    incl = item_activity(inter, as_of, [7]).collect()
    assert incl["pop_all"].to_list() == [3]


def test_features_stage_on_ml100k(ml100k_path: Path, tmp_path: Path) -> None:
    ingest("movielens-100k", ml100k_path, tmp_path / "ingest")
    res = build_features(tmp_path / "ingest", tmp_path / "features", history_length=20)
    m = res.metrics
    assert (m["train_interactions"] + m["valid_interactions"], m["test_interactions"]) == (80_000, 20_000)
    assert m["items"] == 1682 and m["users"] == 943 and m["categories"] == 19

    items = pl.read_parquet(tmp_path / "features" / "items.parquet")
    inter = pl.read_parquet(tmp_path / "features" / "interactions.parquet")
    # Every catalog item has an index; popularity counts only the fit part (no test leakage).
    assert items["item_idx"].min() == 1 and items["item_idx"].n_unique() == 1682
    assert items["pop_all"].sum() == 80_000
    fit = inter.filter(pl.col("split") != "test")
    assert fit["timestamp"].max() == res.spec.reference_time
    # Histories come from the fit part only and are the most recent items, most recent last.
    users = pl.read_parquet(tmp_path / "features" / "users.parquet")
    u = users.filter(pl.col("user_id") == 1)
    last = fit.filter(pl.col("user_id") == 1).sort(["timestamp", "item_id"]).tail(20)["item_idx"].to_list()
    assert u["history"].item().to_list() == last
    test_items = set(
        inter.filter((pl.col("split") == "test") & (pl.col("user_id") == 1))["item_idx"].to_list()
    )
    assert not test_items & set(last)
    # Encoded user attributes: occupation / gender / region are categorical, zip is replaced by region.
    assert {"occupation", "gender", "region"} <= set(res.spec.user_categorical)
    assert "user.zip_code" in res.spec.skipped_columns

    spec = FeatureSpec.load(tmp_path / "features")
    assert spec.model_dump() == res.spec.model_dump()
    # The online path: an unknown user with a known occupation gets index 0 for the id, a real index for
    # the occupation, through the same encode_users used offline.
    online = encode_users(
        spec, pl.LazyFrame({"user_id": [999_999], "occupation": ["engineer"], "zip_code": ["94110"]})
    ).collect()
    assert online["user_idx"].item() == 0
    assert online["occupation_idx"].item() == spec.user_categorical["occupation"].lookup(["engineer"])[0] > 0
    assert online["region_idx"].item() == spec.user_categorical["region"].lookup(["9"])[0]
    hist = user_histories(inter.lazy().filter(pl.col("split") != "test"), spec).collect()
    assert hist.filter(pl.col("user_id") == 1)["history"].item().to_list() == last


def test_features_are_deterministic(ml100k_path: Path, tmp_path: Path) -> None:
    ingest("movielens-100k", ml100k_path, tmp_path / "ingest")
    build_features(tmp_path / "ingest", tmp_path / "a")
    build_features(tmp_path / "ingest", tmp_path / "b")
    for name in ("interactions.parquet", "items.parquet", "users.parquet", "feature_spec.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


@pytest.mark.parametrize("method", ["per_user_temporal", "global_temporal", "random"])
def test_features_in_user_parts_equal_one_part(ml100k_path: Path, tmp_path: Path, method: str) -> None:
    """Out-of-core processing (7 user parts of ~15k rows) writes what one in-memory part writes (floats up to
    the last bit: a day count divided in a smaller frame can round one ulp apart)."""
    ingest("movielens-100k", ml100k_path, tmp_path / "ingest")
    one = build_features(tmp_path / "ingest", tmp_path / "one", split_method=method, partition_rows=0)
    many = build_features(tmp_path / "ingest", tmp_path / "many", split_method=method, partition_rows=15_000)
    assert one.metrics == many.metrics
    assert one.spec.model_dump_json() == many.spec.model_dump_json()
    assert one.spec.user_id.values.equals(many.spec.user_id.values)
    for name in ("items.parquet", "users.parquet"):
        assert_frame_equal(
            pl.read_parquet(tmp_path / "one" / name), pl.read_parquet(tmp_path / "many" / name), rel_tol=1e-12
        )
    key = ["user_id", "timestamp", "item_id"]
    a = pl.read_parquet(tmp_path / "one" / "interactions.parquet").sort(key)
    b = pl.read_parquet(tmp_path / "many" / "interactions.parquet").sort(key)
    assert a.equals(b)
    assert not list(tmp_path.glob(".recstack-scratch-*"))
