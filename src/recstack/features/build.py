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
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recstack.data.io import INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE, read_canonical
from recstack.data.partition import (
    DEFAULT_PARTITION_ROWS,
    add_counts,
    concat_parts,
    count_rows,
    n_parts_for,
    partition,
    scratch_dir,
    union_unique,
)
from recstack.data.schema import CATEGORIES, CREATED_AT, ITEM_ID, TIMESTAMP, TITLE, USER_ID, DataError
from recstack.data.split import (
    FIT_SPLITS,
    SPLIT,
    TEST,
    TRAIN,
    VALID,
    dedupe_pairs,
    global_cutoffs,
    make_split,
)
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


class _PartStore:
    """Intermediate per-part frames: in memory for a single part, Parquet files under ``work`` otherwise."""

    def __init__(self, work: Path, name: str, n_parts: int) -> None:
        self.work, self.name, self.n_parts = work, name, n_parts
        self._memory: dict[int, pl.DataFrame] = {}

    def path(self, i: int) -> Path:
        return self.work / f"{self.name}-{i:05d}.parquet"

    def put(self, i: int, frame: pl.DataFrame) -> None:
        if self.n_parts == 1:
            self._memory[i] = frame
        else:
            frame.write_parquet(self.path(i))

    def get(self, i: int) -> pl.DataFrame:
        return self._memory[i] if self.n_parts == 1 else pl.read_parquet(self.path(i))

    def write(self, out: Path) -> None:
        """All parts, in order, as the single file ``out`` (streamed when on disk)."""
        if self.n_parts == 1:
            self._memory[0].write_parquet(out)
        else:
            concat_parts([self.path(i) for i in range(self.n_parts)], out)


def _combine_item_activity(acc: pl.DataFrame | None, part: pl.DataFrame) -> pl.DataFrame:
    # Popularity counts add up across user parts; first / last seen are the min / max.
    if acc is None:
        return part
    counts = [c for c in part.columns if c.startswith("pop_")]
    return (
        pl.concat([acc, part])
        .group_by(ITEM_ID)
        .agg(*[pl.col(c).sum() for c in counts], pl.col("first_seen").min(), pl.col("last_seen").max())
        .select(part.columns)
    )


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
    partition_rows: int | None = DEFAULT_PARTITION_ROWS,
) -> FeaturesResult:
    """Split the ingested data, fit encoders on the fit part and write the featurized tables.

    The interaction log is processed in user parts of about ``partition_rows`` rows
    (:mod:`recstack.data.partition`): per part the dedupe, the split, the user activity and histories and
    the indexing; item popularity and the id counts the vocabularies need are added up across parts. So
    memory follows one part plus the user and item tables, whatever the log's length; a log of at most
    ``partition_rows`` rows is one part in memory.

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
        partition_rows: rows per user part (0 / None: one part).
    """
    data = read_canonical(ingest_dir)
    n_rows = count_rows(data.interactions)
    if n_rows == 0:
        raise DataError(f"{ingest_dir} holds no interactions: nothing to featurize")
    for name, f in (("test_fraction", test_fraction), ("valid_fraction", valid_fraction)):
        if not 0.0 <= f < 1.0:
            raise DataError(f"split {name} must be in [0, 1), got {f}")
    windows = sorted(set(popularity_windows_days))
    out = Path(out_dir)
    n_parts = n_parts_for(n_rows, partition_rows)
    with scratch_dir(out.parent) as work:
        parts = partition(data.interactions, pl.col(USER_ID), n_parts, work)

        def deduped(i: int) -> pl.DataFrame:
            frame = parts.frames[i].collect()
            return dedupe_pairs(frame) if dedupe else frame

        split_cutoff: str | datetime | None = cutoff
        valid_cutoff: datetime | None = None
        kept = _PartStore(work, "deduped", n_parts)
        if split_method == "global_temporal":
            # The cut-offs are quantiles of the whole (deduped) log's times: each part's time column is
            # gathered first, and the deduped parts are kept for the split, so no part is deduped twice.
            times = []
            for i in range(n_parts):
                frame = deduped(i)
                times.append(frame[TIMESTAMP])
                kept.put(i, frame)
                del frame
            split_cutoff, valid_cutoff = global_cutoffs(
                pl.concat(times), test_fraction, valid_fraction, cutoff
            )
            del times

        # Pass 1: dedupe and split each part; count the fit part's ids and its latest time.
        splits = _PartStore(work, "split", n_parts)
        user_counts: list[pl.DataFrame] = []
        item_counts: pl.DataFrame | None = None
        reference_time: datetime | None = None
        for i in range(n_parts):
            split = make_split(
                kept.get(i) if split_method == "global_temporal" else deduped(i),
                split_method,
                test_fraction=test_fraction,
                valid_fraction=valid_fraction,
                min_user_interactions=min_user_interactions,
                seed=seed,
                cutoff=split_cutoff,
                valid_cutoff=valid_cutoff,
            )
            fit = split.filter(pl.col(SPLIT).is_in(FIT_SPLITS))
            if fit.height:
                latest = fit[TIMESTAMP].max()
                reference_time = latest if reference_time is None else max(reference_time, latest)
            user_counts.append(fit[USER_ID].value_counts(name="__count"))
            # Items recur across user parts: their counts add up.
            item_counts = add_counts(
                item_counts, fit[ITEM_ID].value_counts(name="__count"), ITEM_ID, "__count"
            )
            splits.put(i, split)
        if reference_time is None:
            raise DataError(
                "the split left no train interactions: lower test_fraction or move the cutoff later"
            )

        # Pass 2: activity as of the reference time (popularity adds up over parts; users are disjoint).
        item_act: pl.DataFrame | None = None
        user_acts: list[pl.DataFrame] = []
        for i in range(n_parts):
            fit = splits.get(i).lazy().filter(pl.col(SPLIT).is_in(FIT_SPLITS))
            item_act = _combine_item_activity(item_act, item_activity(fit, reference_time, windows).collect())
            user_acts.append(user_activity(fit, reference_time).collect())
        assert item_act is not None and item_counts is not None

        items = derive_item_columns(data.items).collect()
        users = derive_user_columns(data.users).collect()
        # Row orders are fixed so that the encoders' float statistics do not depend on the partitioning.
        items = items.join(item_act, on=ITEM_ID, how="left", maintain_order="left").with_columns(
            [pl.col(pop_column(w)).fill_null(0) for w in [*windows, None]]
        )
        items = items.with_columns(item_age_days(reference_time))
        user_act = pl.concat(user_acts).sort(USER_ID)
        users = users.join(
            user_act, on=USER_ID, how="full", coalesce=True, maintain_order="left_right"
        ).with_columns(pl.col(USER_ACTIVITY[0]).fill_null(0))
        del user_acts, user_act
        spec = _fit_spec(
            items,
            users,
            user_counts=pl.concat(user_counts),
            item_counts=item_counts,
            reference_time=reference_time,
            split_settings={
                "method": split_method,
                "test_fraction": test_fraction,
                "valid_fraction": valid_fraction,
                "min_user_interactions": min_user_interactions,
                "cutoff": cutoff,
                "seed": seed,
            },
            windows=windows,
            history_length=history_length,
            max_categorical_cardinality=max_categorical_cardinality,
            n_buckets=n_buckets,
            title_max_tokens=title_max_tokens,
            title_min_count=title_min_count,
            max_title_vocab=max_title_vocab,
            min_user_count=min_user_count,
            ingest_dir=Path(ingest_dir),
        )
        del user_counts

        out.mkdir(parents=True, exist_ok=True)
        spec.save(out)
        # Pass 3: index each part, take its users' histories, and count what the metrics need.
        indexed = _PartStore(work, "indexed", n_parts)
        histories: list[pl.DataFrame] = []
        tally = _MetricTally()
        for i in range(n_parts):
            split = splits.get(i)
            part = index_interactions(spec, split.lazy()).collect()
            tally.add(part)
            indexed.put(i, part)
            fit = split.lazy().filter(pl.col(SPLIT).is_in(FIT_SPLITS))
            histories.append(user_histories(fit, spec).collect())
            del split, part
        indexed.write(out / INTERACTIONS_FILE)

    enc_items = encode_items(spec, items.lazy()).sort(ITEM_IDX).collect()
    enc_items.write_parquet(out / ITEMS_FILE)
    enc_users = (
        encode_users(spec, users.lazy())
        .join(pl.concat(histories).lazy(), on=USER_ID, how="left")
        .with_columns(pl.col(HISTORY).fill_null(pl.lit([], dtype=pl.List(pl.Int32))))
        .sort([USER_IDX, USER_ID])
        .collect()
    )
    enc_users.write_parquet(out / USERS_FILE)
    metrics = tally.metrics(spec, enc_items)
    return FeaturesResult(out_dir=out, spec=spec, metrics=metrics)


def _fit_spec(
    items: pl.DataFrame,
    users: pl.DataFrame,
    *,
    user_counts: pl.DataFrame,
    item_counts: pl.DataFrame,
    reference_time: datetime,
    split_settings: dict[str, Any],
    windows: list[int],
    history_length: int,
    max_categorical_cardinality: int,
    n_buckets: int,
    title_max_tokens: int,
    title_min_count: int,
    max_title_vocab: int,
    min_user_count: int,
    ingest_dir: Path,
) -> FeatureSpec:
    """Fit every encoder: attributes on the entity tables, id vocabularies from the fit part's counts."""
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
    # Every catalog item gets an index (content features make even never-seen items useful): each
    # catalog item counts once more than its fit interactions, most frequent first, so that index order
    # is popularity order.
    catalog = items.select(pl.col(ITEM_ID), pl.lit(1, dtype=pl.UInt32).alias("__count"))
    item_id_counts = add_counts(
        catalog, item_counts.with_columns(pl.col(ITEM_ID).cast(items.schema[ITEM_ID])), ITEM_ID, "__count"
    )
    tokens = items.select(tokenize_expr(pl.col(TITLE)).alias("t"))["t"].explode()
    return FeatureSpec(
        reference_time=reference_time,
        split=split_settings,
        history_length=history_length,
        title_max_tokens=title_max_tokens,
        popularity_windows_days=windows,
        user_id=Vocabulary.from_counts(user_counts, USER_ID, "user_id", min_count=min_user_count),
        item_id=Vocabulary.from_counts(item_id_counts, ITEM_ID, "item_id"),
        user_categorical=user_cat,
        user_numeric=user_num,
        item_categorical=item_cat,
        item_numeric=item_num,
        categories=Vocabulary.fit(items[CATEGORIES].explode(), "categories"),
        title_tokens=Vocabulary.fit(
            tokens, "title_tokens", min_count=title_min_count, max_size=max_title_vocab
        ),
        skipped_columns=skipped,
        data_fingerprint=fingerprint(ingest_dir),
    )


class _MetricTally:
    """The features stage's metrics, added up over the indexed parts (parts hold disjoint users)."""

    def __init__(self) -> None:
        self.counts = {s: 0 for s in (TRAIN, VALID, TEST)}
        self.evaluated_users = 0
        self.cold_test_users = 0
        self.test_items: pl.Series | None = None
        self.fit_items: pl.Series | None = None

    def add(self, indexed: pl.DataFrame) -> None:
        for split, n in indexed.group_by(SPLIT).len().iter_rows():
            self.counts[split] += n
        test = indexed.filter(pl.col(SPLIT) == TEST)
        self.evaluated_users += test[USER_ID].n_unique()
        self.cold_test_users += test.filter(pl.col(USER_IDX) == 0)[USER_ID].n_unique()
        fit_items = indexed.filter(pl.col(SPLIT).is_in(FIT_SPLITS))[ITEM_ID].unique()
        self.test_items = union_unique(self.test_items, test[ITEM_ID].unique())
        self.fit_items = union_unique(self.fit_items, fit_items)

    def metrics(self, spec: FeatureSpec, items: pl.DataFrame) -> dict[str, Any]:
        assert self.test_items is not None and self.fit_items is not None
        unseen = self.test_items.filter(~self.test_items.is_in(self.fit_items.implode()))
        return {
            **{f"{k}_interactions": v for k, v in self.counts.items()},
            "evaluated_users": self.evaluated_users,
            "users": spec.user_id.size,
            "items": spec.item_id.size,
            "categories": spec.categories.size,
            "title_tokens": spec.title_tokens.size,
            "cold_test_users": self.cold_test_users,
            "test_items_unseen_in_train": unseen.len(),
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


def weekly_volume(interactions: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    """Interactions per week and split: shows where the temporal cut-offs fall.

    A LazyFrame (a scan of the features output) is counted with the streaming engine, so the chart costs
    no memory on a log of any length.
    """
    counts = (
        interactions.lazy()
        .group_by(pl.col(TIMESTAMP).dt.truncate("1w").dt.date().alias("week"), SPLIT)
        .len("interactions")
        .sort(["week", SPLIT])
        .with_columns(pl.col("week").cast(pl.String))
    )
    return counts.collect(engine="streaming")
