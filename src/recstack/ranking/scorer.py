"""The funnel's ranking stage: two-tower candidates re-scored by the DLRM ranker.

Used by the ranker's own validation, the ``evaluate`` stage and the service alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recstack.models.artifact import ModelCard, load_card, load_weights
from recstack.models.inputs import BlockRows, PooledBlock, pooled_block
from recstack.models.ranker import Ranker, RankerConfig
from recstack.ranking.features import (
    ItemActivity,
    RankingContext,
    dense_features,
    latest_items,
    sparse_bags,
)
from recstack.retrieval.two_tower import TwoTowerRetriever


@dataclass
class HistoryBatch:
    """Users' observed events as the funnel reads them at request time (the service's online state).

    Attributes:
        values / lengths: each user's latest ``history_length`` items, oldest first (ragged ``(sum,)`` /
            ``(B,)``): what the query tower and the ranker's history features see.
        n_events: ``(B,)`` every event of each user. last_time: ``(B,)`` latest event time (us), -1 = none.
    """

    values: np.ndarray
    lengths: np.ndarray
    n_events: np.ndarray
    last_time: np.ndarray

    @staticmethod
    def row(items: np.ndarray, times: np.ndarray, length: int) -> tuple[np.ndarray, int, int]:
        """One user's part: (latest ``length`` items, number of events, latest time or -1)."""
        return (
            items[-length:] if length > 0 else items[:0],
            len(items),
            int(times.max()) if len(times) else -1,
        )

    @classmethod
    def stack(cls, rows: Sequence[tuple[np.ndarray, int, int]]) -> HistoryBatch:
        """From :meth:`row` per user."""
        return cls(
            values=np.concatenate([r[0] for r in rows]).astype(np.int64) if rows else np.empty(0, np.int64),
            lengths=np.array([len(r[0]) for r in rows], dtype=np.int64),
            n_events=np.array([r[1] for r in rows], dtype=np.int64),
            last_time=np.array([r[2] for r in rows], dtype=np.int64),
        )


def latest_time(ctx: RankingContext) -> int:
    """The latest interaction time in the data (us): the request time of users without any."""
    # The timeline's sorted distinct times end with the latest one: O(1), where times.max() scanned every
    # interaction on every call (0.3 ms per request at 750k interactions).
    latest = ctx.timeline.unique_times
    return int(latest[-1]) if len(latest) else 0


def request_times(ctx: RankingContext, users: np.ndarray) -> np.ndarray:
    """``(B,)`` offline "request time" of each user: their latest observed interaction (us).

    Users without observed interactions get the latest time in the data (a request made "now").
    """
    t = ctx.sequences.last_time(users)
    return np.where(t >= 0, t, latest_time(ctx))


def last_items(values: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``(B,)`` the last item of each history (0 when empty)."""
    return latest_items(values, lengths, 1)[:, 0]


def pair_inputs(
    ctx: RankingContext,
    users: np.ndarray,
    items: np.ndarray,
    scores: np.ndarray,
    ranks: np.ndarray,
    history_length: int,
    as_of: np.ndarray | None = None,
    context_item: np.ndarray | None = None,
    state: HistoryBatch | None = None,
    activity: ItemActivity | None = None,
    item_features: bool = True,
    user_features: bool = True,
) -> tuple[np.ndarray, dict]:
    """Dense ``(B, N, F)`` and sparse bags (``B * N`` pairs) of users' candidate lists, point-in-time.

    Args:
        as_of: ``(B,)`` request times (us); default :func:`request_times` (offline: each user's latest
            observed interaction).
        context_item: ``(B,)`` the item the user is on right now (0 = none), for surfaces such as
            ``up_next``: it becomes the latest history item, so it is the ranker's ``last_item`` and enters
            the history-similarity features, exactly as if the user had just interacted with it.
        state: the users' histories as the service reads them (online state, already cut to
            ``history_length``); default the snapshot in ``ctx.sequences``. Its latest event times are
            the default request times.
        activity: interactions with the items since the snapshot (online state), for the item features.
        item_features / user_features: False leaves the candidates' / users' own sparse features out
            of the bags (see :func:`~recstack.ranking.features.sparse_bags`).
    """
    if state is None:
        history = ctx.sequences.last(users, history_length)
        times = request_times(ctx, users) if as_of is None else as_of
        n_events = None
    else:
        history, n_events = (state.values, state.lengths), state.n_events
        times = np.where(state.last_time >= 0, state.last_time, latest_time(ctx)) if as_of is None else as_of
    if context_item is not None:
        history = append_items(history, context_item)
    dense = dense_features(ctx, users, items, scores, ranks, times, history, n_events, activity)
    bags = sparse_bags(ctx.tables, users, items, last_items(*history), item_features, user_features)
    return dense, bags


def append_items(history: tuple[np.ndarray, np.ndarray], items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Histories ``(values, lengths)`` with ``items`` ``(B,)`` appended as the newest (0 = append nothing)."""
    values, lengths = history
    add = items > 0
    ends = np.cumsum(lengths)
    # Insert each row's new item right after its last one.
    out = np.insert(values, ends[add], items[add])
    return out.astype(values.dtype if len(values) else np.int64), lengths + add


@dataclass
class FunnelRanker:
    """Retrieval (exact top-N over the catalog) then DLRM re-scoring of the N candidates."""

    retriever: TwoTowerRetriever
    ranker: Ranker
    card: ModelCard
    n_candidates: int
    layers: torch.jit.ScriptModule | None = None  # the ranker's dense layers, frozen (Ranker.frozen_layers)
    # The items' and known users' own sparse features, pooled once for the whole table (None: per request)
    item_block: PooledBlock | None = None
    user_block: PooledBlock | None = None

    @classmethod
    def load(
        cls, ranker_dir: str | Path, retriever: TwoTowerRetriever, n_candidates: int | None = None
    ) -> FunnelRanker:
        """Load the ranker artifact; ``n_candidates`` defaults to the list length it was trained on."""
        card = load_card(ranker_dir)
        if card.kind != "dlrm":
            raise ValueError(f"{ranker_dir} holds a {card.kind!r} model, not a dlrm ranker")
        model = Ranker(RankerConfig(**card.config))
        model.load_state_dict(load_weights(ranker_dir))
        model.eval()
        n = n_candidates or int(card.training.get("n_candidates", 200))
        ebc = model.dlrm.sparse_arch.embedding_bag_collection
        items, users = (retriever.tables.items, retriever.tables.users) if retriever else (None, None)
        return cls(
            retriever,
            model,
            card,
            n,
            layers=model.frozen_layers(),
            item_block=pooled_block(ebc, items.bags_for, items.n_items) if items else None,
            user_block=pooled_block(ebc, users.bags_for, users.n_users) if users else None,
        )

    # inference_mode, not no_grad: no autograd bookkeeping at all, ~3 % of a request's model stages
    @torch.inference_mode()
    def score_pairs(self, dense: np.ndarray, bags: dict, precomputed: Sequence[BlockRows] = ()) -> np.ndarray:
        """Ranker logits of flattened pairs: dense ``(M, F)`` -> ``(M,)``; ``precomputed``: pooled features
        of the pairs that ``bags`` leaves out (:meth:`PooledBlock.take`)."""
        if self.ranker.training:  # eval() walks every submodule: ~0.3 ms, too much per request
            self.ranker.eval()
        return self.ranker.score(torch.from_numpy(dense), bags, self.layers, precomputed).numpy()

    def score_candidates(
        self,
        ctx: RankingContext,
        users: np.ndarray,
        items: np.ndarray,
        sims: np.ndarray,
        as_of: np.ndarray | None = None,
        context_item: np.ndarray | None = None,
        state: HistoryBatch | None = None,
        activity: ItemActivity | None = None,
    ) -> np.ndarray:
        """Ranker logits ``(B, N)`` of each user's retrieved candidates ``items`` ``(B, N)`` (-1 = empty slot,
        scored -inf), given in retrieval order with their similarities ``sims`` ``(B, N)``.

        The offline funnel (:meth:`rank`), the batch stage and the service all score through here.
        """
        return self.score_with_features(ctx, users, items, sims, as_of, context_item, state, activity)[0]

    def score_with_features(
        self,
        ctx: RankingContext,
        users: np.ndarray,
        items: np.ndarray,
        sims: np.ndarray,
        as_of: np.ndarray | None = None,
        context_item: np.ndarray | None = None,
        state: HistoryBatch | None = None,
        activity: ItemActivity | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score_candidates`, and the dense features ``(B, N, F)`` the ranker saw (raw values, in
        ``DENSE_FEATURES`` order): what monitoring compares with training."""
        empty = items < 0
        items = np.maximum(items, 0)  # empty slots are scored as the unknown item, then dropped
        # ...with the list's lowest real score, so the score-gap feature of real items is unchanged.
        lowest = np.min(np.where(empty, np.inf, sims), axis=1, keepdims=True)
        sims = np.where(empty, np.where(np.isfinite(lowest), lowest, 0.0), sims)
        ranks = np.broadcast_to(np.arange(1, items.shape[1] + 1), items.shape)
        length = self.retriever.config.history_length
        item_block, user_block = self.item_block, self.user_block
        dense, bags = pair_inputs(
            ctx,
            users,
            items,
            sims,
            ranks,
            length,
            as_of,
            context_item,
            state,
            activity,
            item_features=item_block is None,
            user_features=user_block is None,
        )
        precomputed = []
        if user_block is not None:
            precomputed.append(user_block.take(users, repeat=items.shape[1]))
        if item_block is not None:
            precomputed.append(item_block.take(items.ravel()))
        logits = self.score_pairs(dense.reshape(-1, dense.shape[-1]), bags, precomputed).reshape(items.shape)
        logits[empty] = -np.inf
        return logits, dense

    def rank(
        self, ctx: RankingContext, users: np.ndarray, exclude: sp.csr_matrix, k: int, batch_size: int = 256
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items per user after re-ranking the retriever's top ``n_candidates``.

        Returns:
            items ``(B, k)`` best first (-1 = empty slot), and ranker logits ``(B, k)``.
        """
        if k > self.n_candidates:
            raise ValueError(f"k={k} is larger than the candidate list ({self.n_candidates})")
        out_items, out_scores = [], []
        for s in range(0, len(users), batch_size):
            batch = users[s : s + batch_size]
            items, sims = self.retriever.candidates(ctx.sequences, batch, exclude, self.n_candidates)
            logits = self.score_candidates(ctx, batch, items, sims)
            order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
            out_items.append(np.take_along_axis(items, order, axis=1))
            out_scores.append(np.take_along_axis(logits, order, axis=1))
        return np.concatenate(out_items), np.concatenate(out_scores)
