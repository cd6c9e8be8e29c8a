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
    """Index one past the last of ``times[lo:hi]`` (sorted) that is <= ``t``: ``searchsorted(side="right")``."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if times[mid] <= t:
            lo = mid + 1
        else:
            hi = mid
    return lo


@compiled(
    types.Tuple((types.Array(types.int64, 2, "C"), I64, I64, types.Array(types.boolean, 1, "C")))(
        IN_I64, IN_I64, IN_I64, IN_I64, IN_I64
    )
)
def timeline_stats(
    starts: np.ndarray, times: np.ndarray, items: np.ndarray, as_of: np.ndarray, windows_us: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Point-in-time activity of ``items`` ``(M,)`` at ``as_of`` ``(M,)`` (us), from a timeline whose item
    ``i`` has its events at ``times[starts[i]:starts[i + 1]]``, sorted by time.

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
        t = as_of[j]
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
