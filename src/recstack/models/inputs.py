"""Model inputs: featurized users / items / interaction sequences turned into TorchRec KeyedJaggedTensors.

One implementation for training, offline evaluation and serving. Every sparse feature is a bag of indices
into an embedding table (index 0 = unknown) with a per-value weight: single-valued features weigh 1, bags
(categories, title tokens) weigh 1 / length (mean pooling), the history bag weighs recent items more.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedJaggedTensor

from recstack.data.io import ITEMS_FILE, USERS_FILE, read_columns
from recstack.data.schema import TIMESTAMP
from recstack.features.spec import FeatureSpec
from recstack.features.transform import CATEGORY_IDX, ITEM_IDX, TITLE_TOKEN_IDX, USER_IDX

HISTORY_FEATURE = "history"
RECENCY_ROWS_CACHED = 64  # batches up to this many rows take their weights from the per-length cache
RECENCY_CACHED_LENGTH = 4096  # longest history whose weights are cached
ITEM_ID_FEATURE = "item_id"
USER_ID_FEATURE = "user_id"
# Item columns that change with time (popularity, age): kept out of the candidate tower so an item's
# embedding means the same thing at training and serving time; the ranker sees them point-in-time instead.
TIME_VARYING_ITEM_COLUMNS = ("pop_", "item_age_days")
# User activity changes with every interaction; the history bag already carries it.
TIME_VARYING_USER_COLUMNS = ("user_n_interactions", "user_days_since_last")


def _time_varying(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name.startswith(p) for p in prefixes)


@dataclass
class Ragged:
    """A list of integer arrays stored flat: ``values[offsets[r]:offsets[r + 1]]`` is row ``r``."""

    values: np.ndarray  # (nnz,) int64
    offsets: np.ndarray  # (n_rows + 1,) int64

    @classmethod
    def from_series(cls, column: pl.Series) -> Ragged:
        lengths = column.list.len().fill_null(0).to_numpy().astype(np.int64)
        values = column.explode().drop_nulls().to_numpy().astype(np.int64)
        return cls(values, np.concatenate([[0], np.cumsum(lengths)]))

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values and lengths of ``rows``: ``(sum lengths,)``, ``(len(rows),)``."""
        starts, ends = self.offsets[rows], self.offsets[rows + 1]
        lengths = ends - starts
        return gather_ranges(self.values, starts, lengths), lengths


def gather_ranges(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenate ``values[s:s + n]`` for each (s, n) without a Python loop."""
    return values[range_positions(starts, lengths)]


def range_positions(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions ``s, s + 1, ..., s + n - 1`` of each (s, n), concatenated: ``(sum lengths,)``."""
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    row_start = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return row_start + np.arange(total)


@dataclass
class Bag:
    """One sparse feature of a batch: ``values`` (nnz,), ``lengths`` (B,), ``weights`` (nnz,).

    ``repeat > 1``: each row stands for that many consecutive rows of the batch (a user's feature, the
    same for each of its candidates), looked up once and repeated; :meth:`expanded` writes them out.
    ``single``: one index per row, weight 1 (an embedding row, no pooling).
    """

    values: np.ndarray
    lengths: np.ndarray
    weights: np.ndarray
    repeat: int = 1
    single: bool = False

    def expanded(self) -> Bag:
        """The same bag with ``repeat == 1`` (what a KeyedJaggedTensor holds)."""
        if self.repeat == 1:
            return self
        rows = np.repeat(np.arange(len(self.lengths)), self.repeat)
        starts = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        at = range_positions(starts[rows], self.lengths[rows])
        return Bag(self.values[at], self.lengths[rows], self.weights[at], 1, self.single)


def single(indices: np.ndarray, repeat: int = 1) -> Bag:
    """A single-valued feature (one index per row, weight 1); ``repeat``: see :class:`Bag`."""
    n = len(indices)
    return Bag(
        indices.astype(np.int64), np.ones(n, dtype=np.int64), np.ones(n, dtype=np.float32), repeat, True
    )


def mean_bag(values: np.ndarray, lengths: np.ndarray) -> Bag:
    """A multi-valued feature pooled as a mean (each value weighs 1 / length of its row)."""
    w = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
    return Bag(values.astype(np.int64), lengths.astype(np.int64), w)


def recency_bag(values: np.ndarray, lengths: np.ndarray, decay: float) -> Bag:
    """A sequence (oldest first) pooled with weights ``decay ** age``, normalized to sum 1 per row.

    ``decay = 1`` is a plain mean; smaller values let the last few items dominate, which matters because
    the next interaction resembles the latest ones more than the oldest ones.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) <= RECENCY_ROWS_CACHED and (not len(lengths) or lengths.max() <= RECENCY_CACHED_LENGTH):
        # A request's few rows: each row's weights depend only on its length (every step below is per
        # row), so they come from a cache instead of ~10 numpy passes (~80 us a request).
        rows = [_recency_row(float(decay), int(n)) for n in lengths]
        w = np.concatenate(rows) if rows else np.empty(0, np.float32)
    else:
        w = _recency_weights(lengths, decay)
    return Bag(values.astype(np.int64), lengths, w)


@functools.lru_cache(maxsize=1024)
def _recency_row(decay: float, length: int) -> np.ndarray:
    """The weights of one row of ``length`` items (read-only: shared by every caller)."""
    w = _recency_weights(np.array([length], dtype=np.int64), decay)
    w.flags.writeable = False
    return w


def _recency_weights(lengths: np.ndarray, decay: float) -> np.ndarray:
    """``(sum(lengths),)`` float32 weights of :func:`recency_bag`, row after row."""
    ends = np.cumsum(lengths)
    pos_from_end = np.repeat(ends, lengths) - 1 - np.arange(int(lengths.sum()))
    w = np.power(decay, pos_from_end).astype(np.float64)
    sums = np.add.reduceat(w, np.concatenate([[0], ends[:-1]])[lengths > 0]) if w.size else w
    norm = np.zeros(len(lengths))
    norm[lengths > 0] = sums
    w = w / np.repeat(np.where(norm > 0, norm, 1.0), lengths)
    return w.astype(np.float32)


def to_kjt(bags: dict[str, Bag]) -> KeyedJaggedTensor:
    """Assemble named bags (all with the same batch size) into one weighted KeyedJaggedTensor."""
    keys = list(bags)
    bags = {k: bags[k].expanded() for k in keys}
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        values=torch.from_numpy(np.concatenate([bags[k].values for k in keys])),
        lengths=torch.from_numpy(np.concatenate([bags[k].lengths for k in keys])),
        weights=torch.from_numpy(np.concatenate([bags[k].weights for k in keys])),
    )


def pooled_embeddings(
    ebc: EmbeddingBagCollection, bags: dict[str, Bag], precomputed: Sequence[BlockRows] = ()
) -> torch.Tensor:
    """``(B, n_features * D)``: what ``ebc(to_kjt(bags)).values()`` returns, without the KJT.

    ``precomputed``: features already pooled (:meth:`PooledBlock.take`), whose bags are not needed.

    Inference only (the service calls it per request). The EBC's own tables go through the same
    ``embedding_bag`` op as its forward, so the values are identical; skipped is TorchRec's per-call Python
    (building the KJT, splitting it per key, lengths and offsets caches), which cost more than the lookups
    themselves on a request's few hundred pairs. Single-valued features are plain row lookups (a sum of
    one row with weight 1 is that row, bit for bit), and a repeated bag (:class:`Bag`) is looked up once
    per distinct row: a request's 200 pairs share one user. Every part is copied once, into its columns
    of the output: gathering, repeating and concatenating them as tensors cost ~0.2 ms a request.
    """
    if torch.is_grad_enabled() and any(p.requires_grad for p in ebc.parameters()):
        # The parts are copied through numpy, so gradients would silently stop here.
        raise RuntimeError("pooled_embeddings is inference only: call it under torch.no_grad()")
    layout = _layout(ebc)
    starts = {rows.names[0]: rows for rows in precomputed}
    given = {n for rows in precomputed for n in rows.names}
    # Rows of the output: any part tells (a bag's rows times its repeat, or a block's).
    if precomputed:
        n_rows = len(precomputed[0].index) * precomputed[0].repeat
    else:
        bag = next(iter(bags.values()))
        n_rows = len(bag.lengths) * bag.repeat
    out = np.empty((n_rows, sum(dim for _, _, dim in layout)), dtype=np.float32)
    col = 0
    for name, table, dim in layout:
        if name in given:
            if name in starts:
                taken = starts[name]
                width = taken.block.rows.shape[1]
                _write(out, col, taken.block.array[taken.index], taken.repeat)
                col += width
            continue
        bag = bags[name]
        if bag.single:
            pooled = F.embedding(torch.from_numpy(bag.values), table.weight)
        else:
            offsets = np.zeros(len(bag.lengths) + 1, dtype=np.int64)
            np.cumsum(bag.lengths, out=offsets[1:])
            pooled = F.embedding_bag(
                torch.from_numpy(bag.values),
                table.weight,
                torch.from_numpy(offsets),
                mode=table.mode,
                per_sample_weights=torch.from_numpy(bag.weights) if ebc.is_weighted() else None,
                include_last_offset=True,
            )
        _write(out, col, pooled.detach().numpy(), bag.repeat)
        col += dim
    return torch.from_numpy(out)


def _write(out: np.ndarray, col: int, rows: np.ndarray, repeat: int) -> None:
    """Copy ``rows`` ``(n_rows / repeat, w)`` into ``out[:, col:col + w]``, each row ``repeat`` times."""
    if len(rows) * repeat != len(out):
        raise ValueError(f"a feature has {len(rows)} rows x {repeat}, the batch has {len(out)}")
    if repeat == 1:
        out[:, col : col + rows.shape[1]] = rows
    else:
        out.reshape(len(rows), repeat, out.shape[1])[:, :, col : col + rows.shape[1]] = rows[:, None, :]


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _layout(ebc: EmbeddingBagCollection) -> list[tuple[str, nn.Module, int]]:
    """``(feature, its table, width)`` in the EBC's output order; kept per EBC, whose tables never change
    (TorchRec rebuilt the config list on every call: ~15 us a request)."""
    layout = _LAYOUTS.get(ebc)
    if layout is None:
        layout = [
            (name, table, config.embedding_dim)
            for config, table in zip(ebc.embedding_bag_configs(), ebc.embedding_bags.values(), strict=True)
            for name in config.feature_names
        ]
        _LAYOUTS[ebc] = layout
    return layout


# Largest block of static features pooled up front, per table and process (bytes): 1M items of the ranker's
# 5 item features x 16 floats take 320 MB; past it those features are looked up per request instead.
POOLED_BLOCK_MAX_BYTES = 512 * 2**20
POOLED_BLOCK_CHUNK = 65_536  # rows pooled per lookup while building a block


@dataclass(frozen=True)
class PooledBlock:
    """Static sparse features pooled once for every row of their table: ``rows`` ``(n_rows, width)``, the
    features ``names`` side by side, consecutive in their EBC's feature order.

    An item's ids, attributes, categories and title tokens, or a known user's id and attributes, never
    change: a request gathers their rows here (:meth:`take`) instead of building their bags and looking
    up each feature (:func:`pooled_embeddings`). Each row is the same ``embedding`` / ``embedding_bag``
    op on the same bag as a request's lookup, so the same values bit for bit (tested).
    """

    names: tuple[str, ...]
    rows: torch.Tensor

    @property
    def array(self) -> np.ndarray:
        """``rows`` as numpy (the same memory)."""
        return self.rows.numpy()

    def take(self, index: np.ndarray, repeat: int = 1) -> BlockRows:
        """The rows of ``index``, each standing for ``repeat`` rows of the batch (a user's row for each of
        its candidates): what :func:`pooled_embeddings` takes as precomputed, and copies into place."""
        return BlockRows(self.names, self, np.asarray(index, dtype=np.int64), repeat)


@dataclass(frozen=True)
class BlockRows:
    """Rows ``index`` of ``block``, each repeated ``repeat`` times (:meth:`PooledBlock.take`); gathered
    where :func:`pooled_embeddings` writes them."""

    names: tuple[str, ...]
    block: PooledBlock
    index: np.ndarray
    repeat: int = 1


@torch.inference_mode()
def pooled_block(
    ebc: EmbeddingBagCollection, bags_of: Callable[[np.ndarray], dict[str, Bag]], n_rows: int
) -> PooledBlock | None:
    """The features ``bags_of(rows)`` gives, pooled for rows ``0 .. n_rows - 1`` of their table; None when
    they are not consecutive in the EBC's order or the block would pass ``POOLED_BLOCK_MAX_BYTES``."""
    configs = ebc.embedding_bag_configs()
    order = [n for c in configs for n in c.feature_names]
    dims = {n: c.embedding_dim for c in configs for n in c.feature_names}
    names = [n for n in order if n in bags_of(np.zeros(1, np.int64))]
    first = order.index(names[0]) if names else 0
    if not names or order[first : first + len(names)] != names:
        return None
    width = sum(dims[n] for n in names)
    if n_rows * width * 4 > POOLED_BLOCK_MAX_BYTES:
        return None
    col = sum(dims[n] for n in order[:first])
    parts = []
    for start in range(0, n_rows, POOLED_BLOCK_CHUNK):
        chunk = np.arange(start, min(start + POOLED_BLOCK_CHUNK, n_rows), dtype=np.int64)
        bags = {n: single(np.zeros(len(chunk), np.int64)) for n in order}  # the others: looked up, dropped
        bags.update(bags_of(chunk))
        parts.append(pooled_embeddings(ebc, bags)[:, col : col + width].clone())
    return PooledBlock(tuple(names), torch.cat(parts))


def _attribute_names(
    categorical: dict, numeric: dict, time_varying: tuple[str, ...]
) -> list[tuple[str, str]]:
    """(table column, feature name) of the encoded categorical attributes and static numeric buckets."""
    columns = [(f"{col}_idx", vocab.name) for col, vocab in categorical.items()]
    columns += [
        (f"{col}_bucket", f"{enc.name}_bucket")
        for col, enc in numeric.items()
        if not _time_varying(col, time_varying)
    ]
    return columns


def _attribute_columns(
    frame: pl.DataFrame,
    categorical: dict,
    numeric: dict,
    cardinalities: dict[str, int],
    time_varying: tuple[str, ...],
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Index arrays (and table sizes) of the encoded categorical attributes and static numeric buckets."""
    single: dict[str, np.ndarray] = {}
    sizes: dict[str, int] = {}
    for column, name in _attribute_names(categorical, numeric, time_varying):
        values = frame[column] if column in frame.columns else pl.Series(column, [0] * frame.height)
        single[name] = values.fill_null(0).to_numpy().astype(np.int64)
        sizes[name] = cardinalities[name]
    return single, sizes


@dataclass
class ItemFeatures:
    """Content features of every catalog item, indexed by ``item_idx`` (row 0 = unknown item).

    Attributes:
        single: feature name -> ``(n_items + 1,)`` index array (item id, categorical attributes,
            buckets of static numeric attributes such as year).
        bags: feature name -> ragged index lists (categories, title tokens).
        categories: ragged category indices (also used for diversity and category affinity).
        cardinalities: feature name -> embedding-table size.
    """

    single: dict[str, np.ndarray]
    bags: dict[str, Ragged]
    cardinalities: dict[str, int]

    @classmethod
    def from_table(cls, items: pl.DataFrame, spec: FeatureSpec) -> ItemFeatures:
        """Build from ``items.parquet`` (one row per item, with ``item_idx``) and the feature spec."""
        n = spec.item_id.size + 1
        frame = pl.DataFrame({ITEM_IDX: np.arange(n, dtype=np.int32)}).join(
            items.unique(ITEM_IDX, keep="first"), on=ITEM_IDX, how="left"
        )
        card = spec.cardinalities()
        attrs, attr_sizes = _attribute_columns(
            frame, spec.item_categorical, spec.item_numeric, card, TIME_VARYING_ITEM_COLUMNS
        )
        single = {ITEM_ID_FEATURE: np.arange(n, dtype=np.int64), **attrs}
        sizes = {ITEM_ID_FEATURE: n, **attr_sizes}
        bags = {
            spec.categories.name: Ragged.from_series(frame[CATEGORY_IDX]),
            spec.title_tokens.name: Ragged.from_series(frame[TITLE_TOKEN_IDX]),
        }
        sizes[spec.categories.name] = card[spec.categories.name]
        sizes[spec.title_tokens.name] = card[spec.title_tokens.name]
        return cls(single=single, bags=bags, cardinalities=sizes)

    @staticmethod
    def columns(spec: FeatureSpec) -> list[str]:
        """The columns of ``items.parquet`` that :meth:`from_table` reads (:meth:`FeatureTables.load` reads
        only these: the table also holds titles and raw attributes)."""
        attrs = _attribute_names(spec.item_categorical, spec.item_numeric, TIME_VARYING_ITEM_COLUMNS)
        return [ITEM_IDX, *(c for c, _ in attrs), CATEGORY_IDX, TITLE_TOKEN_IDX]

    @property
    def n_items(self) -> int:
        """Catalog size including the unknown row 0."""
        return len(self.single[ITEM_ID_FEATURE])

    def bags_for(self, items: np.ndarray) -> dict[str, Bag]:
        """Candidate-tower features of ``items`` ``(B,)``."""
        out = {name: single(arr[items]) for name, arr in self.single.items()}
        for name, ragged in self.bags.items():
            values, lengths = ragged.take(items)
            out[name] = mean_bag(values, lengths)
        return out

    def kjt(self, items: np.ndarray) -> KeyedJaggedTensor:
        """``items`` ``(B,)`` -> weighted KJT with one key per candidate feature."""
        return to_kjt(self.bags_for(items))

    def category_matrix(self, name: str, n_categories: int) -> sp.csr_matrix:
        """Binary multi-hot ``(n_items + 1, n_categories + 1)`` CSR of the bag ``name`` (column 0 = unknown)."""
        ragged = self.bags[name]
        rows = np.repeat(np.arange(self.n_items), np.diff(ragged.offsets))
        m = sp.csr_matrix(
            (np.ones(len(rows), np.float32), (rows, ragged.values)), shape=(self.n_items, n_categories + 1)
        )
        m.data[:] = 1.0  # a category listed twice counts once
        return m


@dataclass
class UserFeatures:
    """Static attributes of every known user, indexed by ``user_idx`` (row 0 = unknown user)."""

    single: dict[str, np.ndarray]
    cardinalities: dict[str, int]

    @classmethod
    def from_table(cls, users: pl.DataFrame, spec: FeatureSpec) -> UserFeatures:
        """Build from ``users.parquet`` and the spec. Users sharing the unknown index keep row 0 empty."""
        n = spec.user_id.size + 1
        known = users.filter(pl.col(USER_IDX) > 0).unique(USER_IDX, keep="first")
        frame = pl.DataFrame({USER_IDX: np.arange(n, dtype=np.int32)}).join(known, on=USER_IDX, how="left")
        attrs, attr_sizes = _attribute_columns(
            frame, spec.user_categorical, spec.user_numeric, spec.cardinalities(), TIME_VARYING_USER_COLUMNS
        )
        single = {USER_ID_FEATURE: np.arange(n, dtype=np.int64), **attrs}
        sizes = {USER_ID_FEATURE: n, **attr_sizes}
        return cls(single=single, cardinalities=sizes)

    @property
    def n_users(self) -> int:
        """Known users including the unknown row 0."""
        return len(self.single[USER_ID_FEATURE])

    def bags_for(self, users: np.ndarray, repeat: int = 1) -> dict[str, Bag]:
        """The id and attributes of user indices ``users`` ``(B,)`` (``repeat``: see :class:`Bag`)."""
        return {name: single(arr[users], repeat=repeat) for name, arr in self.single.items()}

    @staticmethod
    def columns(spec: FeatureSpec) -> list[str]:
        """The columns of ``users.parquet`` that :meth:`from_table` reads (:meth:`FeatureTables.load` reads
        only these: the table also holds every user's history, gigabytes at millions of users)."""
        attrs = _attribute_names(spec.user_categorical, spec.user_numeric, TIME_VARYING_USER_COLUMNS)
        return [USER_IDX, *(c for c, _ in attrs)]

    def attribute_rows(self, attributes: pl.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
        """Encoded attributes of users given as raw rows (e.g. an unknown user online), same keys."""
        from recstack.features.transform import encode_users

        enc = encode_users(spec, attributes.lazy()).collect()
        attrs, _ = _attribute_columns(
            enc, spec.user_categorical, spec.user_numeric, spec.cardinalities(), TIME_VARYING_USER_COLUMNS
        )
        return {USER_ID_FEATURE: enc[USER_IDX].to_numpy().astype(np.int64), **attrs}


@dataclass
class Sequences:
    """Each user's observed interactions in time order, flat: the source of histories and examples.

    Attributes:
        items: ``(N,)`` item indices, grouped by user, oldest first (ties by item index).
        times: ``(N,)`` int64 microseconds since the epoch, aligned with ``items``.
        offsets: ``(n_users + 2,)``: user ``u``'s rows are ``offsets[u]:offsets[u + 1]``.
    """

    items: np.ndarray
    times: np.ndarray
    offsets: np.ndarray

    @classmethod
    def from_interactions(cls, interactions: pl.DataFrame, n_users: int) -> Sequences:
        """``interactions`` with ``user_idx, item_idx, timestamp`` (unknown users / items dropped)."""
        rows = interactions.filter((pl.col(USER_IDX) > 0) & (pl.col(ITEM_IDX) > 0)).sort(
            [USER_IDX, TIMESTAMP, ITEM_IDX]
        )
        users = rows[USER_IDX].to_numpy()
        counts = np.bincount(users, minlength=n_users + 1)
        return cls(
            items=rows[ITEM_IDX].to_numpy().astype(np.int64),
            times=rows[TIMESTAMP].dt.epoch("us").to_numpy().astype(np.int64),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        )

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 2

    def lengths(self) -> np.ndarray:
        """``(n_users + 1,)`` interactions per user."""
        return np.diff(self.offsets)

    def example_users(self) -> np.ndarray:
        """``(N,)`` the user of each row."""
        return np.repeat(np.arange(len(self.offsets) - 1), self.lengths())

    def users_of(self, rows: np.ndarray) -> np.ndarray:
        """``(B,)`` the user of each of ``rows`` (a search in the offsets: no per-row array is held)."""
        return np.searchsorted(self.offsets, rows, side="right") - 1

    def matrix(self, n_items: int) -> sp.csr_matrix:
        """Binary ``(n_users + 1, n_items)`` CSR of the observed (user, item) pairs."""
        m = sp.csr_matrix(
            (np.ones(len(self.items), np.float32), (self.example_users(), self.items)),
            shape=(len(self.offsets) - 1, n_items),
        )
        m.data[:] = 1.0  # repeated pairs count once
        return m

    def prefix(self, rows: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """History strictly before each row ``rows`` ``(B,)``: the user's previous ``max_length`` items.

        Returns:
            values ``(nnz,)`` and lengths ``(B,)``, oldest first within a row.
        """
        user_start = self.offsets[self.users_of(rows)]
        starts = np.maximum(user_start, rows - max_length)
        return gather_ranges(self.items, starts, rows - starts), rows - starts

    def last(self, users: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """Each user's latest ``max_length`` items (the query history after all observed data)."""
        ends = self.offsets[users + 1]
        starts = np.maximum(self.offsets[users], ends - max_length)
        return gather_ranges(self.items, starts, ends - starts), ends - starts

    def last_time(self, users: np.ndarray) -> np.ndarray:
        """``(B,)`` each user's latest observed timestamp (us); -1 for users without interactions."""
        ends = self.offsets[users + 1]
        has = ends > self.offsets[users]
        return np.where(has, self.times[np.maximum(ends - 1, 0)], -1)


def query_bags(
    users: UserFeatures | dict[str, np.ndarray],
    user_idx: np.ndarray,
    history: tuple[np.ndarray, np.ndarray],
    decay: float,
) -> dict[str, Bag]:
    """Query-tower features: user id and attributes plus the recency-weighted history bag.

    Args:
        users: the user table, or already-encoded attribute arrays aligned with ``user_idx``.
        user_idx: ``(B,)`` user indices (0 = unknown).
        history: ``(values (nnz,), lengths (B,))`` item indices, oldest first.
        decay: recency decay of the history weights.
    """
    if isinstance(users, UserFeatures):
        out = users.bags_for(user_idx)
    else:
        out = {name: single(arr) for name, arr in users.items()}
    out[HISTORY_FEATURE] = recency_bag(history[0], history[1], decay)
    return out


@dataclass
class FeatureTables:
    """Everything a model needs from the ``features`` stage, loaded once."""

    spec: FeatureSpec
    items: ItemFeatures
    users: UserFeatures

    @classmethod
    def load(cls, features_dir: str | Path) -> FeatureTables:
        d = Path(features_dir)
        spec = FeatureSpec.load(d)
        return cls(
            spec=spec,
            items=ItemFeatures.from_table(read_columns(d / ITEMS_FILE, ItemFeatures.columns(spec)), spec),
            users=UserFeatures.from_table(read_columns(d / USERS_FILE, UserFeatures.columns(spec)), spec),
        )

    def category_matrix(self) -> sp.csr_matrix:
        """Binary ``(n_items + 1, n_categories + 1)`` item-category CSR (column 0 = unknown category)."""
        return self.items.category_matrix(self.spec.categories.name, self.spec.categories.size)

    def query_cardinalities(self) -> dict[str, int]:
        """Embedding-table sizes of the query features (the history bag indexes items)."""
        return {**self.users.cardinalities, HISTORY_FEATURE: self.items.n_items}
