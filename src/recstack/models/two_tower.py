"""Two-tower retrieval model: a query tower and a candidate tower over TorchRec EmbeddingBagCollections.

Model code only (no training loop, no data loading): the training system lives in
``recstack.training.retrieval``, the index and serving code call :meth:`TwoTower.query` and
:meth:`TwoTower.candidate` on KJTs built by ``recstack.models.inputs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, KeyedTensor, PoolingType

from recstack.models.frozen import freeze
from recstack.models.inputs import Bag, BlockRows, pooled_embeddings

if TYPE_CHECKING:
    from recstack.models.inputs import ItemFeatures

Similarity = Literal["cosine", "dot"]
Precomputed = Sequence[BlockRows]  # pooled features: see pooled_embeddings


class TwoTowerConfig(BaseModel):
    """Architecture of a two-tower model; saved in the artifact so serving rebuilds the same model.

    Attributes:
        query_features / candidate_features: feature name -> embedding-table size, in KJT key order.
        embedding_dim: width of every embedding table.
        tower_dims: hidden widths of each tower's MLP; the last one is the output embedding size.
        similarity: ``cosine`` (L2-normalized outputs, inner product) or ``dot`` (raw inner product). The
            ANN index must use the same one.
        temperature: softmax temperature the scores were trained with (scores divide by it).
        history_decay: recency decay of the history bag's weights.
        history_length: items of the user's history the query tower sees.
    """

    model_config = ConfigDict(extra="forbid")
    query_features: dict[str, int]
    candidate_features: dict[str, int]
    embedding_dim: int = 64
    tower_dims: list[int] = [128, 64]
    similarity: Similarity = "cosine"
    temperature: float = 0.05
    history_decay: float = 0.9
    history_length: int = 50
    dropout: float = 0.1

    @property
    def output_dim(self) -> int:
        return self.tower_dims[-1]


def _ebc(features: dict[str, int], dim: int, prefix: str) -> EmbeddingBagCollection:
    tables = [
        EmbeddingBagConfig(
            name=f"{prefix}_{name}",
            embedding_dim=dim,
            num_embeddings=size,
            feature_names=[name],
            pooling=PoolingType.SUM,  # weights make it a mean / recency-weighted mean
        )
        for name, size in features.items()
    ]
    return EmbeddingBagCollection(tables=tables, is_weighted=True, device=torch.device("cpu"))


def _mlp(in_dim: int, dims: list[int], dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, d in enumerate(dims):
        layers.append(nn.Linear(in_dim, d))
        if i < len(dims) - 1:  # the output layer stays linear: it is an embedding, not an activation
            layers += [nn.ReLU(), nn.Dropout(dropout)]
        in_dim = d
    return nn.Sequential(*layers)


class Tower(nn.Module):
    """Pooled embeddings of every sparse feature, concatenated, through an MLP.

    Input: a weighted KJT with the tower's feature keys, batch size B. Output: ``(B, tower_dims[-1])``.
    """

    def __init__(
        self, features: dict[str, int], dim: int, tower_dims: list[int], dropout: float, prefix: str
    ):
        super().__init__()
        self.feature_names = list(features)
        self.ebc = _ebc(features, dim, prefix)
        self.mlp = _mlp(dim * len(features), tower_dims, dropout)

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        pooled = self.ebc(features)  # KeyedTensor, values() (B, n_features * dim)
        if pooled.keys() != self.feature_names:
            # A sharded EBC (DistributedModelParallel) returns its features grouped by shard, not in the
            # order of the tables: put them back in the order the MLP was built for.
            return self.mlp(KeyedTensor.regroup([pooled], [self.feature_names])[0])
        return self.mlp(pooled.values())

    def embed_bags(self, bags: dict[str, Bag], precomputed: Precomputed = ()) -> torch.Tensor:
        """Inference: ``(B, tower_dims[-1])``, the same values as ``forward(to_kjt(bags))`` without the KJT
        (``precomputed``: see :func:`pooled_embeddings`)."""
        return self.mlp(pooled_embeddings(self.ebc, bags, precomputed))


class TwoTower(nn.Module):
    """Query tower (user id, attributes, history bag) and candidate tower (item id + content features).

    ``score(q, c) = sim(q, c) / temperature`` where ``sim`` is the configured similarity.
    """

    def __init__(self, config: TwoTowerConfig):
        super().__init__()
        self.config = config
        c = config
        self.query_tower = Tower(c.query_features, c.embedding_dim, c.tower_dims, c.dropout, "query")
        self.candidate_tower = Tower(c.candidate_features, c.embedding_dim, c.tower_dims, c.dropout, "cand")

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=-1) if self.config.similarity == "cosine" else x

    def query(self, features: KeyedJaggedTensor) -> torch.Tensor:
        """Query embeddings ``(B, D)`` (unit length under cosine similarity)."""
        return self._finish(self.query_tower(features))

    def query_bags(
        self, bags: dict[str, Bag], precomputed: Precomputed = (), head: torch.jit.ScriptModule | None = None
    ) -> torch.Tensor:
        """Inference: :meth:`query` of ``to_kjt(bags)``, without building the KJT (see :func:`pooled_embeddings`);
        ``head``: :meth:`frozen_query_head` (the same vectors, faster), else the modules."""
        if head is not None:
            return head(pooled_embeddings(self.query_tower.ebc, bags, precomputed))
        return self._finish(self.query_tower.embed_bags(bags, precomputed))

    def frozen_query_head(self) -> torch.jit.ScriptModule:
        """The query tower after its lookups (its MLP, then unit length under cosine) as a frozen graph
        (:func:`recstack.models.frozen.freeze`): pooled ``(B, n_features * D)`` -> ``(B, D_out)``."""
        width = self.config.embedding_dim * len(self.config.query_features)
        return freeze(_QueryHead(self), (torch.zeros(2, width),))

    def candidate(self, features: KeyedJaggedTensor) -> torch.Tensor:
        """Candidate embeddings ``(B, D)`` (unit length under cosine similarity)."""
        return self._finish(self.candidate_tower(features))

    def forward(self, query: KeyedJaggedTensor, candidate: KeyedJaggedTensor) -> torch.Tensor:
        """Logits ``(B_q, B_c)``: every query against every candidate, divided by the temperature."""
        return self.query(query) @ self.candidate(candidate).T / self.config.temperature


class _QueryHead(nn.Module):
    """What :meth:`TwoTower.frozen_query_head` traces: the query MLP and the similarity's finish."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model._finish(self.model.query_tower.mlp(pooled))


@torch.no_grad()
def item_embeddings(model: TwoTower, items: ItemFeatures, batch_size: int = 4096) -> torch.Tensor:
    """``(n_items + 1, D)`` candidate embeddings of the whole catalog (row 0 = the unknown item)."""
    was_training = model.training
    model.eval()
    out = [
        model.candidate(items.kjt(np.arange(s, min(s + batch_size, items.n_items))))
        for s in range(0, items.n_items, batch_size)
    ]
    model.train(was_training)
    return torch.cat(out)
