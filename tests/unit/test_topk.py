"""P1's matrices from the indexed interactions table."""

from __future__ import annotations

import polars as pl

from recstack.data.split import SPLIT, TEST, TRAIN, VALID
from recstack.evaluation.topk import p1_matrices, p1_valid_matrices
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
