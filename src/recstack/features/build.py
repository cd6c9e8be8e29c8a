"""The ``features`` stage: split, fit the encoders on the fit part, featurize, write columnar files.

Outputs (``artifacts/features/``):

* ``interactions.parquet``: ``user_id, item_id, user_idx, item_idx, timestamp, event_type, value, split``.
* ``items.parquet``: every catalog item: raw columns, ``item_idx``, ``category_idx``, ``title_token_idx``,
  encoded attributes and activity (popularity windows, age) as of the reference time.
* ``users.parquet``: every known user: raw attributes, ``user_idx``, encoded attributes and activity, and
  ``history`` (the last items of the fit part, as item indices).
* ``feature_spec.json`` (+ ``vocab/*.parquet``): the fitted encoders.

Everything fitted (vocabularies, statistics, popularity) sees only the fit part (train + valid), never test.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recstack.data.io import INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE, read_canonical
from recstack.data.schema import CATEGORIES, CREATED_AT, ITEM_ID, TIMESTAMP, TITLE, USER_ID, DataError
from recstack.data.split import FIT_SPLITS, SPLIT, TEST, dedupe_pairs, make_split, split_counts
from recstack.features.encoders import NumericEncoder, Vocabulary, tokenize_expr
from recstack.features.spec import FeatureSpec
from recstack.features.transform import (
    HISTORY,
    ITEM_IDX,
    USER_ACTIVITY,
    USER_IDX,
    ZIP_COLUMNS,
    derive_item_columns,
    derive_user_columns,
    encode_items,
    encode_users,
    index_interactions,
    item_activity,
    item_age_days,
    pop_column,
    user_activity,
    user_histories,
)

_ITEM_ACTIVITY_EXTRA = ("first_seen", "last_seen")


@dataclass
class FeaturesResult:
    """What the features stage wrote and measured."""

    out_dir: Path
    spec: FeatureSpec
    metrics: dict[str, Any]


def fingerprint(directory: Path, names: tuple[str, ...] = (INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE)) -> str:
    """SHA-256 over the bytes of a canonical dataset's files (a directory of parts counts part by part)."""
    h = hashlib.sha256()
    for name in names:
        p = directory / name
        files = sorted(p.glob("*.parquet")) if p.is_dir() else [p]
        for f in files:
            h.update(f.name.encode())
            with f.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def _attribute_encoders(
    frame: pl.DataFrame,
    skip: set[str],
    prefix: str,
    max_cardinality: int,
    n_buckets: int,
    skipped: dict[str, str],
) -> tuple[dict[str, Vocabulary], dict[str, NumericEncoder]]:
    """Categorical vocabularies for low-cardinality text / bool columns, numeric encoders for numbers."""
    categorical: dict[str, Vocabulary] = {}
    numeric: dict[str, NumericEncoder] = {}
    for col, dtype in frame.schema.items():
        if col in skip:
            continue
        name = col if col.startswith(f"{prefix}_") else f"{prefix}_{col}"
        if dtype.is_numeric():
            numeric[col] = NumericEncoder.fit(frame[col], name, n_buckets=n_buckets)
        elif dtype in (pl.String, pl.Boolean, pl.Categorical) or isinstance(dtype, pl.Enum):
            values = frame[col].cast(pl.String)
            if values.n_unique() <= max_cardinality:
                categorical[col] = Vocabulary.fit(values, name)
            else:
                skipped[f"{prefix}.{col}"] = (
                    f"{values.n_unique()} distinct values > max_categorical_cardinality"
                )
        else:
            skipped[f"{prefix}.{col}"] = f"dtype {dtype} is not encoded"
    return categorical, numeric


def build_features(
    ingest_dir: str | Path,
    out_dir: str | Path,
    *,
    split_method: str = "per_user_temporal",
    test_fraction: float = 0.2,
    valid_fraction: float = 0.2,
    min_user_interactions: int = 5,
    cutoff: str | None = None,
    seed: int = 42,
    dedupe: bool = True,
    history_length: int = 50,
    popularity_windows_days: tuple[int, ...] = (7, 30, 90),
    max_categorical_cardinality: int = 1000,
    n_buckets: int = 10,
    title_max_tokens: int = 16,
    title_min_count: int = 2,
    max_title_vocab: int = 20_000,
    min_user_count: int = 1,
) -> FeaturesResult:
    """Split the ingested data, fit encoders on the fit part and write the featurized tables.

    Args:
        ingest_dir: the ingest stage's output (canonical tables).
        out_dir: usually ``artifacts/features``.
        split_method: ``per_user_temporal`` (protocol P1), ``global_temporal`` or ``random``.
        test_fraction / valid_fraction / min_user_interactions / cutoff / seed: split settings.
        dedupe: collapse repeated (user, item) pairs to the latest one (P1 requires it).
        history_length: items kept in each user's recent-history sequence.
        popularity_windows_days: trailing windows of the item popularity counts.
        max_categorical_cardinality: text attributes with more distinct values are not encoded.
        n_buckets: quantile buckets of numeric features.
        title_max_tokens / title_min_count / max_title_vocab: title token settings.
        min_user_count: users with fewer fit interactions share the unknown-user index.
    """
    data = read_canonical(ingest_dir)
    inter = data.interactions.collect()
    if inter.height == 0:
        raise DataError(f"{ingest_dir} holds no interactions: nothing to featurize")
    if dedupe:
        inter = dedupe_pairs(inter)
    split = make_split(
        inter,
        split_method,
        test_fraction=test_fraction,
        valid_fraction=valid_fraction,
        min_user_interactions=min_user_interactions,
        seed=seed,
        cutoff=cutoff,
    )
    fit = split.filter(pl.col(SPLIT).is_in(FIT_SPLITS))
    if fit.height == 0:
        raise DataError("the split left no train interactions: lower test_fraction or move the cutoff later")
    reference_time = fit[TIMESTAMP].max()
    windows = sorted(set(popularity_windows_days))

    items = derive_item_columns(data.items).collect()
    users = derive_user_columns(data.users).collect()
    item_act = item_activity(fit.lazy(), reference_time, windows).collect()
    user_act = user_activity(fit.lazy(), reference_time).collect()
    items = items.join(item_act, on=ITEM_ID, how="left").with_columns(
        [pl.col(pop_column(w)).fill_null(0) for w in [*windows, None]]
    )
    items = items.with_columns(item_age_days(reference_time))
    users = users.join(user_act, on=USER_ID, how="full", coalesce=True).with_columns(
        pl.col(USER_ACTIVITY[0]).fill_null(0)
    )

    skipped: dict[str, str] = {}
    item_skip = {ITEM_ID, TITLE, CATEGORIES, CREATED_AT, *_ITEM_ACTIVITY_EXTRA}
    item_cat, item_num = _attribute_encoders(
        items, item_skip, "item", max_categorical_cardinality, n_buckets, skipped
    )
    for col in [pop_column(w) for w in [*windows, None]]:
        # Counts are heavy-tailed: log1p before standardizing keeps the head from swamping the dense arch.
        item_num[col] = NumericEncoder.fit(items[col], f"item_{col}", log=True, n_buckets=n_buckets)
    # A raw postal code is nearly a user id (it memorizes); the derived `region` generalizes instead.
    for col in set(ZIP_COLUMNS) & set(users.columns):
        skipped[f"user.{col}"] = "replaced by the derived `region` feature"
    user_cat, user_num = _attribute_encoders(
        users,
        {USER_ID, *USER_ACTIVITY, *ZIP_COLUMNS},
        "user",
        max_categorical_cardinality,
        n_buckets,
        skipped,
    )
    user_num[USER_ACTIVITY[0]] = NumericEncoder.fit(
        users[USER_ACTIVITY[0]], "user_n_interactions", log=True, n_buckets=n_buckets
    )
    user_num[USER_ACTIVITY[1]] = NumericEncoder.fit(
        users[USER_ACTIVITY[1]], "user_days_since_last", log=True, n_buckets=n_buckets
    )

    # Every catalog item gets an index (content features make even never-seen items useful); most
    # frequent first so that index order is popularity order.
    item_ids = pl.concat([items[ITEM_ID], fit[ITEM_ID].cast(items[ITEM_ID].dtype)])
    tokens = items.select(tokenize_expr(pl.col(TITLE)).alias("t"))["t"].explode()
    spec = FeatureSpec(
        reference_time=reference_time,
        split={
            "method": split_method,
            "test_fraction": test_fraction,
            "valid_fraction": valid_fraction,
            "min_user_interactions": min_user_interactions,
            "cutoff": cutoff,
            "seed": seed,
        },
        history_length=history_length,
        title_max_tokens=title_max_tokens,
        popularity_windows_days=windows,
        user_id=Vocabulary.fit(fit[USER_ID], "user_id", min_count=min_user_count),
        item_id=Vocabulary.fit(item_ids, "item_id"),
        user_categorical=user_cat,
        user_numeric=user_num,
        item_categorical=item_cat,
        item_numeric=item_num,
        categories=Vocabulary.fit(items[CATEGORIES].explode(), "categories"),
        title_tokens=Vocabulary.fit(
            tokens, "title_tokens", min_count=title_min_count, max_size=max_title_vocab
        ),
        skipped_columns=skipped,
        data_fingerprint=fingerprint(Path(ingest_dir)),
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(out)
    indexed = index_interactions(spec, split.lazy()).collect()
    indexed.write_parquet(out / INTERACTIONS_FILE)
    enc_items = encode_items(spec, items.lazy()).sort(ITEM_IDX).collect()
    enc_items.write_parquet(out / ITEMS_FILE)
    histories = user_histories(fit.lazy(), spec).collect()
    enc_users = (
        encode_users(spec, users.lazy())
        .join(histories.lazy(), on=USER_ID, how="left")
        .with_columns(pl.col(HISTORY).fill_null(pl.lit([], dtype=pl.List(pl.Int32))))
        .sort([USER_IDX, USER_ID])
        .collect()
    )
    enc_users.write_parquet(out / USERS_FILE)
    metrics = _metrics(indexed, spec, enc_items)
    return FeaturesResult(out_dir=out, spec=spec, metrics=metrics)


def _metrics(indexed: pl.DataFrame, spec: FeatureSpec, items: pl.DataFrame) -> dict[str, Any]:
    counts = split_counts(indexed)
    test = indexed.filter(pl.col(SPLIT) == TEST)
    fit_items = set(indexed.filter(pl.col(SPLIT).is_in(FIT_SPLITS))[ITEM_ID].unique().to_list())
    return {
        **{f"{k}_interactions" if k in ("train", "valid", "test") else k: v for k, v in counts.items()},
        "users": spec.user_id.size,
        "items": spec.item_id.size,
        "categories": spec.categories.size,
        "title_tokens": spec.title_tokens.size,
        "cold_test_users": test.filter(pl.col(USER_IDX) == 0)[USER_ID].n_unique(),
        "test_items_unseen_in_train": len(set(test[ITEM_ID].unique().to_list()) - fit_items),
        "items_without_interactions": items.filter(pl.col(pop_column(None)) == 0).height,
    }


def popularity_curve(items: pl.DataFrame, max_points: int = 2000) -> pl.DataFrame:
    """Item rank (1 = most popular) vs fit interactions: the long-tail plot `dvc plots` shows.

    Catalogs with more interacted items than ``max_points`` keep log-spaced ranks (first and last
    included): the curve is drawn on log axes, and a chart of a million rows is refused by Altair and
    unreadable in ``dvc plots``.
    """
    counts = items.select(pl.col(pop_column(None)).alias("interactions")).sort(
        "interactions", descending=True
    )
    curve = counts.with_row_index("rank", offset=1).filter(pl.col("interactions") > 0)
    if curve.height <= max_points:
        return curve
    ranks = np.unique(np.geomspace(1, curve.height, max_points).round().astype(np.int64))
    return curve.filter(pl.col("rank").is_in(ranks.tolist()))


def weekly_volume(interactions: pl.DataFrame) -> pl.DataFrame:
    """Interactions per week and split: shows where the temporal cut-offs fall."""
    return (
        interactions.group_by(pl.col(TIMESTAMP).dt.truncate("1w").dt.date().alias("week"), SPLIT)
        .len("interactions")
        .sort(["week", SPLIT])
        .with_columns(pl.col("week").cast(pl.String))
    )
