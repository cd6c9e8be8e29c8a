"""A trained two-tower model ready to retrieve: loaded from its artifact, item embeddings precomputed.

Offline evaluation, the ranker's candidate generation, the index build and the service all use this class,
so candidates are computed one way everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from recstack.evaluation.topk import topk
from recstack.models.artifact import ModelCard, load_card, load_weights
from recstack.models.inputs import (
    HISTORY_FEATURE,
    FeatureTables,
    PooledBlock,
    Sequences,
    pooled_block,
    query_bags,
    recency_bag,
)
from recstack.models.two_tower import TwoTower, TwoTowerConfig, item_embeddings


@dataclass
class TwoTowerRetriever:
    """Query embedding + inner-product scoring against every catalog item.

    Attributes:
        model: the two-tower model (eval mode).
        card: its model card (similarity, version, training data fingerprint).
        tables: item and user feature tables.
        item_vectors: ``(n_items + 1, D)`` float32 candidate embeddings; row 0 (unknown item) is never
            recommended.
    """

    model: TwoTower
    card: ModelCard
    tables: FeatureTables
    item_vectors: np.ndarray
    user_block: PooledBlock | None = None  # known users' id and attributes pooled once (None: per request)
    head: torch.jit.ScriptModule | None = None  # the query tower's MLP, frozen (None: the modules)

    @classmethod
    def load(cls, artifact_dir: str | Path, tables: FeatureTables) -> TwoTowerRetriever:
        """Rebuild the model of ``artifact_dir`` and embed the catalog of ``tables``."""
        card = load_card(artifact_dir)
        if card.kind != "two_tower":
            raise ValueError(f"{artifact_dir} holds a {card.kind!r} model, not a two_tower retrieval model")
        model = TwoTower(TwoTowerConfig(**card.config))
        model.load_state_dict(load_weights(artifact_dir))
        model.eval()
        vectors = item_embeddings(model, tables.items).numpy().astype(np.float32)
        users = pooled_block(model.query_tower.ebc, tables.users.bags_for, tables.users.n_users)
        return cls(
            model=model,
            card=card,
            tables=tables,
            item_vectors=vectors,
            user_block=users,
            head=model.frozen_query_head(),
        )

    @property
    def config(self) -> TwoTowerConfig:
        return self.model.config

    # inference_mode, not no_grad: no autograd bookkeeping at all, ~3 % of a request's model stages
    @torch.inference_mode()
    def query_vectors(self, users: np.ndarray, history: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """``(B, D)`` query embeddings of ``users`` ``(B,)`` with the given histories (oldest first)."""
        if self.user_block is None:
            bags = query_bags(self.tables.users, users, history, self.config.history_decay)
            return self.model.query_bags(bags, head=self.head).numpy()
        history_bag = recency_bag(history[0], history[1], self.config.history_decay)
        bags = {HISTORY_FEATURE: history_bag}
        return self.model.query_bags(bags, [self.user_block.take(users)], self.head).numpy()

    def user_vectors(self, sequences: Sequences, users: np.ndarray, batch_size: int = 2048) -> np.ndarray:
        """``(B, D)`` query embeddings after every observed interaction of each user."""
        out = []
        for s in range(0, len(users), batch_size):
            batch = users[s : s + batch_size]
            out.append(self.query_vectors(batch, sequences.last(batch, self.config.history_length)))
        return np.concatenate(out) if out else np.empty((0, self.item_vectors.shape[1]), np.float32)

    def candidates(
        self,
        sequences: Sequences,
        users: np.ndarray,
        exclude: sp.csr_matrix,
        k: int,
        query: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact full-catalog top-``k`` per user (``exclude``d items and the unknown item never appear).

        ``query`` ``(B, D)``: the users' query vectors when the caller already has them.

        Returns:
            items ``(B, k)`` int64 best first (-1 = empty slot: fewer than ``k`` recommendable items),
            and their similarity scores ``(B, k)`` float32 (-inf for empty slots).
        """
        q = self.user_vectors(sequences, users) if query is None else query
        local = sp.csr_matrix(exclude[users])
        ranked = topk(lambda idx: q[idx] @ self.item_vectors.T, np.arange(len(users)), local, k)
        scores = np.einsum("bd,bkd->bk", q, self.item_vectors[np.maximum(ranked, 0)])
        scores[ranked < 0] = -np.inf
        return ranked, scores.astype(np.float32)
