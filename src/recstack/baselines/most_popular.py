"""Most-popular: every user gets the items with the most train interactions."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class MostPopular:
    """Scores each item by its number of train users (ties broken by item index through the top-K sort)."""

    name = "most_popular"

    @classmethod
    def check_catalog(cls, n_columns: int) -> None:
        """Any catalog: one count per item."""

    def fit(self, train: sp.csr_matrix) -> MostPopular:
        """Args: train: ``(n_users + 1, n_items + 1)`` binary CSR."""
        self.popularity = np.asarray(train.sum(axis=0)).ravel().astype(np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        """``(len(users), n_items + 1)`` scores: the same popularity row for everyone."""
        return np.broadcast_to(self.popularity, (len(users), self.popularity.size))
