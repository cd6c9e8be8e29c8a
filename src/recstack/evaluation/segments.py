"""P1 metrics on slices where averages hide failures: short-history users, long-tail and new items.

* **short_history_users**: evaluated users with at most ``short_history_max`` train items. The plain P1
  metrics (:func:`~recstack.evaluation.metrics.ranking_metrics`) over those rows.
* **long_tail_items** / **new_items**: relevance restricted to the user's test items in the segment, so a
  hit on a test item outside the segment counts as a miss here; users without a test item in the segment
  are not counted. Per user, Recall@K = segment hits / |segment test items|, HitRate@K = any segment hit,
  NDCG@K with IDCG over min(K, |segment test items|). That is P1's definition applied to the restricted
  relevance matrix, so :func:`ranking_metrics` computes it. ``share_of_recs`` is the exposure side: the
  fraction of all filled top-``exposure_k`` slots (every row of ``topk``) that hold a segment item.

Long tail: the head is the smallest set of most-trained items (ties by lower index) whose train
interactions reach ``head_interaction_share`` of all train interactions; every other catalog item, including
never-trained ones, is tail. New items are the catalog items with no train interaction. The OOV item
(index 0) is in no segment.

An empty segment gives ``users == 0`` and 0.0 for every metric (never NaN, so metric files stay valid JSON).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from recstack.evaluation.metrics import DEFAULT_KS, ranking_metrics
from recstack.features.encoders import OOV_INDEX

SHORT_HISTORY_USERS, LONG_TAIL_ITEMS, NEW_ITEMS = "short_history_users", "long_tail_items", "new_items"
_ITEM_SEGMENT_METRICS = ("recall", "hit_rate", "ndcg")


def user_history_lengths(train: sp.csr_matrix) -> np.ndarray:
    """``(n_rows,)`` int64: the number of train items in each row of ``train`` (binary CSR)."""
    return np.diff(train.tocsr().indptr).astype(np.int64)


def long_tail_items(item_train_count: np.ndarray, head_interaction_share: float = 0.5) -> np.ndarray:
    """Boolean ``(n_items + 1,)`` mask of long-tail items (see the module docstring for the definition).

    Args:
        item_train_count: ``(n_items + 1,)`` train interactions per item index; entry 0 (OOV) is ignored.
        head_interaction_share: share of train interactions the head covers, in ``[0, 1]``. With 0.5 the
            head is the items making up the first half of all interactions (191 of ML-100K's 1682 under P1).
    """
    if not 0.0 <= head_interaction_share <= 1.0:
        raise ValueError(f"head_interaction_share must be in [0, 1], got {head_interaction_share}")
    counts = np.asarray(item_train_count, dtype=np.float64).copy()
    counts[OOV_INDEX] = 0.0
    # Stable sort on -count: equal counts keep index order, so the head is reproducible.
    order = np.argsort(-counts, kind="stable")
    cumulative = np.cumsum(counts[order])
    target = head_interaction_share * cumulative[-1]
    n_head = 0 if target <= 0 else int(np.searchsorted(cumulative, target, side="left")) + 1
    tail = np.ones(counts.size, dtype=bool)
    tail[order[:n_head]] = False
    tail[OOV_INDEX] = False
    return tail


def new_items(item_train_count: np.ndarray) -> np.ndarray:
    """Boolean ``(n_items + 1,)`` mask of catalog items with no train interaction (OOV index 0 excluded)."""
    mask = np.asarray(item_train_count) == 0
    mask[OOV_INDEX] = False
    return mask


def _zero_metrics(names: Sequence[str], ks: Sequence[int]) -> dict[str, float]:
    return {"users": 0, **{f"{name}@{k}": 0.0 for k in ks for name in names}}


def _item_segment(
    topk: np.ndarray, relevant: sp.csr_matrix, segment: np.ndarray, ks: Sequence[int], exposure_k: int
) -> dict[str, float]:
    restricted = (relevant @ sp.diags(segment.astype(np.float64))).tocsr()
    restricted.eliminate_zeros()
    if restricted.nnz == 0:
        out = _zero_metrics(_ITEM_SEGMENT_METRICS, ks)
    else:
        full = ranking_metrics(topk, restricted, ks)
        out = {"users": full["users"]}
        out.update({f"{name}@{k}": full[f"{name}@{k}"] for k in ks for name in _ITEM_SEGMENT_METRICS})
    shown = topk[:, :exposure_k]
    shown = shown[shown >= 0]
    out["share_of_recs"] = float(segment[shown].mean()) if shown.size else 0.0
    return out


def segment_metrics(
    topk: np.ndarray,
    relevant: sp.csr_matrix,
    train: sp.csr_matrix,
    item_train_count: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    short_history_max: int = 20,
    head_interaction_share: float = 0.5,
    exposure_k: int = 10,
) -> dict[str, dict[str, float]]:
    """P1 metrics on the three segments of the module docstring.

    Args:
        topk: ``(n_users, k_max)`` int64 ranked item indices (negative = empty slot), ``k_max >= max(ks)``.
        relevant: ``(n_users, n_items + 1)`` binary CSR of test items, rows aligned with ``topk``.
        train: ``(n_users, n_items + 1)`` binary CSR of train items, rows aligned with ``topk`` (e.g.
            ``train[users]``); gives each user's history length.
        item_train_count: ``(n_items + 1,)`` train interactions per item over *all* train users (not only
            the rows here), e.g. ``np.asarray(train.sum(axis=0)).ravel()`` on the full train matrix.
        ks: cut-offs.
        short_history_max: users with at most this many train items are "short history".
        head_interaction_share: see :func:`long_tail_items`.
        exposure_k: list length over which ``share_of_recs`` is measured.

    Returns:
        ``{"short_history_users": {ranking_metrics keys}, "long_tail_items": {"users", "recall@K",
        "hit_rate@K", "ndcg@K", "share_of_recs"}, "new_items": {same}}``.
    """
    n_users, k_max = topk.shape
    if relevant.shape[0] != n_users or train.shape[0] != n_users:
        raise ValueError(
            f"topk, relevant and train must have aligned rows, got {n_users}, {relevant.shape[0]} and "
            f"{train.shape[0]}; pass relevant[users] and train[users] for the users ranked in topk"
        )
    if len(item_train_count) != relevant.shape[1]:
        raise ValueError(
            f"item_train_count has {len(item_train_count)} entries but relevant has {relevant.shape[1]} "
            "item columns; both must include the OOV column 0"
        )
    if k_max < max(max(ks), exposure_k):
        raise ValueError(f"topk has {k_max} columns, fewer than max(ks) or exposure_k={exposure_k}")
    relevant = relevant.tocsr()
    n_items = relevant.shape[1] - 1  # column 0 is the OOV item, not part of the catalog
    short = user_history_lengths(train) <= short_history_max
    if relevant[short].nnz == 0:
        users_segment = _zero_metrics(("recall", "ndcg", "hit_rate", "mrr", "precision", "coverage"), ks)
    else:
        users_segment = ranking_metrics(topk[short], relevant[short], ks, n_items=n_items)
    return {
        SHORT_HISTORY_USERS: users_segment,
        LONG_TAIL_ITEMS: _item_segment(
            topk, relevant, long_tail_items(item_train_count, head_interaction_share), ks, exposure_k
        ),
        NEW_ITEMS: _item_segment(topk, relevant, new_items(item_train_count), ks, exposure_k),
    }
