"""Train / valid / test splits, all deterministic.

The output is the interactions table with one more column, ``split``, taking the values ``train``,
``valid`` and ``test``. Protocol P1 speaks of "train" for everything before test and of "train_sub" /
"valid" inside it: here ``train`` is P1's train_sub, and P1's full train is ``train`` + ``valid``
(:data:`FIT_SPLITS`). Models tune on ``valid``, then refit on ``FIT_SPLITS`` and are evaluated on ``test``.

Methods:

* ``per_user_temporal`` (protocol P1, the default): per user, sorted by time then item id, the last
  ``floor(test_fraction * n + 0.5)`` interactions are test; users with fewer than ``min_user_interactions``
  stay entirely in train; valid is the same rule inside each user's train part.
* ``global_temporal``: everything at or after a cut-off time is test (the production-like split); the
  cut-off is the ``1 - test_fraction`` quantile of timestamps unless given. Valid likewise inside train.
* ``random``: each interaction independently, seeded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

import polars as pl

from recstack.data.schema import ITEM_ID, TIMESTAMP, TIMESTAMP_DTYPE, USER_ID, DataError

SPLIT = "split"
TRAIN, VALID, TEST = "train", "valid", "test"
FIT_SPLITS = (TRAIN, VALID)  # P1's "train": what a model is refitted on before the test evaluation
SplitMethod = Literal["per_user_temporal", "global_temporal", "random"]
SPLIT_METHODS: tuple[str, ...] = ("per_user_temporal", "global_temporal", "random")


def dedupe_pairs(interactions: pl.DataFrame) -> pl.DataFrame:
    """Collapse repeated (user, item) pairs to one row, keeping the latest (P1's rule).

    Ties on the latest timestamp keep the row that comes last in (timestamp, event_type, value) order, so
    the result does not depend on input order.
    """
    return interactions.sort([USER_ID, ITEM_ID, TIMESTAMP, "event_type", "value"]).unique(
        subset=[USER_ID, ITEM_ID], keep="last", maintain_order=True
    )


def _canonical_order(interactions: pl.DataFrame) -> pl.DataFrame:
    # P1: timestamp ascending, ties broken by item id ascending; user first so each user's rows are contiguous.
    return interactions.sort([USER_ID, TIMESTAMP, ITEM_ID])


def _tail_count(n: pl.Expr, fraction: float, minimum: int) -> pl.Expr:
    # floor(fraction * n + 0.5) for users with at least `minimum` interactions, else 0.
    return pl.when(n >= minimum).then((n * fraction + 0.5).floor().cast(pl.Int64)).otherwise(0)


def split_per_user_temporal(
    interactions: pl.DataFrame,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.2,
    min_user_interactions: int = 5,
) -> pl.DataFrame:
    """Protocol P1's per-user temporal split (see module docstring). Returns rows in (user, time, item) order."""
    df = _canonical_order(interactions)
    pos = pl.int_range(pl.len()).over(USER_ID)
    n = pl.len().over(USER_ID)
    df = df.with_columns(pos.alias("__pos"), n.alias("__n"))
    df = df.with_columns(
        (pl.col("__n") - _tail_count(pl.col("__n"), test_fraction, min_user_interactions)).alias("__m")
    )
    n_valid = _tail_count(pl.col("__m"), valid_fraction, min_user_interactions)
    split = (
        pl.when(pl.col("__pos") >= pl.col("__m"))
        .then(pl.lit(TEST))
        .when(pl.col("__pos") >= pl.col("__m") - n_valid)
        .then(pl.lit(VALID))
        .otherwise(pl.lit(TRAIN))
    )
    return df.with_columns(split.alias(SPLIT)).drop("__pos", "__n", "__m")


def _as_utc(value: str | datetime) -> datetime:
    try:
        dt = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    except ValueError as exc:
        raise DataError(f"split cut-off must be an ISO-8601 date/time, got {value!r}") from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _quantile_time(ts: pl.Series, q: float) -> datetime:
    # Nearest-rank quantile of the timestamps: deterministic, and always an observed time.
    return ts.sort()[min(int(q * len(ts)), len(ts) - 1)]


def global_cutoffs(
    timestamps: pl.Series,
    test_fraction: float,
    valid_fraction: float,
    cutoff: str | datetime | None = None,
    valid_cutoff: str | datetime | None = None,
) -> tuple[datetime, datetime]:
    """The test and valid cut-off times of the global temporal split over a log's ``timestamps``.

    Unless given, the test cut-off is the ``1 - test_fraction`` nearest-rank quantile of all times and the
    valid cut-off the ``1 - valid_fraction`` quantile of the times before it.
    """
    cut = _as_utc(cutoff) if cutoff is not None else _quantile_time(timestamps, 1.0 - test_fraction)
    if valid_cutoff is not None:
        # Both given (a part of a long log, cut at the whole log's times): a part may well hold no
        # interaction before the cut-off; only the whole log must.
        return cut, _as_utc(valid_cutoff)
    train_ts = timestamps.filter(timestamps < cut)
    if train_ts.len() == 0:
        raise DataError(
            f"global_temporal split: no interaction before the cut-off {cut}; choose a later cutoff"
        )
    return cut, _quantile_time(train_ts, 1.0 - valid_fraction)


def split_global_temporal(
    interactions: pl.DataFrame,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.2,
    cutoff: str | datetime | None = None,
    valid_cutoff: str | datetime | None = None,
) -> pl.DataFrame:
    """Global temporal split: ``timestamp >= cutoff`` is test; valid is the same rule inside train.

    A log processed in parts passes both cut-offs (:func:`global_cutoffs` over the whole log), so that
    every part is cut at the same times.
    """
    df = _canonical_order(interactions)
    cut, vcut = global_cutoffs(df[TIMESTAMP], test_fraction, valid_fraction, cutoff, valid_cutoff)
    t = pl.col(TIMESTAMP)
    split = (
        pl.when(t >= pl.lit(cut, dtype=TIMESTAMP_DTYPE))
        .then(pl.lit(TEST))
        .when(t >= pl.lit(vcut, dtype=TIMESTAMP_DTYPE))
        .then(pl.lit(VALID))
        .otherwise(pl.lit(TRAIN))
    )
    return df.with_columns(split.alias(SPLIT))


def split_random(
    interactions: pl.DataFrame, test_fraction: float = 0.2, valid_fraction: float = 0.2, seed: int = 42
) -> pl.DataFrame:
    """Seeded random split of individual interactions.

    Each row's draw is a seeded hash of its (user, item, time, event type), so it depends neither on the
    input's row order nor on how a long log is cut into parts. (Polars' hash is stable for a given Polars
    version; the recorded environment pins it.)
    """
    df = _canonical_order(interactions)
    key = pl.struct(USER_ID, ITEM_ID, TIMESTAMP, "event_type")
    u = key.hash(seed) / float(2**64)  # uniform on [0, 1)
    valid_edge = test_fraction + (1.0 - test_fraction) * valid_fraction
    split = (
        pl.when(u < test_fraction)
        .then(pl.lit(TEST))
        .when(u < valid_edge)
        .then(pl.lit(VALID))
        .otherwise(pl.lit(TRAIN))
    )
    return df.with_columns(split.alias(SPLIT))


def make_split(
    interactions: pl.DataFrame,
    method: str = "per_user_temporal",
    *,
    test_fraction: float = 0.2,
    valid_fraction: float = 0.2,
    min_user_interactions: int = 5,
    seed: int = 42,
    cutoff: str | datetime | None = None,
    valid_cutoff: str | datetime | None = None,
) -> pl.DataFrame:
    """Dispatch to a split method by name (``features.split.method`` in params.yaml)."""
    for name, f in (("test_fraction", test_fraction), ("valid_fraction", valid_fraction)):
        if not 0.0 <= f < 1.0:
            raise DataError(f"split {name} must be in [0, 1), got {f}")
    if method == "per_user_temporal":
        return split_per_user_temporal(interactions, test_fraction, valid_fraction, min_user_interactions)
    if method == "global_temporal":
        return split_global_temporal(interactions, test_fraction, valid_fraction, cutoff, valid_cutoff)
    if method == "random":
        return split_random(interactions, test_fraction, valid_fraction, seed)
    raise DataError(f"unknown split method {method!r}; choose one of {', '.join(SPLIT_METHODS)}")


def split_counts(split_frame: pl.DataFrame) -> dict[str, int]:
    """Rows per split plus the number of users that have test rows (the evaluated users)."""
    counts = {s: 0 for s in (TRAIN, VALID, TEST)}
    counts.update(dict(split_frame.group_by(SPLIT).len().iter_rows()))
    counts["evaluated_users"] = split_frame.filter(pl.col(SPLIT) == TEST)[USER_ID].n_unique()
    return counts
