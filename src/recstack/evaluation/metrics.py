"""Offline ranking metrics of protocol P1 (``shared/notes/evaluation-protocol.md``), exactly.

Inputs are dense index arrays, so every system (baselines, two-tower, funnel) is scored by the same code:

* ``topk``: ``(n_users, k_max)`` int64 item indices, best first (already excluding train items).
* ``relevant``: a CSR matrix ``(n_users, n_items)`` whose row ``u`` marks user ``u``'s test items.

Binary relevance. Per user: Recall@K = hits / |test_u| (not truncated to K); NDCG@K = DCG@K / IDCG@K with
IDCG over min(K, |test_u|) items and gain 1 / log2(rank + 1); HitRate@K; MRR@K = 1 / rank of the first hit
within K (0 if none); Precision@K = hits / K. All averaged over users with at least one test item.
Coverage@K = |union of the top-K lists| / n_items.

Beyond accuracy: intra-list diversity over item categories (mean pairwise cosine distance of the
multi-hot category vectors within a list), novelty (mean self-information -log2 of the item's share of
train users) and average recommendation popularity (mean train interaction count of recommended items).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

DEFAULT_KS: tuple[int, ...] = (10, 20, 50, 100)


def hit_matrix(topk: np.ndarray, relevant: sp.csr_matrix) -> np.ndarray:
    """Boolean ``(n_users, k_max)``: whether each recommended item is a test item of that user.

    Args:
        topk: ``(n_users, k_max)`` item indices; negative entries mean "no item" (short lists).
        relevant: ``(n_users, n_items)`` CSR, nonzero = relevant.
    """
    n_users, k_max = topk.shape
    if relevant.shape[0] != n_users:
        raise ValueError(f"topk has {n_users} rows but relevant has {relevant.shape[0]}")
    valid = topk >= 0
    rows = np.repeat(np.arange(n_users), k_max)
    cols = np.where(valid, topk, 0).ravel()
    hits = np.asarray(relevant.astype(bool)[rows, cols]).reshape(n_users, k_max)
    return hits & valid


def ranking_metrics(
    topk: np.ndarray, relevant: sp.csr_matrix, ks: Sequence[int] = DEFAULT_KS, n_items: int | None = None
) -> dict[str, float]:
    """P1 accuracy metrics at each K, averaged over users with at least one relevant item.

    Args:
        topk: ``(n_users, k_max)`` ranked item indices, ``k_max >= max(ks)``.
        relevant: ``(n_users, n_items)`` CSR of test items.
        ks: cut-offs.
        n_items: catalog size for Coverage@K (default: ``relevant.shape[1]``).

    Returns:
        ``{"recall@10": ..., "ndcg@10": ..., "hit_rate@10": ..., "mrr@10": ..., "precision@10": ...,
        "coverage@10": ..., ..., "users": n}``.
    """
    if topk.shape[1] < max(ks):
        raise ValueError(f"topk has {topk.shape[1]} columns, fewer than the largest K {max(ks)}")
    n_rel = np.diff(relevant.indptr)
    users = n_rel > 0
    hits = hit_matrix(topk, relevant)[users]
    n_rel = n_rel[users]
    top_users = topk[users]
    catalog = n_items if n_items is not None else relevant.shape[1]
    discount = 1.0 / np.log2(np.arange(2, topk.shape[1] + 2))
    out: dict[str, float] = {"users": int(users.sum())}
    for k in ks:
        h = hits[:, :k]
        n_hits = h.sum(axis=1)
        dcg = (h * discount[:k]).sum(axis=1)
        ideal = np.cumsum(discount[:k])[np.minimum(n_rel, k) - 1]
        first = np.where(h.any(axis=1), h.argmax(axis=1) + 1, np.inf)
        out[f"recall@{k}"] = float(np.mean(n_hits / n_rel))
        out[f"ndcg@{k}"] = float(np.mean(dcg / ideal))
        out[f"hit_rate@{k}"] = float(np.mean(n_hits > 0))
        out[f"mrr@{k}"] = float(np.mean(1.0 / first))
        out[f"precision@{k}"] = float(np.mean(n_hits / k))
        shown = top_users[:, :k]
        out[f"coverage@{k}"] = float(np.unique(shown[shown >= 0]).size / catalog)
    return out


def intra_list_diversity(topk: np.ndarray, item_categories: sp.csr_matrix) -> float:
    """Mean over lists of the mean pairwise cosine distance between items' category vectors.

    Args:
        topk: ``(n_users, k)`` item indices (negative = empty slot, ignored).
        item_categories: ``(n_items, n_categories)`` multi-hot CSR. Items without categories count as
            maximally distant from everything (distance 1).
    """
    x = item_categories.astype(np.float64).tocsr()
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    norms[norms == 0] = 1.0
    x = sp.diags(1.0 / norms) @ x
    scores = []
    for row in topk:
        items = row[row >= 0]
        if items.size < 2:
            continue
        v = x[items]
        sim = (v @ v.T).toarray()
        n = items.size
        mean_sim = (sim.sum() - np.trace(sim)) / (n * (n - 1))
        scores.append(1.0 - mean_sim)
    return float(np.mean(scores)) if scores else 0.0


def popularity_metrics(
    topk: np.ndarray, item_train_count: np.ndarray, n_train_users: int
) -> dict[str, float]:
    """Novelty (mean -log2 share of train users who interacted with the item) and average popularity.

    Args:
        topk: ``(n_users, k)`` item indices.
        item_train_count: ``(n_items,)`` number of train interactions (= users, after P1's dedupe) per item.
        n_train_users: users in the train part.
    """
    items = topk[topk >= 0]
    counts = item_train_count[items].astype(np.float64)
    # An item never seen in train gets the self-information of a single interaction (finite, maximal).
    share = np.maximum(counts, 1.0) / max(n_train_users, 1)
    return {"novelty": float(np.mean(-np.log2(share))), "avg_popularity": float(np.mean(counts))}
