"""Compiled (numba) loops of per-request work (ranking features, the policy's MMR), where numpy would make
many small passes.

Each kernel computes exactly what the numpy code it replaces computed (integers, or the same float
operations in the same order), so features, offline evaluation and the service do not move.

Kernels have explicit signatures, so they compile when this module is imported, not on a service's first
request (where a second of compiling would blow the ranking budget); ``cache=True`` keeps the machine
code in ``__pycache__`` (or numba's user-wide cache) so later imports load it instead; where no cache
location is writable (a read-only image and home), every start compiles again instead of failing.
``nogil`` lets the service's event loop run while a lane thread is in a kernel. Callers pass C-contiguous
arrays of the signature's types.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numba import njit, types


def compiled(signature: Any) -> Callable[[Callable], Callable]:
    """``numba.njit(signature, cache=True, nogil=True)``, without the cache when numba finds nowhere
    writable to keep it (it raises at decoration then, which would stop the service from starting)."""

    def decorate(fn: Callable) -> Callable:
        try:
            return njit(signature, cache=True, nogil=True)(fn)
        except RuntimeError as exc:
            if "no locator available" not in str(exc):
                raise
            return njit(signature, nogil=True)(fn)

    return decorate


I64 = types.Array(types.int64, 1, "C")
# Inputs are typed read-only, so the views numpy hands out read-only (broadcasts, memory maps) pass as
# they are; writable arrays pass too.
IN_I64 = types.Array(types.int64, 1, "C", readonly=True)


@compiled(types.int64(IN_I64, types.int64, types.int64, types.int64))
def _at_or_before(times: np.ndarray, lo: int, hi: int, t: int) -> int:
    """Index one past the last of ``times[lo:hi]`` (sorted) that is <= ``t``: ``searchsorted(side="right")``.

    Galloping back from ``hi`` before the binary search: the times asked about are near an item's latest
    events (a request's now, trailing windows of a few days), so the answer is usually a few steps from
    the end, where a plain binary search took ``log2(hi - lo)`` steps, each a likely cache miss.
    """
    step = 1
    while hi - step >= lo and times[hi - step] > t:
        hi -= step
        step *= 2
    lo = max(lo, hi - step)  # times[lo - 1] <= t (or lo is the range's start): the answer is in lo..hi
    while lo < hi:
        mid = (lo + hi) >> 1
        if times[mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo


@compiled(
    types.Tuple((types.Array(types.int64, 2, "C"), I64, I64, types.Array(types.boolean, 1, "C")))(
        IN_I64, IN_I64, IN_I64, IN_I64, IN_I64, types.int64
    )
)
def timeline_stats(
    starts: np.ndarray,
    times: np.ndarray,
    items: np.ndarray,
    as_of: np.ndarray,
    windows_us: np.ndarray,
    per_time: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Point-in-time activity of ``items`` ``(M,)`` at times ``as_of`` ``(M // per_time,)`` (us): item ``j``
    is asked about at ``as_of[j // per_time]`` (a batch's ``(B, N)`` candidates with one request time per
    row: ``per_time = N``). The timeline's item ``i`` has its events at ``times[starts[i]:starts[i + 1]]``,
    sorted by time.

    Returns ``counts (M, W + 1)`` int64 (events in each trailing window ``(t - w, t]`` of ``windows_us``
    ``(W,)``, then at or before ``t``), and the first and latest event time at or before ``t`` ``(M,)``
    with ``seen`` ``(M,)`` (whether there is one; where not, the times are placeholders, as in the numpy
    code). Items past the table have no events; a negative item counts as the unknown item 0.
    """
    m, w = len(items), len(windows_us)
    n_last, n = len(starts) - 1, len(times)
    counts = np.empty((m, w + 1), dtype=np.int64)
    first = np.empty(m, dtype=times.dtype)
    last = np.empty(m, dtype=times.dtype)
    seen = np.empty(m, dtype=np.bool_)
    for j in range(m):
        item = min(max(items[j], 0), n_last)
        lo, hi = starts[item], starts[min(item + 1, n_last)]
        t = as_of[j // per_time]
        end = _at_or_before(times, lo, hi, t)
        for k in range(w):
            counts[j, k] = end - _at_or_before(times, lo, end, t - windows_us[k])
        counts[j, w] = end - lo
        seen[j] = end > lo
        first[j] = times[min(lo, n - 1)]
        last[j] = times[max(end - 1, 0)]
    return counts, first, last, seen


IN_F64 = types.Array(types.float64, 1, "C", readonly=True)
IN_F64_2D = types.Array(types.float64, 2, "C", readonly=True)


@compiled(types.Array(types.int64, 1, "C")(IN_F64, types.float64, IN_F64_2D, types.int64))
def mmr_picks(weighted: np.ndarray, penalty: float, sim: np.ndarray, k: int) -> np.ndarray:
    """Maximal marginal relevance: ``min(k, W)`` positions of a pool of ``W`` items in the order picked.

    Each step picks ``argmax weighted - penalty * max_sim_to_picked`` among the items not yet picked
    (the first of equal gains, and the first NaN if any, as ``numpy.argmax``), then raises each item's
    ``max_sim`` to its similarity with the pick (``numpy.maximum``).

    Args:
        weighted: ``(W,)`` ``lambda * relevance``; penalty: ``1 - lambda``; sim: ``(W, W)`` similarities.
    """
    w = len(weighted)
    steps = min(k, w)
    picked = np.zeros(w, dtype=np.bool_)
    max_sim = np.zeros(w)
    out = np.empty(steps, dtype=np.int64)
    for s in range(steps):
        best, best_gain = 0, 0.0
        for j in range(w):
            gain = -np.inf if picked[j] else weighted[j] - penalty * max_sim[j]
            if np.isnan(gain):
                best = j
                break
            if j == 0 or gain > best_gain:
                best, best_gain = j, gain
        out[s] = best
        picked[best] = True
        for j in range(w):
            m = sim[best, j]
            if m > max_sim[j] or np.isnan(m):
                max_sim[j] = m
    return out


IN_I32 = types.Array(types.int32, 1, "C", readonly=True)
IN_F32 = types.Array(types.float32, 1, "C", readonly=True)


@compiled(types.Array(types.float64, 2, "C")(IN_I32, IN_I32, IN_F32, IN_I64, IN_I64, types.int64))
def category_sums(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, values: np.ndarray, lengths: np.ndarray, c: int
) -> np.ndarray:
    """``(B, c)`` each history's summed category rows: row ``b`` adds the CSR rows
    (``indptr``, ``indices``, ``data``) of its items ``values[sum(lengths[:b]):][:lengths[b]]``, in order.

    What ``np.bincount(user * c + column, weights=data)`` over the histories' entries computed: float64
    sums, each taken in the entries' order.
    """
    b = len(lengths)
    out = np.zeros((b, c))
    at = 0
    for row in range(b):
        for j in range(at, at + lengths[row]):
            item = values[j]
            for e in range(indptr[item], indptr[item + 1]):
                out[row, indices[e]] += np.float64(data[e])
        at += lengths[row]
    return out


@compiled(
    types.Array(types.float64, 2, "C")(
        IN_I32, IN_I32, IN_F32, types.Array(types.int64, 2, "C", readonly=True), IN_F64_2D
    )
)
def category_dots(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, items: np.ndarray, user_cats: np.ndarray
) -> np.ndarray:
    """``(B, N)`` dot products of the candidates ``items`` ``(B, N)``' CSR category rows with their user's
    row of ``user_cats`` ``(B, C)``: what ``np.bincount(pair, weights=data * user_cats[user, column])``
    computed (each product rounded to float64, then summed in the entries' order)."""
    b, n = items.shape
    out = np.zeros((b, n))
    for row in range(b):
        for k in range(n):
            item = items[row, k]
            acc = 0.0
            for e in range(indptr[item], indptr[item + 1]):
                acc += np.float64(data[e]) * user_cats[row, indices[e]]
            out[row, k] = acc
    return out


A_F32_2D = types.Array(types.float32, 2, "A", readonly=True)
A_I64_2D = types.Array(types.int64, 2, "A", readonly=True)
A_F64_2D = types.Array(types.float64, 2, "A", readonly=True)
A_F64_3D = types.Array(types.float64, 3, "A", readonly=True)
A_BOOL_2D = types.Array(types.boolean, 2, "A", readonly=True)
A_I64 = types.Array(types.int64, 1, "A", readonly=True)
A_F64 = types.Array(types.float64, 1, "A", readonly=True)
# Defined here for the kernel; recstack.ranking.features, whose docstring explains them, imports DAY_US.
DAY_US = 86_400_000_000
NEVER_SEEN_DAYS = 10_000.0


PAIRWISE_BLOCK = 128  # numpy's PW_BLOCKSIZE: longer rows it splits in halves (not done here)


@compiled(types.float32(types.Array(types.float32, 1, "A", readonly=True)))
def float32_sum(x: np.ndarray) -> np.float32:
    """``x.sum()`` of a float32 row as numpy's add-reduce computes it: its identity 0.0 plus the pairwise
    sum of the row (below 8 values in order; up to ``PAIRWISE_BLOCK`` in eight interleaved partial sums,
    added as a tree, then the remainder in order). Longer rows are refused."""
    n = len(x)
    if n > PAIRWISE_BLOCK:
        raise ValueError("float32_sum takes rows of up to 128 values")
    acc = np.float32(-0.0)
    if n < 8:
        for i in range(n):
            acc += x[i]
        return np.float32(0.0) + acc
    r = np.empty(8, dtype=np.float32)
    for k in range(8):
        r[k] = x[k]
    i = 8
    while i < n - n % 8:
        for k in range(8):
            r[k] += x[i + k]
        i += 8
    acc = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
    while i < n:
        acc += x[i]
        i += 1
    return np.float32(0.0) + acc


@compiled(
    types.Array(types.float32, 3, "C")(
        A_F32_2D,  # scores
        A_I64_2D,  # ranks
        A_I64,  # as_of
        A_F64_3D,  # counts
        A_I64_2D,  # first
        A_I64_2D,  # last
        A_BOOL_2D,  # seen
        A_F64_2D,  # affinity
        types.Array(types.float32, 3, "A", readonly=True),  # sims
        A_I64_2D,  # recent
        A_F64,  # n_events
    )
)
def pair_features(
    scores: np.ndarray,
    ranks: np.ndarray,
    as_of: np.ndarray,
    counts: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    seen: np.ndarray,
    affinity: np.ndarray,
    sims: np.ndarray,
    recent: np.ndarray,
    n_events: np.ndarray,
) -> np.ndarray:
    """The ranker's dense features ``(B, N, 2 + W + 1 + 6)`` float32 of ``B`` users' ``N`` candidates, in
    ``recstack.ranking.features.DENSE_FEATURES`` order, in one pass (the numpy steps made ~30 passes of a
    few microseconds each over a request's 200 pairs).

    Args:
        scores / ranks: ``(B, N)`` retrieval similarity and 1-based rank. as_of: ``(B,)`` request times (us).
        counts: ``(B, N, W + 1)`` interactions in each trailing window and in all time; first / last /
            seen: ``(B, N)`` the items' first and latest interaction times and whether there is one.
        affinity: ``(B, N)`` category affinity.
        sims: ``(B, N, R)`` cosines of each candidate with the user's latest ``R`` items ``recent``
            ``(B, R)`` (0 = no item: a padded slot).
        n_events: ``(B,)`` each user's number of observed events.

    Each value is what the numpy steps computed, bit for bit (tested): the same float64 or float32
    operations in the same order (the similarities' sum in numpy's pairwise order,
    :func:`float32_sum`), rounded to float32 at the end.
    """
    b_n, n = scores.shape
    w1, r = counts.shape[2], recent.shape[1]
    out = np.empty((b_n, n, w1 + 8), dtype=np.float32)
    masked = np.empty(r, dtype=np.float32)
    if n == 0:
        return out
    for b in range(b_n):
        n_valid = 0
        for j in range(r):
            n_valid += recent[b, j] > 0
        best = scores[b, 0]
        for c in range(1, n):
            if scores[b, c] > best or np.isnan(scores[b, c]):
                best = scores[b, c]
        t = as_of[b]
        log_history = np.float32(np.log1p(n_events[b]))
        for c in range(n):
            row = out[b, c]
            row[0] = scores[b, c] - best
            row[1] = np.log1p(np.float64(ranks[b, c]))
            for k in range(w1):
                row[2 + k] = np.log1p(counts[b, c, k])
            for k, at in enumerate((first[b, c], last[b, c])):
                days = np.float64(max(t - at, 0)) / np.float64(DAY_US) if seen[b, c] else NEVER_SEEN_DAYS
                row[2 + w1 + k] = np.log1p(days)
            row[4 + w1] = affinity[b, c]
            # As the numpy steps: the max counts padded slots as -1, the sum counts them as 0, the mean
            # divides by the valid ones.
            top = np.float32(0.0)
            for j in range(r):
                valid = recent[b, j] > 0
                x = sims[b, c, j] if valid else np.float32(-1.0)
                if j == 0 or x > top or np.isnan(x):
                    top = x
                masked[j] = sims[b, c, j] if valid else np.float32(0.0)
            row[5 + w1] = top if n_valid > 0 else np.float32(0.0)
            row[6 + w1] = np.float64(float32_sum(masked)) / max(n_valid, 1)
            row[7 + w1] = log_history
    return out
