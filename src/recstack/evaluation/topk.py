"""Full-catalog top-K retrieval with train items masked (protocol P1's ranking rule)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recstack.data.io import INTERACTIONS_FILE
from recstack.data.schema import TIMESTAMP
from recstack.data.split import FIT_SPLITS, SPLIT, TEST, TRAIN, VALID
from recstack.features.encoders import OOV_INDEX
from recstack.features.transform import ITEM_IDX, USER_IDX

ScoreFn = Callable[[np.ndarray], np.ndarray]  # user indices (b,) -> scores (b, n_items + 1)


MODEL_COLUMNS = (USER_IDX, ITEM_IDX, TIMESTAMP, SPLIT)  # what training and evaluation read of the log


def read_interactions(
    features_dir: str | Path, splits: Sequence[str] | None = None, max_user: int | None = None
) -> pl.DataFrame:
    """The ``features`` stage's interactions, only :data:`MODEL_COLUMNS`, optionally only ``splits`` and
    users ``1..max_user``.

    The projection and the filters are pushed into the Parquet scan: on a 45M-row log the skipped string
    columns (event type...), splits and users are gigabytes never read.
    """
    scan = pl.scan_parquet(Path(features_dir) / INTERACTIONS_FILE).select(MODEL_COLUMNS)
    if splits is not None:
        scan = scan.filter(pl.col(SPLIT).is_in(list(splits)))
    if max_user is not None:
        scan = scan.filter(pl.col(USER_IDX).is_between(1, max_user))
    return scan.collect()


def interaction_matrix(interactions: pl.DataFrame, n_users: int, n_items: int) -> sp.csr_matrix:
    """Binary ``(n_users + 1, n_items + 1)`` CSR from ``user_idx`` / ``item_idx`` rows (row / column 0 = OOV)."""
    u = interactions[USER_IDX].to_numpy()
    i = interactions[ITEM_IDX].to_numpy()
    m = sp.csr_matrix((np.ones(len(u), dtype=np.float32), (u, i)), shape=(n_users + 1, n_items + 1))
    m.data[:] = 1.0  # repeated pairs count once
    return m


def p1_matrices(
    interactions: pl.DataFrame, n_users: int, n_items: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(train, test) matrices of protocol P1: train = the fit splits (train + valid), test = test."""
    fit = interactions.filter(pl.col(SPLIT).is_in(FIT_SPLITS))
    test = interactions.filter((pl.col(SPLIT) == TEST) & (pl.col(USER_IDX) != OOV_INDEX))
    return interaction_matrix(fit, n_users, n_items), interaction_matrix(test, n_users, n_items)


def p1_valid_matrices(
    interactions: pl.DataFrame, n_users: int, n_items: int
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(train_sub, valid) matrices of protocol P1 for tuning: the ``train`` and the ``valid`` split.

    The tuning counterpart of :func:`p1_matrices`: fit on train_sub, rank against valid, then refit the chosen
    settings on :func:`p1_matrices`' train. Both are ``(n_users + 1, n_items + 1)`` binary CSR.
    """
    train_sub = interactions.filter(pl.col(SPLIT) == TRAIN)
    # As for test: index 0 pools every unknown user, a merged row that is nobody's history; never evaluated.
    valid = interactions.filter((pl.col(SPLIT) == VALID) & (pl.col(USER_IDX) != OOV_INDEX))
    return interaction_matrix(train_sub, n_users, n_items), interaction_matrix(valid, n_users, n_items)


# Most scores one batch of ``topk`` holds (users x catalog). A batch costs about 6 times this in bytes (the
# scores, their negation, argpartition's int64 indices): 2^24 scores keep it near 100 MB. With 1,024 users
# over a 1M-item catalog the batch was 4 GB of scores and a 23 GB peak.
MAX_SCORES_PER_BATCH = 1 << 24


def topk(
    score_fn: ScoreFn, users: np.ndarray, exclude: sp.csr_matrix, k: int, batch_size: int = 1024
) -> np.ndarray:
    """The ``k`` best items per user over the whole catalog, excluding ``exclude`` and the OOV column.

    Args:
        score_fn: maps a batch of user indices ``(b,)`` to scores ``(b, n_items + 1)`` (higher = better).
        users: ``(n,)`` user indices.
        exclude: ``(n_users + 1, n_items + 1)`` CSR of items never to recommend (the user's train items).
        k: list length.
        batch_size: users scored at once, at most (fewer on large catalogs: a batch holds at most
            ``MAX_SCORES_PER_BATCH`` scores). Rows are ranked independently: the result does not depend on it.

    Returns:
        ``(n, k)`` int64 item indices, best first; -1 marks an empty slot when fewer than ``k`` items
        can be recommended.
    """
    out = np.full((len(users), k), -1, dtype=np.int64)
    batch_size = max(1, min(batch_size, MAX_SCORES_PER_BATCH // exclude.shape[1]))
    for start in range(0, len(users), batch_size):
        batch = users[start : start + batch_size]
        scores = np.array(score_fn(batch), dtype=np.float32, copy=True)
        scores[:, OOV_INDEX] = -np.inf
        mask = exclude[batch]
        scores[mask.nonzero()] = -np.inf
        kk = min(k, scores.shape[1])  # a catalog smaller than k: the remaining slots stay empty (-1)
        part = np.argpartition(-scores, kth=kk - 1, axis=1)[:, :kk]
        top_scores = np.take_along_axis(scores, part, axis=1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        ranked = np.take_along_axis(part, order, axis=1)
        # Fewer than k recommendable items (a tiny catalog, a heavy user): the rest are empty slots.
        ranked[np.take_along_axis(top_scores, order, axis=1) == -np.inf] = -1
        out[start : start + len(batch), :kk] = ranked
    return out
