"""Ranking features of (user, candidate) pairs, computed point-in-time.

Every feature of a pair is computed from the observed interactions at or before the pair's ``as_of`` time
(the request time online; offline, the user's last observed interaction), so the ranker never sees the
future it is asked to predict. The same code computes the ranker's training data, offline evaluation's
funnel and the service's ranking stage.

Dense features (``DENSE_FEATURES``, in this order):

* ``retrieval_score_gap``: two-tower similarity minus the user's best candidate's; ``retrieval_log_rank``: log1p of its rank in the user's list.
* ``pop_{1,7,30}d``, ``pop_all``: log1p interaction counts of the item in trailing windows before as_of.
* ``days_since_first`` / ``days_since_last``: log1p days since the item's first / latest interaction before
  as_of (a proxy for age and for being "in the air"); items never seen get ``recstack.kernels.NEVER_SEEN_DAYS``.
* ``category_affinity``: share of the user's history whose categories the item shares (cosine of the
  user's category distribution and the item's multi-hot categories).
* ``history_sim_max`` / ``history_sim_mean``: cosine between the item's two-tower vector and the vectors of
  the user's last ``RECENT_ITEMS`` items.
* ``user_log_history``: log1p number of observed interactions of the user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import scipy.sparse as sp

from recstack.kernels import (
    DAY_US,
    category_dots,
    category_sums,
    pair_features,
    timeline_stats,
)
from recstack.models.inputs import Bag, FeatureTables, Sequences, range_positions, single

POPULARITY_WINDOWS_DAYS = (1, 7, 30)
RECENT_ITEMS = 10  # history items compared with the candidate: the latest ones say most about "next"
BULK_EVENTS = 100_000  # timelines of at least this many events are sorted by Polars (see from_events)
DENSE_FEATURES: tuple[str, ...] = (
    "retrieval_score_gap",
    "retrieval_log_rank",
    *(f"pop_{w}d" for w in POPULARITY_WINDOWS_DAYS),
    "pop_all",
    "days_since_first",
    "days_since_last",
    "category_affinity",
    "history_sim_max",
    "history_sim_mean",
    "user_log_history",
)
LAST_ITEM_FEATURE = "last_item"


@dataclass
class ItemTimeline:
    """Observed interaction times per item, for point-in-time counts in O(log n) per query.

    Times are replaced by their rank among the distinct observed times so that ``item * M + rank`` fits in
    int64 for any catalog size, making one sorted key array serve every (item, time) query.
    """

    keys: np.ndarray  # (N,) sorted item * M + time rank (1-based)
    times: np.ndarray  # (N,) us, aligned with keys
    unique_times: np.ndarray  # (U,) sorted distinct times
    m: int
    # (max item + 2,) where each item's keys start: a lookup instead of a search (None: search)
    starts: np.ndarray | None = None
    # (N + 1,) cumulative event weights in key order; None: every event weighs 1 (counts are positions)
    cum: np.ndarray | None = None

    @classmethod
    def from_sequences(cls, sequences: Sequences) -> ItemTimeline:
        return cls.from_events(sequences.items, sequences.times, lookup=True)

    @classmethod
    def from_events(
        cls, items: np.ndarray, times: np.ndarray, weights: np.ndarray | None = None, lookup: bool = False
    ) -> ItemTimeline:
        """From events ``(item, time, weight)``; ``lookup`` builds the per-item start table (worth it for
        a timeline queried many times, not for a request's few events)."""
        if len(times) >= BULK_EVENTS:
            # Polars' multi-threaded sorts: 45M events took 40 s in numpy's unique / searchsorted /
            # argsort, 6 s here. The dense rank (1-based) is exactly searchsorted(unique, t, "right").
            series = pl.Series(times)
            unique_times = series.unique().sort().to_numpy()
            m = len(unique_times) + 1
            keys = items * m + series.rank("dense").to_numpy().astype(np.int64)
            ranked = pl.DataFrame({"k": keys}).with_row_index().sort("k", maintain_order=True)
            order = ranked["index"].to_numpy().astype(np.int64)
        else:  # a request's few events: numpy, without Polars' per-call overhead
            unique_times = np.unique(times)
            m = len(unique_times) + 1
            keys = items * m + np.searchsorted(unique_times, times, side="right")
            order = np.argsort(keys, kind="stable")
        keys = keys[order]
        starts = None
        if lookup:
            n_items = int(items.max()) + 1 if len(items) else 1
            starts = np.searchsorted(keys, np.arange(n_items + 1) * m, side="right")
        cum = None if weights is None else np.concatenate([[0.0], np.cumsum(weights[order])])
        return cls(keys=keys, times=times[order], unique_times=unique_times, m=m, starts=starts, cum=cum)

    def _start(self, items: np.ndarray) -> np.ndarray:
        """Index of each item's first key (items never observed: an empty range at the end)."""
        if self.starts is None:
            return np.searchsorted(self.keys, items * self.m, side="left")
        return self.starts[np.minimum(items, len(self.starts) - 1)]

    def _position(self, items: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Index one past the item's last interaction at or before ``t`` (broadcast shapes)."""
        r = np.searchsorted(self.unique_times, t, side="right")
        return np.searchsorted(self.keys, items * self.m + r, side="right")

    def counts(self, items: np.ndarray, as_of: np.ndarray, windows_days: tuple[int, ...]) -> np.ndarray:
        """``(*items.shape, len(windows) + 1)`` interactions in each trailing window and in all time.

        Args:
            items: item indices, any shape.
            as_of: times (us) broadcastable to ``items``.
        """
        return self.stats(items, as_of, windows_days)[0]

    def first_last(self, items: np.ndarray, as_of: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First and latest interaction time at or before as_of, and whether there is any."""
        return self.stats(items, as_of, ())[1:]

    def stats(
        self, items: np.ndarray, as_of: np.ndarray, windows_days: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`counts` and :meth:`first_last` in one pass (the searches they share done once)."""
        as_int = np.issubdtype(np.asarray(as_of).dtype, np.integer)
        if self.starts is not None and self.cum is None and len(self.times) and as_int:
            return self._stats_in_ranges(items, as_of, windows_days)
        return self._stats_by_search(items, as_of, windows_days)

    def _stats_in_ranges(
        self, items: np.ndarray, as_of: np.ndarray, windows_days: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`stats` of a timeline with its start table: each item's events are searched within its
        own range of the table (``timeline_stats``, compiled) instead of the whole key array.

        The same integers as :meth:`_stats_by_search`: within an item's range the times are sorted, so the
        events at or before ``t`` are a prefix of it. Served, it matters for large catalogs: the whole-array
        searches walk a 12 MB key array (1M items) with a cache miss per step, an item's own range is a
        few events.
        """
        items, as_of = np.asarray(items), np.asarray(as_of)
        if items.ndim == 2 and as_of.shape == (len(items), 1):  # a batch's candidates, a time per row
            shape, per_time = items.shape, items.shape[1]
            flat_items = np.ascontiguousarray(items, dtype=np.int64).ravel()
            flat_t = np.ascontiguousarray(as_of, dtype=np.int64).ravel()
        else:
            shape, per_time = np.broadcast_shapes(items.shape, as_of.shape), 1
            flat_items = np.ascontiguousarray(np.broadcast_to(items, shape), dtype=np.int64).ravel()
            flat_t = np.ascontiguousarray(np.broadcast_to(as_of, shape), dtype=np.int64).ravel()
        windows_us = np.array([w * DAY_US for w in windows_days], dtype=np.int64)
        starts, times = (np.ascontiguousarray(a, dtype=np.int64) for a in (self.starts, self.times))
        counts, first, last, seen = timeline_stats(
            starts, times, flat_items, flat_t, windows_us, max(per_time, 1)
        )
        return (
            counts.reshape(*shape, len(windows_days) + 1),
            first.reshape(shape),
            last.reshape(shape),
            seen.reshape(shape),
        )

    def _stats_by_search(
        self, items: np.ndarray, as_of: np.ndarray, windows_days: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`stats` by searching the whole key array (any timeline: weighted, without start table)."""
        start = self._start(items)
        end = self._position(items, as_of)
        mass = (lambda p: p) if self.cum is None else self.cum.__getitem__  # events up to a position
        out = [mass(end) - mass(self._position(items, as_of - w * DAY_US)) for w in windows_days]
        out.append(mass(end) - mass(start))
        seen = end > start
        first = self.times[np.minimum(start, len(self.times) - 1)]
        last = self.times[np.maximum(end - 1, 0)]
        return np.stack(out, axis=-1), first, last, seen


@dataclass
class ItemActivity:
    """Interactions with items since the snapshot (the service's online state), as weighted times.

    ``items`` ``(M,)`` item indices, ``times`` ``(M,)`` us and ``weights`` ``(M,)`` event counts: one row
    per event (embedded store) or per item and day (Redis keeps daily counts, dated at the day's start).
    """

    items: np.ndarray
    times: np.ndarray
    weights: np.ndarray

    @classmethod
    def empty(cls) -> ItemActivity:
        return cls(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float64))

    def __len__(self) -> int:
        return len(self.items)

    def add_to(
        self,
        stats: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
        items: np.ndarray,
        as_of: np.ndarray,
        windows_days: tuple[int, ...],
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`ItemTimeline.stats` of ``items`` ``(B, N)`` as of ``as_of`` ``(B, 1)``, with these events
        added: window and all-time counts grow, first / latest times widen, ``seen`` may turn on."""
        counts, first, last, seen = stats
        active = np.isin(items, self.items)
        if not active.any():
            return stats
        timeline = ItemTimeline.from_events(self.items, self.times, self.weights)
        t = np.broadcast_to(as_of, items.shape)[active]
        extra, on_first, on_last, has = timeline.stats(items[active], t, windows_days)
        counts = counts.astype(np.float64, copy=True)
        counts[active] += extra
        first, last, seen = first.copy(), last.copy(), seen.copy()
        sa = seen[active]
        # Earliest / latest over whichever side has events (values where there are none are not times).
        big, small = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        f = np.minimum(np.where(sa, first[active], big), np.where(has, on_first, big))
        la = np.maximum(np.where(sa, last[active], small), np.where(has, on_last, small))
        any_ = sa | has
        first[active] = np.where(any_, f, first[active])
        last[active] = np.where(any_, la, last[active])
        seen[active] = any_
        return counts, first, last, seen


@dataclass
class RankingContext:
    """What ranking features are computed from: the observed data and the retrieval model's item vectors."""

    tables: FeatureTables
    sequences: Sequences
    timeline: ItemTimeline
    item_vectors: np.ndarray  # (n_items + 1, D), unit length for cosine models
    item_categories: sp.csr_matrix  # (n_items + 1, n_categories + 1) row-normalized multi-hot

    @classmethod
    def build(cls, tables: FeatureTables, sequences: Sequences, item_vectors: np.ndarray) -> RankingContext:
        cats = tables.category_matrix()
        norms = np.sqrt(np.asarray(cats.sum(axis=1)).ravel())
        cats = sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ cats
        norm_vec = np.linalg.norm(item_vectors, axis=1, keepdims=True)
        unit = item_vectors / np.where(norm_vec > 0, norm_vec, 1.0)
        return cls(
            tables, sequences, ItemTimeline.from_sequences(sequences), unit.astype(np.float32), cats.tocsr()
        )


def _category_entries(cats: sp.csr_matrix, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The stored entries of ``items``' rows: ``(row of items, column, value)``, each ``(nnz,)``."""
    starts = cats.indptr[items]
    lengths = cats.indptr[items + 1] - starts
    rows = np.repeat(np.arange(len(items)), lengths)
    at = range_positions(starts, lengths)
    return rows, cats.indices[at], cats.data[at]


def category_affinity(
    cats: sp.csr_matrix, values: np.ndarray, lengths: np.ndarray, items: np.ndarray
) -> np.ndarray:
    """``(B, N)`` cosine between each user's category distribution and each candidate's categories.

    Args:
        cats: ``(n_items + 1, C)`` row-normalized item categories.
        values / lengths: the users' histories ``(nnz,)``, ``(B,)``.
        items: ``(B, N)`` candidates.

    Works on the CSR arrays: scipy's slicing and products cost ~0.3 ms per request here, for a few
    hundred multiply-adds. The sums run compiled (``recstack.kernels.category_sums`` / ``category_dots``,
    the same float64 sums in the same order) for the CSR layout the ranking context builds (int32
    indices, float32 data); any other layout takes the numpy steps.
    """
    b, n = items.shape
    c = cats.shape[1]
    compiled = (cats.indptr.dtype, cats.indices.dtype, cats.data.dtype) == (np.int32, np.int32, np.float32)
    for name, idx in (("history", values), ("candidate", items)):
        # The kernels read without bounds checks: an index past the matrix must fail here, as numpy would.
        if idx.size and (idx.min() < 0 or idx.max() >= cats.shape[0]):
            raise IndexError(f"{name} item index out of range 0..{cats.shape[0] - 1}")
    if compiled:
        values = np.ascontiguousarray(values, dtype=np.int64)
        lengths = np.ascontiguousarray(lengths, dtype=np.int64)
        user_cats = category_sums(cats.indptr, cats.indices, cats.data, values, lengths, c)
    else:
        rows, cols, data = _category_entries(cats, values)
        user_of = np.repeat(np.arange(b), lengths)[rows]
        user_cats = np.bincount(user_of * c + cols, weights=data, minlength=b * c).reshape(b, c)
        user_cats = user_cats.astype(np.float64, copy=False)  # bincount of no entries is int64
    norm = np.linalg.norm(user_cats, axis=1, keepdims=True)
    user_cats /= np.where(norm > 0, norm, 1.0)
    if compiled:
        return category_dots(
            cats.indptr, cats.indices, cats.data, np.ascontiguousarray(items, dtype=np.int64), user_cats
        )
    rows, cols, data = _category_entries(cats, items.ravel())
    pair_user = rows // n
    return np.bincount(rows, weights=data * user_cats[pair_user, cols], minlength=b * n).reshape(b, n)


def latest_items(values: np.ndarray, lengths: np.ndarray, r: int) -> np.ndarray:
    """``(B, r)`` the latest ``r`` items of each history ``(values (nnz,), lengths (B,))``, oldest first in
    the input: column j is the (j + 1)-th latest, padded with the unknown item 0 (a zero-similarity slot);
    ``values``' dtype."""
    back = np.arange(r)
    has = back < lengths[:, None]  # (B, r): the history is at least j + 1 long
    at = np.cumsum(lengths)[:, None] - 1 - back  # (B, r): where the (j + 1)-th latest item is
    return np.where(has, values[np.where(has, at, 0)] if len(values) else 0, 0)


def dense_features(
    ctx: RankingContext,
    users: np.ndarray,
    items: np.ndarray,
    scores: np.ndarray,
    ranks: np.ndarray,
    as_of: np.ndarray,
    history: tuple[np.ndarray, np.ndarray],
    n_events: np.ndarray | None = None,
    activity: ItemActivity | None = None,
) -> np.ndarray:
    """``(B, N, len(DENSE_FEATURES))`` float32 features of each user's candidates.

    Args:
        ctx: observed data and item vectors.
        users: ``(B,)`` user indices.
        items: ``(B, N)`` candidate item indices.
        scores / ranks: ``(B, N)`` retrieval similarity and 1-based rank.
        as_of: ``(B,)`` time (us) of each request.
        history: the users' observed items ``(values, lengths)``, oldest first (at or before as_of).
        n_events: ``(B,)`` each user's number of observed events; default their count in ``ctx.sequences``
            (the service passes its online state's, which feedback keeps growing).
        activity: the items' interactions since the snapshot (the service's online state), added to the
            snapshot's popularity and recency features.

    The popularity and category sums run compiled (see :meth:`ItemTimeline.stats` and
    :func:`category_affinity`), then the columns come from one compiled pass
    (:func:`recstack.kernels.pair_features`).
    """
    as_of = np.asarray(as_of)
    if not np.issubdtype(as_of.dtype, np.integer):
        raise TypeError(f"as_of must hold integer times (us), got {as_of.dtype}")
    as_of = as_of.astype(np.int64, copy=False)
    t = as_of[:, None]
    stats = ctx.timeline.stats(items, t, POPULARITY_WINDOWS_DAYS)
    if activity is not None and len(activity):
        stats = activity.add_to(stats, items, t, POPULARITY_WINDOWS_DAYS)
    counts, first, last, seen = stats
    values, lengths = history
    affinity = category_affinity(ctx.item_categories, values, lengths, items)
    n_events = ctx.sequences.lengths()[users] if n_events is None else n_events
    recent = latest_items(values, lengths, RECENT_ITEMS)
    # numpy's einsum, not a compiled loop: its summation order (SIMD lanes) is what the ranker was trained
    # on, and sharded training amplified a last-bit change of it into different embedding weights.
    sims = np.einsum("bnd,brd->bnr", ctx.item_vectors[items], ctx.item_vectors[recent])
    return pair_features(
        np.asarray(scores, dtype=np.float32),
        np.asarray(ranks, dtype=np.int64),
        as_of,
        counts.astype(np.float64, copy=False),
        first,
        last,
        seen,
        affinity,
        sims,
        np.asarray(recent, dtype=np.int64),
        np.asarray(n_events, dtype=np.float64),
    )


def sparse_bags(
    tables: FeatureTables,
    users: np.ndarray,
    items: np.ndarray,
    last_item: np.ndarray,
    item_features: bool = True,
    user_features: bool = True,
) -> dict[str, Bag]:
    """Sparse ranker features of ``B * N`` flattened pairs: user and item ids, attributes, the last item.

    Args:
        users: ``(B,)``; items: ``(B, N)``; last_item: ``(B,)`` the user's latest item (0 = none), a context
            feature: what the user just did says most about what comes next.
        item_features / user_features: False leaves the items' / users' own features out (a caller that
            has their pooled embeddings already: ``FunnelRanker.item_block`` / ``user_block``).
    """
    n = items.shape[1]
    # The user's features and last item are the same for all n of its pairs: one row each, repeated.
    out = tables.users.bags_for(users, repeat=n) if user_features else {}
    if item_features:
        out.update(tables.items.bags_for(items.ravel()))
    out[LAST_ITEM_FEATURE] = single(last_item, repeat=n)
    return out


def ranker_cardinalities(tables: FeatureTables) -> dict[str, int]:
    """Embedding-table sizes of the ranker's sparse features, in KJT key order."""
    return {
        **tables.users.cardinalities,
        **tables.items.cardinalities,
        LAST_ITEM_FEATURE: tables.items.n_items,
    }
