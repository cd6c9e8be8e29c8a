"""Training examples served from disk: the interaction sequences as memory-mapped arrays.

A two-tower example is an observed interaction whose query sees the user's items *before* it, so a batch
needs random access to each user's earlier rows; a sequential stream of rows cannot give that without
holding every user's history. The sequences are therefore laid out once on disk, grouped by user and in
time order (the layout of :class:`recstack.models.inputs.Sequences`), and opened with ``np.load(...,
mmap_mode="r")``: a batch reads the pages it touches and the operating system keeps or drops them, so the
process holds neither the log nor the arrays, whatever their length.

The layout is built out of core: a streaming count of rows per user gives the offsets, then one user range
of about ``chunk_rows`` rows at a time is read, sorted and written into its place.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from recstack.data.schema import TIMESTAMP
from recstack.data.split import SPLIT
from recstack.features.transform import ITEM_IDX, USER_IDX
from recstack.models.inputs import Sequences

DEFAULT_CHUNK_ROWS = 4_000_000
_FILES = ("items.npy", "times.npy", "offsets.npy")
_META = "sequences.json"


def _rows(interactions: str | Path, splits: tuple[str, ...]) -> pl.LazyFrame:
    # What Sequences.from_interactions keeps: known users and items of the given splits.
    return (
        pl.scan_parquet(interactions)
        .filter(pl.col(SPLIT).is_in(splits) & (pl.col(USER_IDX) > 0) & (pl.col(ITEM_IDX) > 0))
        .select(USER_IDX, ITEM_IDX, pl.col(TIMESTAMP).dt.epoch("us").alias(TIMESTAMP))
    )


def build_sequences(
    interactions: str | Path,
    splits: tuple[str, ...],
    n_users: int,
    out_dir: str | Path,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Path:
    """Write the sequences of ``splits`` to ``out_dir`` (``items.npy``, ``times.npy``, ``offsets.npy``).

    The arrays equal :meth:`Sequences.from_interactions` on the same rows: grouped by user index, then
    by time, ties by item index. Peak memory is one chunk of about ``chunk_rows`` rows.

    Args:
        interactions: the features stage's ``interactions.parquet``.
        splits: which splits are examples (e.g. ``("train",)``).
        n_users: the user vocabulary size (offsets cover users ``0..n_users`` and one past the end).
        out_dir: created if needed; an existing layout of the same input is reused.
        chunk_rows: rows sorted in memory at once.
    """
    out = Path(out_dir)
    meta = {
        "interactions": str(Path(interactions).resolve()),
        "mtime_ns": Path(interactions).stat().st_mtime_ns,
        "splits": list(splits),
        "n_users": n_users,
    }
    if (out / _META).exists() and json.loads((out / _META).read_text()) == meta:
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / _META).unlink(missing_ok=True)  # written last: a half-built layout is never reused
    rows = _rows(interactions, splits)
    per_user = rows.group_by(USER_IDX).len().collect(engine="streaming")
    counts = np.zeros(n_users + 1, dtype=np.int64)
    counts[per_user[USER_IDX].to_numpy()] = per_user["len"].to_numpy()
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(offsets[-1])
    np.save(out / "offsets.npy", offsets)
    items = np.lib.format.open_memmap(out / "items.npy", mode="w+", dtype=np.int64, shape=(n,))
    times = np.lib.format.open_memmap(out / "times.npy", mode="w+", dtype=np.int64, shape=(n,))
    lo = 0
    while lo <= n_users:
        # The largest user range [lo, hi) of at most chunk_rows rows (at least one user).
        hi = int(np.searchsorted(offsets, offsets[lo] + chunk_rows, side="right")) - 1
        hi = min(max(hi, lo + 1), n_users + 1)
        chunk = (
            rows.filter(pl.col(USER_IDX).is_between(lo, hi - 1))
            .sort([USER_IDX, TIMESTAMP, ITEM_IDX])
            .collect(engine="streaming")
        )
        a, b = offsets[lo], offsets[hi]
        if chunk.height != b - a:
            raise RuntimeError(f"{interactions} changed while the sequences were built (users {lo}..{hi})")
        items[a:b] = chunk[ITEM_IDX].to_numpy()
        times[a:b] = chunk[TIMESTAMP].to_numpy()
        lo = hi
        del chunk
    items.flush()
    times.flush()
    del items, times
    (out / _META).write_text(json.dumps(meta, indent=2) + "\n")
    return out


def open_sequences(directory: str | Path) -> Sequences:
    """The sequences written by :func:`build_sequences`, memory-mapped read-only."""
    d = Path(directory)
    if not (d / _META).exists():
        raise FileNotFoundError(f"{d} holds no complete sequence layout (no {_META}): build it first")
    items, times, offsets = (np.load(d / f, mmap_mode="r") for f in _FILES)
    # Offsets are small (8 bytes per user) and searched on every batch: kept in memory.
    return Sequences(items=items, times=times, offsets=np.asarray(offsets))
