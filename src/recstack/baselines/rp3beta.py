"""RP3beta (Paudel et al., 2017): a 3-step random walk item-item graph, reranked by popularity^-beta."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recstack.baselines import DenseItemItem


class RP3beta(DenseItemItem):
    """W[i, j] = (P_iu P_ui)[i, j] / pop(j)^beta, with transition probabilities raised to ``alpha``.

    Args:
        alpha: exponent on the transition probabilities (1 = plain random walk).
        beta: popularity penalty of the destination item (0 = P3alpha; larger favours the long tail).
        neighbors: keep the ``neighbors`` largest weights of each item row (sparsifies, regularizes).
    """

    name = "rp3beta"

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, neighbors: int = 200) -> None:
        if alpha <= 0 or beta < 0 or neighbors < 1:
            raise ValueError(
                f"RP3beta needs alpha > 0, beta >= 0, neighbors >= 1; got {alpha}, {beta}, {neighbors}"
            )
        self.alpha, self.beta, self.neighbors = alpha, beta, neighbors

    @staticmethod
    def _row_normalize(m: sp.csr_matrix) -> sp.csr_matrix:
        sums = np.asarray(m.sum(axis=1)).ravel()
        sums[sums == 0] = 1.0
        return (sp.diags(1.0 / sums) @ m).tocsr()

    def fit(self, train: sp.csr_matrix) -> RP3beta:
        """Args: train: ``(n_users + 1, n_items + 1)`` binary CSR."""
        self.check_catalog(train.shape[1])
        self.train = train.tocsr().astype(np.float64)
        p_ui = self._row_normalize(self.train).power(self.alpha)
        p_iu = self._row_normalize(self.train.T.tocsr()).power(self.alpha)
        w = (p_iu @ p_ui).toarray()
        pop = np.asarray(self.train.sum(axis=0)).ravel()
        w /= np.power(np.maximum(pop, 1.0), self.beta)[None, :]
        np.fill_diagonal(w, 0.0)
        if self.neighbors < w.shape[1]:
            drop = np.argpartition(-w, kth=self.neighbors, axis=1)[:, self.neighbors :]
            np.put_along_axis(w, drop, 0.0, axis=1)
        self.weights = sp.csr_matrix(w.astype(np.float32))
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        """``(len(users), n_items + 1)`` scores from each user's train row."""
        return (self.train[users] @ self.weights).toarray()
