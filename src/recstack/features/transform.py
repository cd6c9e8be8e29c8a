"""Feature transforms shared by the offline pipeline and the online service (one implementation).

Naming of encoded columns: ``<name>_idx`` (categorical index, 0 = unknown), ``<name>_z`` (standardized
number), ``<name>_bucket`` (quantile bucket index, 0 = missing). Raw columns are kept beside them.
"""

from __future__ import annotations

from datetime import datetime

import polars as pl

from recstack.data.schema import CATEGORIES, CREATED_AT, ITEM_ID, TIMESTAMP, TITLE, USER_ID
from recstack.features.encoders import list_lookup_expr, tokenize_expr
from recstack.features.spec import FeatureSpec

USER_IDX = "user_idx"
ITEM_IDX = "item_idx"
HISTORY = "history"  # List[Int32] of item indices, oldest first, most recent last
CATEGORY_IDX = "category_idx"  # List[Int32]
TITLE_TOKEN_IDX = "title_token_idx"  # List[Int32]
REGION = "region"
YEAR = "year"
# Columns recognised as postal codes: their first character becomes a coarse `region` feature (for US zip
# codes the first digit is a group of states), which generalizes where the full code would just memorize.
ZIP_COLUMNS = ("zip_code", "zipcode", "zip", "postcode", "postal_code")
USER_ACTIVITY = ("user_n_interactions", "user_days_since_last")
ITEM_AGE = "item_age_days"
_DAY_US = 86_400_000_000


def pop_column(window_days: int | None) -> str:
    """Name of the popularity count column for a window (None = all time)."""
    return "pop_all" if window_days is None else f"pop_{window_days}d"


def _before(interactions: pl.LazyFrame, as_of: datetime, inclusive: bool) -> pl.LazyFrame:
    t = pl.col(TIMESTAMP)
    return interactions.filter(t <= as_of if inclusive else t < as_of)


def item_activity(
    interactions: pl.LazyFrame, as_of: datetime, windows_days: list[int], inclusive: bool = True
) -> pl.LazyFrame:
    """Per-item popularity counts over trailing windows and first / last interaction time, as of ``as_of``.

    Only interactions at or before ``as_of`` (strictly before when ``inclusive`` is False) are counted,
    so the same function gives leakage-free point-in-time features.

    Returns:
        ``item_id, pop_<w>d..., pop_all, first_seen, last_seen``.
    """
    t = pl.col(TIMESTAMP)
    aggs = [
        (t > pl.lit(as_of) - pl.duration(days=w)).sum().cast(pl.Int64).alias(pop_column(w))
        for w in windows_days
    ]
    aggs += [
        pl.len().cast(pl.Int64).alias(pop_column(None)),
        t.min().alias("first_seen"),
        t.max().alias("last_seen"),
    ]
    return _before(interactions, as_of, inclusive).group_by(ITEM_ID).agg(aggs)


def user_activity(interactions: pl.LazyFrame, as_of: datetime, inclusive: bool = True) -> pl.LazyFrame:
    """Per-user interaction count and days since the last interaction, as of ``as_of``."""
    days = (pl.lit(as_of) - pl.col(TIMESTAMP).max()).dt.total_microseconds() / _DAY_US
    return (
        _before(interactions, as_of, inclusive)
        .group_by(USER_ID)
        .agg(pl.len().cast(pl.Int64).alias(USER_ACTIVITY[0]), days.alias(USER_ACTIVITY[1]))
    )


def user_histories(
    interactions: pl.LazyFrame, spec: FeatureSpec, as_of: datetime | None = None, inclusive: bool = True
) -> pl.LazyFrame:
    """Each user's last ``spec.history_length`` items as item indices, oldest first.

    Ties in time are ordered by item id, matching the split's ordering. Items unknown to the vocabulary
    are dropped from the sequence.

    Returns:
        ``user_id, history`` (List[Int32]).
    """
    rows = interactions if as_of is None else _before(interactions, as_of, inclusive)
    return (
        rows.sort([USER_ID, TIMESTAMP, ITEM_ID])
        .with_columns(spec.item_id.lookup_expr(pl.col(ITEM_ID)).alias(ITEM_IDX))
        .filter(pl.col(ITEM_IDX) != 0)
        .group_by(USER_ID, maintain_order=True)
        .agg(pl.col(ITEM_IDX).tail(spec.history_length).alias(HISTORY))
    )


def derive_user_columns(users: pl.LazyFrame) -> pl.LazyFrame:
    """Add derived attributes (``region`` from a postal-code column) before encoding."""
    names = users.collect_schema().names()
    zip_col = next((c for c in ZIP_COLUMNS if c in names), None)
    if zip_col and REGION not in names:
        users = users.with_columns(
            pl.col(zip_col).cast(pl.String).str.strip_chars().str.slice(0, 1).str.to_uppercase().alias(REGION)
        )
    return users


def derive_item_columns(items: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``year`` from ``created_at`` when the source gave no year."""
    names = items.collect_schema().names()
    if YEAR not in names and CREATED_AT in names:
        items = items.with_columns(pl.col(CREATED_AT).dt.year().cast(pl.Int64).alias(YEAR))
    return items


def _encode_common(frame: pl.LazyFrame, categorical: dict, numeric: dict) -> pl.LazyFrame:
    names = frame.collect_schema().names()
    exprs: list[pl.Expr] = []
    for col, vocab in categorical.items():
        src = pl.col(col).cast(pl.String) if col in names else pl.lit(None, dtype=pl.String)
        exprs.append(vocab.lookup_expr(src).alias(f"{col}_idx"))
    for col, enc in numeric.items():
        src = pl.col(col) if col in names else pl.lit(None, dtype=pl.Float64)
        exprs += [enc.transform_expr(src).alias(f"{col}_z"), enc.bucketize_expr(src).alias(f"{col}_bucket")]
    return frame.with_columns(exprs)


def encode_users(spec: FeatureSpec, users: pl.LazyFrame) -> pl.LazyFrame:
    """Encode user rows (``user_id`` + attributes + activity columns) with the fitted spec.

    Missing attribute or activity columns encode as unknown (index 0 / standardized 0), which is what an
    unknown user gets online.
    """
    frame = derive_user_columns(users).with_columns(spec.user_id.lookup_expr(pl.col(USER_ID)).alias(USER_IDX))
    return _encode_common(frame, spec.user_categorical, spec.user_numeric)


def encode_items(spec: FeatureSpec, items: pl.LazyFrame) -> pl.LazyFrame:
    """Encode item rows (canonical item columns + attributes + activity columns) with the fitted spec."""
    frame = derive_item_columns(items).with_columns(
        spec.item_id.lookup_expr(pl.col(ITEM_ID)).alias(ITEM_IDX),
        list_lookup_expr(spec.categories, pl.col(CATEGORIES)).alias(CATEGORY_IDX),
        list_lookup_expr(spec.title_tokens, tokenize_expr(pl.col(TITLE)), spec.title_max_tokens).alias(
            TITLE_TOKEN_IDX
        ),
    )
    return _encode_common(frame, spec.item_categorical, spec.item_numeric)


def item_age_days(as_of: datetime) -> pl.Expr:
    """Days from an item's creation (or, unknown, its first interaction) to ``as_of``; null if neither."""
    born = pl.coalesce(pl.col(CREATED_AT), pl.col("first_seen"))
    return ((pl.lit(as_of) - born).dt.total_microseconds() / _DAY_US).alias(ITEM_AGE)


def index_interactions(spec: FeatureSpec, interactions: pl.LazyFrame) -> pl.LazyFrame:
    """Add ``user_idx`` / ``item_idx`` to interaction rows (0 for ids outside the vocabularies)."""
    return interactions.with_columns(
        spec.user_id.lookup_expr(pl.col(USER_ID)).alias(USER_IDX),
        spec.item_id.lookup_expr(pl.col(ITEM_ID)).alias(ITEM_IDX),
    )
