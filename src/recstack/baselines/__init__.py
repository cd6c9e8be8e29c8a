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

    @classmethod
    def check_catalog(cls, n_columns: int) -> None:
        """Raise ValueError, naming the reason, when ``fit`` cannot handle ``n_columns`` (``n_items + 1``)."""
        ...


# EASE and RP3beta hold dense (n_items + 1)^2 float64 matrices (and a second one while they fit): 30,000
# items is 7.2 GB each. Past it they would not fail cleanly but swap or get killed, so they refuse first.
MAX_DENSE_ITEMS = 30_000


class DenseItemItem:
    """Base of the baselines that hold dense item-item matrices (EASE, RP3beta): bounded catalogs only."""

    name: str

    @classmethod
    def check_catalog(cls, n_columns: int) -> None:
        """Raise before fitting on a catalog the dense matrices cannot hold.

        Args:
            n_columns: the train matrix's columns (``n_items + 1``).

        Raises:
            ValueError: the catalog is above :data:`MAX_DENSE_ITEMS`; the message gives the memory it would
                take.
        """
        if n_columns > MAX_DENSE_ITEMS:
            gb = n_columns**2 * 8 / 1e9
            raise ValueError(
                f"{cls.name} needs a dense {n_columns:,} x {n_columns:,} float64 item-item matrix "
                f"({gb:,.0f} GB); catalogs above {MAX_DENSE_ITEMS:,} items are out of its reach: "
                f"leave {cls.name!r} out of evaluate.baselines (most_popular scales to any catalog)"
            )
