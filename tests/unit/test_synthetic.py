"""Tests of the synthetic generator: layout, schema, determinism and every realism property it promises."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from recstack.data import synthetic
from recstack.data.io import DATASET_INFO_FILE, INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE, scan_canonical
from recstack.data.schema import (
    CATEGORIES,
    CREATED_AT,
    EVENT_TYPE,
    ITEM_ID,
    TIMESTAMP,
    TIMESTAMP_DTYPE,
    TITLE,
    USER_ID,
    VALUE,
)
from recstack.data.synthetic import (
    DEFAULT_CONFIG,
    EVENT_TYPES,
    SyntheticConfig,
    category_names,
    generate_default,
    generate_synthetic,
    latent_user_clusters,
)

# Big enough for the statistical properties, small enough to generate in well under a second.
REALISM = SyntheticConfig(
    n_users=2_000,
    n_items=600,
    n_interactions=60_000,
    n_categories=10,
    n_clusters=6,
    n_days=180,
    n_time_buckets=12,
    late_item_fraction=0.2,
    short_history_fraction=0.15,
    seed=3,
    chunk_users=700,  # three parts
)
# Tiny, for the byte-level checks that generate several times.
TINY = SyntheticConfig(
    n_users=300, n_items=120, n_interactions=4_000, n_categories=6, n_clusters=3, chunk_users=100
)


@pytest.fixture(scope="module")
def realism_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "realism"
    generate_synthetic(out, REALISM)
    return out


@pytest.fixture(scope="module")
def tables(realism_dir: Path) -> dict[str, pl.DataFrame]:
    raw = scan_canonical(realism_dir)
    assert raw.items is not None and raw.users is not None
    return {
        "interactions": raw.interactions.collect(),
        "items": raw.items.collect(),
        "users": raw.users.collect(),
    }


def _file_hashes(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _changed(config: SyntheticConfig, **changes: object) -> SyntheticConfig:
    # model_copy(update=...) would skip validation.
    return SyntheticConfig(**{**config.model_dump(), **changes})


def _period_start(config: SyntheticConfig) -> datetime:
    return datetime(config.start_date.year, config.start_date.month, config.start_date.day, tzinfo=UTC)


# --- layout, schema, reading -------------------------------------------------------------------------
def test_writes_canonical_layout_with_one_part_per_chunk(realism_dir: Path) -> None:
    parts = sorted(p.name for p in (realism_dir / INTERACTIONS_FILE).iterdir())
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert (realism_dir / ITEMS_FILE).is_file()
    assert (realism_dir / USERS_FILE).is_file()
    info = json.loads((realism_dir / DATASET_INFO_FILE).read_text())
    assert info["config"] == REALISM.model_dump(mode="json")
    assert info["counts"]["parts"] == 3


def test_schema_and_dtypes(tables: dict[str, pl.DataFrame]) -> None:
    assert tables["interactions"].schema == pl.Schema(
        {
            USER_ID: pl.Int64,
            ITEM_ID: pl.Int64,
            TIMESTAMP: TIMESTAMP_DTYPE,
            EVENT_TYPE: pl.String,
            VALUE: pl.Float64,
        }
    )
    assert tables["items"].schema == pl.Schema(
        {
            ITEM_ID: pl.Int64,
            TITLE: pl.String,
            CATEGORIES: pl.List(pl.String),
            CREATED_AT: TIMESTAMP_DTYPE,
            "brand": pl.String,
            "price": pl.Float64,
        }
    )
    assert tables["users"].schema == pl.Schema(
        {
            USER_ID: pl.Int64,
            "age": pl.Int64,
            "gender": pl.String,
            "occupation": pl.String,
            "region": pl.String,
        }
    )


def test_counts_match_config_summary_and_dataset_json(tmp_path: Path) -> None:
    summary = generate_synthetic(tmp_path, REALISM)
    raw = scan_canonical(tmp_path)
    n_rows = raw.interactions.select(pl.len()).collect().item()
    info = json.loads((tmp_path / DATASET_INFO_FILE).read_text())
    assert summary["n_interactions"] == n_rows == info["counts"]["interactions"]
    assert summary["n_users"] == info["counts"]["users"] == REALISM.n_users
    assert summary["n_items"] == info["counts"]["items"] == REALISM.n_items
    assert abs(n_rows / REALISM.n_interactions - 1) < 0.1  # approximately met
    assert summary["seconds"] > 0


def test_ids_present_unique_and_referential(tables: dict[str, pl.DataFrame]) -> None:
    inter, items, users = tables["interactions"], tables["items"], tables["users"]
    assert inter.null_count().sum_horizontal().item() == 0
    assert items[ITEM_ID].is_unique().all() and users[USER_ID].is_unique().all()
    assert items.height == REALISM.n_items and users.height == REALISM.n_users
    assert inter.join(items, on=ITEM_ID, how="anti").height == 0
    assert inter.join(users, on=USER_ID, how="anti").height == 0
    assert inter.select(USER_ID).n_unique() == REALISM.n_users  # every user interacts
    assert inter.height == inter.unique([USER_ID, ITEM_ID, TIMESTAMP]).height


# --- determinism --------------------------------------------------------------------------------------
def test_same_config_gives_byte_identical_files(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", TINY)
    generate_synthetic(tmp_path / "b", TINY)
    hashes = _file_hashes(tmp_path / "a")
    assert len(hashes) == 3 + 3  # three parts + items, users, dataset.json
    assert hashes == _file_hashes(tmp_path / "b")


def test_different_seed_gives_different_data(tmp_path: Path) -> None:
    generate_synthetic(tmp_path / "a", TINY)
    generate_synthetic(tmp_path / "b", _changed(TINY, seed=TINY.seed + 1))
    a = scan_canonical(tmp_path / "a").interactions.collect()
    b = scan_canonical(tmp_path / "b").interactions.collect()
    assert not a.equals(b)
    assert _file_hashes(tmp_path / "a")["items.parquet"] != _file_hashes(tmp_path / "b")["items.parquet"]


def test_chunks_do_not_depend_on_processing_order(realism_dir: Path) -> None:
    catalog = synthetic._build_catalog(REALISM)
    for chunk in (2, 0, 1):  # out of order on purpose
        _, interactions = synthetic._user_chunk(REALISM, catalog, chunk)
        written = pq.read_table(realism_dir / INTERACTIONS_FILE / f"part-{chunk:05d}.parquet")
        assert written.equals(interactions)


def test_parquet_files_embed_nothing_time_dependent(realism_dir: Path) -> None:
    for path in [
        realism_dir / ITEMS_FILE,
        realism_dir / USERS_FILE,
        *(realism_dir / INTERACTIONS_FILE).iterdir(),
    ]:
        meta = pq.read_metadata(path)
        assert set(meta.metadata or {}) <= {b"ARROW:schema"}, path
        assert "parquet-cpp-arrow" in meta.created_by
    info = (realism_dir / DATASET_INFO_FILE).read_text()
    assert "seconds" not in info and str(realism_dir) not in info


def test_rerun_replaces_previous_parts(tmp_path: Path) -> None:
    generate_synthetic(tmp_path, TINY)  # three parts
    generate_synthetic(tmp_path, _changed(TINY, chunk_users=1_000))  # one part
    assert [p.name for p in (tmp_path / INTERACTIONS_FILE).iterdir()] == ["part-00000.parquet"]
    n_rows = scan_canonical(tmp_path).interactions.select(pl.len()).collect().item()
    assert n_rows == json.loads((tmp_path / DATASET_INFO_FILE).read_text())["counts"]["interactions"]


def test_rerun_refuses_to_delete_foreign_files(tmp_path: Path) -> None:
    generate_synthetic(tmp_path, TINY)
    (tmp_path / INTERACTIONS_FILE / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="other than"):
        generate_synthetic(tmp_path, TINY)
    assert (tmp_path / INTERACTIONS_FILE / "notes.txt").exists()
    assert len(list((tmp_path / INTERACTIONS_FILE).glob("*.parquet"))) == 3  # nothing deleted either
    assert not (tmp_path / DATASET_INFO_FILE).exists()  # no stale marker of a complete dataset
    assert pl.read_parquet(tmp_path / ITEMS_FILE).height == TINY.n_items  # the previous items, untouched


# --- realism ------------------------------------------------------------------------------------------
def test_power_law_popularity(tables: dict[str, pl.DataFrame]) -> None:
    inter = tables["interactions"]
    counts = np.sort(inter.group_by(ITEM_ID).len()["len"].to_numpy())[::-1]
    top_share = counts[: REALISM.n_items // 10].sum() / inter.height
    assert top_share > 0.4
    # Roughly linear log-log rank/count over the head (a Zipf law): a clearly negative slope.
    head = counts[: REALISM.n_items // 3]
    slope = np.polyfit(np.log(np.arange(1, head.size + 1)), np.log(head), 1)[0]
    assert slope < -0.5


def test_users_of_a_cluster_share_items(tables: dict[str, pl.DataFrame]) -> None:
    clusters = latent_user_clusters(REALISM)
    assert clusters.shape == (REALISM.n_users,)
    sets = {u: set(items) for u, items in tables["interactions"].group_by(USER_ID).agg(ITEM_ID).iter_rows()}
    rng = np.random.default_rng(0)
    within, across = [], []
    for a, b in rng.integers(1, REALISM.n_users + 1, size=(20_000, 2)):
        if a == b:
            continue
        jaccard = len(sets[a] & sets[b]) / len(sets[a] | sets[b])
        (within if clusters[a - 1] == clusters[b - 1] else across).append(jaccard)
    assert np.mean(within) > 1.5 * np.mean(across)


def test_user_attributes_lean_towards_clusters(tables: dict[str, pl.DataFrame]) -> None:
    users = tables["users"].with_columns(cluster=pl.Series(latent_user_clusters(REALISM)))

    def age_spread(frame: pl.DataFrame) -> float:
        means = frame.group_by("cluster").agg(pl.col("age").mean(), pl.len()).filter(pl.col("len") >= 50)
        return float(means["age"].max() - means["age"].min())

    shuffled = users.with_columns(pl.col("cluster").shuffle(seed=0))
    assert age_spread(users) > 8.0
    assert age_spread(users) > 3 * age_spread(shuffled)
    assert set(users["gender"].unique()) <= set(synthetic.GENDERS)
    assert users["age"].is_between(*synthetic.AGE_RANGE).all()


def test_popularity_drifts_between_first_and_last_month(tables: dict[str, pl.DataFrame]) -> None:
    inter = tables["interactions"]
    start = _period_start(REALISM)
    end = start + timedelta(days=REALISM.n_days)

    def top_items(frame: pl.DataFrame, k: int = 20) -> set[int]:
        ranked = frame.group_by(ITEM_ID).len().sort(["len", ITEM_ID], descending=[True, False])
        return set(ranked.head(k)[ITEM_ID])

    first = top_items(inter.filter(pl.col(TIMESTAMP) < start + timedelta(days=30)))
    last = top_items(inter.filter(pl.col(TIMESTAMP) >= end - timedelta(days=30)))
    assert len(first & last) / len(first | last) < 0.5


def test_late_items_get_no_interactions_before_release(tables: dict[str, pl.DataFrame]) -> None:
    items, inter = tables["items"], tables["interactions"]
    start = _period_start(REALISM)
    window_start = start + timedelta(days=REALISM.n_days * (1 - REALISM.late_item_window))
    late = items.filter(pl.col(CREATED_AT) >= start)
    assert late.height == round(REALISM.late_item_fraction * REALISM.n_items)
    assert (late[CREATED_AT] >= window_start).all()
    joined = inter.join(items.select(ITEM_ID, CREATED_AT), on=ITEM_ID)
    assert joined.filter(pl.col(TIMESTAMP) < pl.col(CREATED_AT)).height == 0
    late_seen = joined.filter(pl.col(ITEM_ID).is_in(late[ITEM_ID].implode()))[ITEM_ID].n_unique()
    assert late_seen > late.height / 2  # most late items do get interactions once released


def test_interactions_in_time_order_inside_the_period(tables: dict[str, pl.DataFrame]) -> None:
    inter = tables["interactions"]
    start = _period_start(REALISM)
    assert inter[TIMESTAMP].min() >= start
    assert inter[TIMESTAMP].max() < start + timedelta(days=REALISM.n_days)
    # Rows are grouped by user and strictly increasing in time within a user.
    assert inter[USER_ID].is_sorted()
    increasing = inter.select((pl.col(TIMESTAMP).diff().over(USER_ID) > 0).fill_null(True).all()).item()
    assert increasing
    # Users are active over a span, not the whole period: the median span is well under the period.
    spans = inter.group_by(USER_ID).agg((pl.col(TIMESTAMP).max() - pl.col(TIMESTAMP).min()).alias("span"))
    assert spans["span"].median() < timedelta(days=REALISM.n_days * 0.7)


def test_activity_over_the_period_is_not_lopsided(tables: dict[str, pl.DataFrame]) -> None:
    inter = tables["interactions"]
    months = inter.group_by(pl.col(TIMESTAMP).dt.truncate("1mo")).len()["len"]
    assert months.min() > 0.3 * months.max()


def test_short_history_fraction(tables: dict[str, pl.DataFrame]) -> None:
    per_user = tables["interactions"].group_by(USER_ID).len()["len"]
    short = (per_user <= synthetic.SHORT_HISTORY_RANGE[1]).mean()
    assert abs(short - REALISM.short_history_fraction) < 0.03
    assert per_user.min() >= 1
    assert per_user.max() > 10 * per_user.median()  # heavy-tailed activity


def test_event_types_and_values(tables: dict[str, pl.DataFrame]) -> None:
    inter = tables["interactions"]
    shares = dict(inter[EVENT_TYPE].value_counts(normalize=True).iter_rows())
    assert set(shares) == set(EVENT_TYPES)
    assert shares["view"] + shares["click"] > 0.6
    assert shares["purchase"] > 0.01 and shares["like"] > 0.01
    ratings = inter.filter(pl.col(EVENT_TYPE) == synthetic.RATING_EVENT)[VALUE]
    assert set(ratings.unique()) <= {1.0, 2.0, 3.0, 4.0, 5.0} and ratings.n_unique() >= 4
    others = inter.filter(pl.col(EVENT_TYPE) != synthetic.RATING_EVENT)[VALUE]
    assert (others == 1.0).all()


def test_items_have_categories_titles_and_attributes(tables: dict[str, pl.DataFrame]) -> None:
    items = tables["items"]
    n_categories = items[CATEGORIES].list.len()
    assert n_categories.min() == 1 and n_categories.max() == 3
    assert items[CATEGORIES].list.n_unique().equals(n_categories)  # no repeated category within an item
    assert set(items[CATEGORIES].explode()) <= set(category_names(REALISM.n_categories))
    assert (items["price"] > 0).all() and items["brand"].null_count() == 0
    assert items[TITLE].str.split(" ").list.len().eq(3).all()


def test_titles_share_tokens_within_a_category(tables: dict[str, pl.DataFrame]) -> None:
    items = tables["items"].select(pl.col(CATEGORIES).list.first().alias("cat"), pl.col(TITLE).str.split(" "))
    cats, titles = items["cat"].to_list(), [set(t) for t in items[TITLE].to_list()]
    rng = np.random.default_rng(0)
    within, across = [], []
    for a, b in rng.integers(0, len(titles), size=(20_000, 2)):
        if a != b:
            (within if cats[a] == cats[b] else across).append(len(titles[a] & titles[b] - {"The"}))
    assert np.mean(within) > 2 * np.mean(across)


# --- config ---------------------------------------------------------------------------------------------
def test_default_config_values() -> None:
    assert DEFAULT_CONFIG.n_users == 3_000
    assert DEFAULT_CONFIG.n_items == 1_500
    assert DEFAULT_CONFIG.n_interactions == 150_000
    assert DEFAULT_CONFIG.n_categories == 18
    assert DEFAULT_CONFIG.n_days == 365
    assert DEFAULT_CONFIG.start_date == date(2024, 1, 1)
    assert category_names(18)[9] == "Jazz"
    assert category_names(26)[24:] == ["Action 2", "Adventure 2"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_items": -5}, "n_items"),
        ({"late_item_fraction": 1.5}, "late_item_fraction"),
        ({"short_history_fraction": -0.1}, "short_history_fraction"),
        ({"drift_strength": 1.0}, "drift_strength"),
        ({"n_days": 3}, "n_days"),
        ({"n_users": 10_000, "n_interactions": 20_000}, "n_interactions=20000 is too small"),
        ({"n_users": 10, "n_interactions": 1_000_000}, "per user is too many"),
        ({"n_items": 3, "late_item_fraction": 0.9}, "makes all 3 items late"),
        (
            {"n_users": 1_000_000, "n_interactions": 200_000_000, "chunk_users": 100_000},
            "chunk_users <= 50000",
        ),
        ({"n_clusters": 1_000, "n_categories": 100}, "sampling table"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_config_validation_errors(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SyntheticConfig(**changes)


def test_config_is_frozen() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        DEFAULT_CONFIG.n_users = 5  # type: ignore[misc]


def test_smallest_world_works(tmp_path: Path) -> None:
    config = SyntheticConfig(n_users=20, n_items=2, n_interactions=200, n_categories=1, n_clusters=1,
                             late_item_fraction=0.0, short_history_fraction=0.0, cluster_affinity=1.0)  # fmt: skip
    summary = generate_synthetic(tmp_path, config, progress=True)
    items = scan_canonical(tmp_path).items
    assert items is not None
    assert items.collect()[CATEGORIES].to_list() == [["Action"], ["Action"]]
    assert summary["n_short_history_users"] == 0


def test_generate_default_writes_the_embedded_dataset(tmp_path: Path) -> None:
    summary = generate_default(tmp_path)
    assert summary["n_users"] == 3_000 and summary["n_items"] == 1_500
    assert abs(summary["n_interactions"] / 150_000 - 1) < 0.05
    assert json.loads((tmp_path / DATASET_INFO_FILE).read_text())["config"] == DEFAULT_CONFIG.model_dump(
        mode="json"
    )
    items = pl.read_parquet(tmp_path / ITEMS_FILE)
    assert set(items[CATEGORIES].explode()) == set(category_names(18))


@pytest.mark.slow
def test_scale_run_has_bounded_memory(tmp_path: Path) -> None:
    # A separate process, so that its peak RSS is the generator's alone.
    script = (
        "import resource, sys\n"
        "from recstack.data.synthetic import SyntheticConfig, generate_synthetic\n"
        "cfg = SyntheticConfig(n_users=60_000, n_items=20_000, n_interactions=3_000_000, n_categories=30,"
        " n_clusters=40)\n"
        "s = generate_synthetic(sys.argv[1], cfg)\n"
        "print(s['n_interactions'], s['seconds'], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
    # The child imports recstack from wherever this process did (installed or not).
    src = str(Path(synthetic.__file__).parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True, env=env
    )
    n_rows, seconds, max_rss_kb = done.stdout.split()
    assert abs(int(n_rows) / 3_000_000 - 1) < 0.05
    assert float(seconds) < 60
    assert int(max_rss_kb) < 1_500_000  # KiB on Linux
