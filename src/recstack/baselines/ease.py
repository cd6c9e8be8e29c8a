"""EASE (Steck, 2019): a closed-form item-item linear autoencoder with a zero diagonal."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recstack.baselines import DenseItemItem


class EASE(DenseItemItem):
    """B = I - P diagMat(1 / diag(P)), P = (X^T X + lambda I)^-1; scores = X B.

    Args:
        l2: the ridge penalty lambda (the protocol's reference run uses 300 on ML-100K; tune on valid).
    """

    name = "ease"

    def __init__(self, l2: float = 300.0) -> None:
        if l2 <= 0:
            raise ValueError(f"EASE l2 must be positive, got {l2}")
        self.l2 = l2

    def fit(self, train: sp.csr_matrix) -> EASE:
        """Args: train: ``(n_users + 1, n_items + 1)`` binary CSR. Memory: a dense ``n_items^2`` float64."""
        self.check_catalog(train.shape[1])
        self.train = train.tocsr().astype(np.float64)
        gram = (self.train.T @ self.train).toarray()
        gram[np.diag_indices_from(gram)] += self.l2
        p = np.linalg.inv(gram)
        self.weights = (p / (-np.diag(p))).astype(np.float32)
        np.fill_diagonal(self.weights, 0.0)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        """``(len(users), n_items + 1)`` scores from each user's train row."""
        return np.asarray(self.train[users] @ self.weights)
