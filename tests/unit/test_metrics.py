"""P1 metrics against hand-computed examples, and cross-checked against torchmetrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torchmetrics.functional.retrieval import (
    retrieval_hit_rate,
    retrieval_normalized_dcg,
    retrieval_precision,
    retrieval_recall,
    retrieval_reciprocal_rank,
)

from recstack.evaluation.metrics import intra_list_diversity, popularity_metrics, ranking_metrics


def _csr(rows: list[list[int]], n_items: int) -> sp.csr_matrix:
    data = [(u, i) for u, items in enumerate(rows) for i in items]
    r, c = zip(*data, strict=True) if data else ((), ())
    return sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(len(rows), n_items))


def test_hand_computed_example() -> None:
    # user 0: test {1, 5, 9}; ranked [1, 2, 5]  -> hits at ranks 1 and 3
    # user 1: test {4};       ranked [7, 8, 4]  -> hit at rank 3
    # user 2: no test items -> not evaluated
    topk = np.array([[1, 2, 5], [7, 8, 4], [1, 2, 3]])
    rel = _csr([[1, 5, 9], [4], []], n_items=10)
    m = ranking_metrics(topk, rel, ks=(2, 3))
    assert m["users"] == 2
    assert m["recall@2"] == pytest.approx((1 / 3 + 0) / 2)
    assert m["recall@3"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert m["hit_rate@2"] == pytest.approx(0.5) and m["hit_rate@3"] == pytest.approx(1.0)
    assert m["mrr@3"] == pytest.approx((1 + 1 / 3) / 2)
    ndcg0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3) + 1 / math.log2(4))  # IDCG over min(3, 3)
    ndcg1 = (1 / math.log2(4)) / 1.0  # IDCG over min(3, 1) = 1 item
    assert m["ndcg@3"] == pytest.approx((ndcg0 + ndcg1) / 2)
    # Coverage over evaluated users' lists only: {1, 2, 7, 8} at K=2 -> 4 / 10
    assert m["coverage@2"] == pytest.approx(0.4)


def test_recall_not_truncated_to_k() -> None:
    topk = np.array([[0, 1]])
    rel = _csr([[0, 1, 2, 3]], n_items=5)
    assert ranking_metrics(topk, rel, ks=(2,))["recall@2"] == pytest.approx(0.5)


def test_short_lists_and_shape_errors() -> None:
    topk = np.array([[3, -1, -1]])
    m = ranking_metrics(topk, _csr([[3]], 5), ks=(3,))
    assert m["recall@3"] == 1.0 and m["coverage@3"] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="fewer than the largest K"):
        ranking_metrics(topk, _csr([[3]], 5), ks=(10,))


def test_cross_check_with_torchmetrics() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items, k = 30, 50, 10
    scores = rng.random((n_users, n_items))
    rel_rows = [
        sorted(rng.choice(n_items, size=rng.integers(1, 8), replace=False).tolist()) for _ in range(n_users)
    ]
    rel = _csr(rel_rows, n_items)
    topk = np.argsort(-scores, axis=1)[:, :k]
    ours = ranking_metrics(topk, rel, ks=(k,))
    target = torch.tensor(rel.toarray() > 0)
    preds = torch.tensor(scores)
    theirs = {
        "recall": np.mean([retrieval_recall(preds[u], target[u], top_k=k).item() for u in range(n_users)]),
        "ndcg": np.mean(
            [retrieval_normalized_dcg(preds[u], target[u], top_k=k).item() for u in range(n_users)]
        ),
        "hit_rate": np.mean(
            [retrieval_hit_rate(preds[u], target[u], top_k=k).item() for u in range(n_users)]
        ),
        "precision": np.mean(
            [retrieval_precision(preds[u], target[u], top_k=k).item() for u in range(n_users)]
        ),
        # torchmetrics 1.0.3's reciprocal rank has no top_k: cut the scores to the top k ourselves.
        "mrr": np.mean(
            [
                retrieval_reciprocal_rank(
                    torch.where(torch.isin(torch.arange(n_items), torch.tensor(topk[u])), preds[u], -1.0),
                    target[u] & torch.isin(torch.arange(n_items), torch.tensor(topk[u])),
                ).item()
                for u in range(n_users)
            ]
        ),
    }
    for name, value in theirs.items():
        assert ours[f"{name}@{k}"] == pytest.approx(value, abs=1e-6), name


def test_diversity_and_popularity() -> None:
    cats = sp.csr_matrix(np.array([[1, 0], [1, 0], [0, 1], [0, 0]]))
    assert intra_list_diversity(np.array([[0, 1]]), cats) == pytest.approx(0.0)
    assert intra_list_diversity(np.array([[0, 2]]), cats) == pytest.approx(1.0)
    assert intra_list_diversity(np.array([[0, 1, 2]]), cats) == pytest.approx(2 / 3)
    pop = popularity_metrics(np.array([[0, 1]]), np.array([8, 2, 0, 0]), n_train_users=16)
    assert pop["avg_popularity"] == pytest.approx(5.0)
    assert pop["novelty"] == pytest.approx((1 + 3) / 2)
