"""Item-item co-occurrence ("bought together"): items that share users, cosine-normalized, top-N per item."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recstack.models.inputs import Sequences


@dataclass
class CoOccurrence:
    """Each item's most co-occurring items.

    Attributes:
        neighbours: ``(n_items + 1, N)`` item indices best first (-1 = none); int32 below 2^31 items.
        scores: ``(n_items + 1, N)`` cosine of the items' user sets (``|U_i & U_j| / sqrt(|U_i| |U_j|)``).
    """

    neighbours: np.ndarray
    scores: np.ndarray

    @classmethod
    def build(
        cls,
        sequences: Sequences,
        n_items: int,
        size: int,
        recent: int = 50,
        min_count: int = 2,
        block: int = 4096,
    ) -> CoOccurrence:
        """Count co-occurrences within each user's latest ``recent`` items (bounding the cost of heavy users
        at ``recent**2`` pairs each); pairs seen fewer than ``min_count`` times are noise and dropped."""
        lengths = sequences.lengths()
        users = np.arange(len(lengths))
        values, counts = sequences.last(users, recent)
        rows = np.repeat(users, counts)
        x = sp.csr_matrix((np.ones(len(values), np.float32), (rows, values)), shape=(len(lengths), n_items))
        x.data[:] = 1.0
        xt = x.T.tocsr()
        item_users = np.asarray(x.sum(axis=0)).ravel()
        # int32 halves the largest array of the bundle (800 MB of int64 at 1M items and 100 neighbours).
        neighbours = np.full((n_items, size), -1, dtype=np.int32 if n_items < 2**31 else np.int64)
        scores = np.zeros((n_items, size), dtype=np.float32)
        for start in range(1, n_items, block):  # row blocks bound the memory of the item-item product
            stop = min(start + block, n_items)
            c = (xt[start:stop] @ x).tocsr()
            for r in range(stop - start):
                item = start + r
                lo, hi = c.indptr[r], c.indptr[r + 1]
                cols, vals = c.indices[lo:hi], c.data[lo:hi]
                keep = (cols != item) & (cols > 0) & (vals >= min_count)
                cols, vals = cols[keep], vals[keep]
                if not len(cols):
                    continue
                cos = vals / np.sqrt(item_users[item] * item_users[cols])
                order = np.lexsort((cols, -cos))[:size]
                neighbours[item, : len(order)] = cols[order]
                scores[item, : len(order)] = cos[order]
        return cls(neighbours=neighbours, scores=scores)

    def save(self, path: str) -> None:
        np.savez_compressed(path, neighbours=self.neighbours, scores=self.scores)

    @classmethod
    def load(cls, path: str) -> CoOccurrence:
        with np.load(path) as f:
            return cls(neighbours=f["neighbours"], scores=f["scores"])
