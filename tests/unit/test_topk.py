"""P1's matrices from the indexed interactions table; full-catalog top-k."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from recstack.data.split import SPLIT, TEST, TRAIN, VALID
from recstack.evaluation import topk as topk_module
from recstack.evaluation.topk import p1_matrices, p1_valid_matrices, topk
from recstack.features.transform import ITEM_IDX, USER_IDX


def test_p1_valid_matrices_split_the_fit_part() -> None:
    # user 1: train {1, 2}, valid {3}, test {4}; user 2: train {2}, valid {1}; user 0 (OOV): valid {2}.
    inter = pl.DataFrame(
        {
            USER_IDX: [1, 1, 1, 1, 2, 2, 0],
            ITEM_IDX: [1, 2, 3, 4, 2, 1, 2],
            SPLIT: [TRAIN, TRAIN, VALID, TEST, TRAIN, VALID, VALID],
        }
    )
    train_sub, valid = p1_valid_matrices(inter, n_users=2, n_items=4)
    assert train_sub.shape == valid.shape == (3, 5)
    assert train_sub.toarray().tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 1, 0, 0]]
    # The OOV user's valid row is dropped, as p1_matrices drops its test row.
    assert valid.toarray().tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, 1, 0], [0, 1, 0, 0, 0]]
    # train_sub + valid is P1's full train, apart from the OOV user's row.
    train, _ = p1_matrices(inter, n_users=2, n_items=4)
    assert ((train_sub + valid) != train)[1:].nnz == 0


def test_topk_bounds_its_batches_on_large_catalogs_without_changing_the_result(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Users per batch shrink so that a batch holds at most MAX_SCORES_PER_BATCH scores (a 1M-item catalog
    took 4 GB a batch); rows are ranked alone, so the lists are the same, ties and exclusions included."""
    rng = np.random.default_rng(0)
    n_users, n_items = 50, 300
    scores = rng.integers(0, 20, size=(n_users, n_items)).astype(np.float32)  # many ties
    exclude = sp.random(n_users, n_items, density=0.2, format="csr", random_state=1)
    users = np.arange(n_users)
    seen: list[int] = []

    def score(idx: np.ndarray) -> np.ndarray:
        seen.append(len(idx))
        return scores[idx]

    whole = topk(score, users, exclude, 25)
    assert seen == [n_users]
    monkeypatch.setattr(topk_module, "MAX_SCORES_PER_BATCH", 7 * n_items + 5)
    seen.clear()
    np.testing.assert_array_equal(topk(score, users, exclude, 25), whole)
    assert max(seen) == 7 and sum(seen) == n_users
    assert not (whole == 0).any()  # the unknown item never appears
    for u in range(n_users):
        assert not set(whole[u]) & set(exclude[u].indices)
