"""Strong simple baselines scored by the same evaluation code as the learned models."""

from __future__ import annotations

from typing import Protocol, Self

import numpy as np
import scipy.sparse as sp


class Baseline(Protocol):
    """What tuning and evaluation need from a baseline (EASE, RP3beta, MostPopular all fit it)."""

    def fit(self, train: sp.csr_matrix) -> Self:
        """Args: train: ``(n_users + 1, n_items + 1)`` binary CSR. Returns the fitted model itself."""
        ...

    def score(self, users: np.ndarray) -> np.ndarray:
        """``(len(users),)`` user indices -> ``(len(users), n_items + 1)`` scores, higher = better."""
        ...
