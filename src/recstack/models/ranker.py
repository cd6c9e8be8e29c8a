"""DLRM ranker: TorchRec's ``DLRM`` (or ``DLRM_DCN``) over the ranking features of (user, item) pairs.

Model code only. Dense inputs are standardized inside the model with statistics saved in the config, so
whoever calls it (training, evaluation, the service) passes raw feature values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType
from torchrec.models.dlrm import DLRM, DLRM_DCN

from recstack.models.frozen import freeze
from recstack.models.inputs import Bag, BlockRows, pooled_embeddings

# Pairs per pass through the dense layers at inference. Their cost per pair is flat up to ~800 pairs and
# ~4x higher at 1600 on this machine (the activations outgrow the core's cache), and the funnel scores
# 200 candidates per user: one request is 200 pairs, an offline batch of users tens of thousands.
INFERENCE_CHUNK_PAIRS = 512


class RankerConfig(BaseModel):
    """Architecture of the ranker, saved in its artifact.

    Attributes:
        sparse_features: feature name -> embedding-table size, in KJT key order.
        dense_features: names of the dense inputs, in column order.
        dense_mean / dense_std: standardization of the dense inputs (fitted on the training pairs).
        embedding_dim: width of every table (DLRM's interaction needs one width for all).
        dense_arch: hidden widths of the dense MLP (``embedding_dim`` is appended as its output).
        over_arch: widths of the top MLP (a final 1 is appended: the logit).
        dcn_layers: 0 = DLRM's pairwise dot interaction; > 0 = DLRM_DCN with that many cross layers.
        dcn_low_rank_dim: rank of the DCN cross layers.
    """

    model_config = ConfigDict(extra="forbid")
    sparse_features: dict[str, int]
    dense_features: list[str]
    dense_mean: list[float]
    dense_std: list[float]
    embedding_dim: int = 16
    dense_arch: list[int] = [64]
    over_arch: list[int] = [128, 64]
    dcn_layers: int = 0
    dcn_low_rank_dim: int = 16


class Ranker(nn.Module):
    """Scores pairs: ``forward(dense (B, F), sparse KJT of batch B) -> logits (B,)``; :meth:`score` at
    inference."""

    def __init__(self, config: RankerConfig):
        super().__init__()
        self.config = config
        c = config
        ebc = EmbeddingBagCollection(
            tables=[
                EmbeddingBagConfig(
                    name=f"rank_{name}",
                    embedding_dim=c.embedding_dim,
                    num_embeddings=size,
                    feature_names=[name],
                    pooling=PoolingType.SUM,
                )
                for name, size in c.sparse_features.items()
            ],
            is_weighted=True,
            device=torch.device("cpu"),
        )
        dense_arch = [*c.dense_arch, c.embedding_dim]
        over_arch = [*c.over_arch, 1]
        n_dense = len(c.dense_features)
        if c.dcn_layers > 0:
            self.dlrm: nn.Module = DLRM_DCN(
                embedding_bag_collection=ebc,
                dense_in_features=n_dense,
                dense_arch_layer_sizes=dense_arch,
                over_arch_layer_sizes=over_arch,
                dcn_num_layers=c.dcn_layers,
                dcn_low_rank_dim=c.dcn_low_rank_dim,
            )
        else:
            self.dlrm = DLRM(
                embedding_bag_collection=ebc,
                dense_in_features=n_dense,
                dense_arch_layer_sizes=dense_arch,
                over_arch_layer_sizes=over_arch,
            )
        self.register_buffer("dense_mean", torch.tensor(c.dense_mean, dtype=torch.float32), persistent=False)
        self.register_buffer("dense_std", torch.tensor(c.dense_std, dtype=torch.float32), persistent=False)

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Args: dense ``(B, F)`` raw dense features; sparse: KJT, batch ``B``. Returns logits ``(B,)``.

        In eval mode a large batch goes through the dense layers in chunks (see :meth:`_head`).
        """
        x = self._standardize(dense)
        if self.training or len(x) <= INFERENCE_CHUNK_PAIRS:
            return self.dlrm(x, sparse).squeeze(-1)
        return self._head(x, self.dlrm.sparse_arch(sparse))

    def score(
        self,
        dense: torch.Tensor,
        bags: dict[str, Bag],
        layers: torch.jit.ScriptModule | None = None,
        precomputed: Sequence[BlockRows] = (),
    ) -> torch.Tensor:
        """Inference: logits ``(B,)`` of dense ``(B, F)`` raw features and the sparse features as bags.

        The same modules and weights as :meth:`forward` on ``to_kjt(bags)``, and the same values; the
        embedding lookup skips TorchRec's KJT handling (see :func:`pooled_embeddings`). ``layers``: the
        dense layers frozen by :meth:`frozen_layers` (the same logits, faster), else the modules.
        ``precomputed``: features whose pooled embeddings the caller has already (see
        :func:`pooled_embeddings`).
        """
        d = self.dlrm
        n_sparse = len(self.config.sparse_features)
        embedded = pooled_embeddings(d.sparse_arch.embedding_bag_collection, bags, precomputed)
        embedded = embedded.reshape(-1, n_sparse, self.config.embedding_dim)
        return self._head(self._standardize(dense), embedded, layers)

    def frozen_layers(self) -> torch.jit.ScriptModule:
        """The layers after the embedding lookups (dense arch, interaction, over arch) as a frozen graph
        (:func:`recstack.models.frozen.freeze`): ``(dense (B, F) standardized, embedded (B, n_sparse, D))
        -> (B, 1)``, the same logits bit for bit (tested for many batch sizes against the modules) at
        ~60 % of the modules' cost for a request's 200 pairs."""
        example = (
            torch.zeros(2, len(self.config.dense_features)),
            torch.zeros(2, len(self.config.sparse_features), self.config.embedding_dim),
        )
        return freeze(_DenseLayers(self.dlrm), example)

    def _standardize(self, dense: torch.Tensor) -> torch.Tensor:
        return (dense - self.dense_mean) / self.dense_std

    def _head(
        self,
        x: torch.Tensor,
        embedded: torch.Tensor,
        layers: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits ``(B,)`` from standardized dense ``(B, F)`` and pooled embeddings ``(B, n_sparse, D)``,
        through ``layers`` (:meth:`frozen_layers`) or the modules.

        The dense layers run over chunks of ``INFERENCE_CHUNK_PAIRS`` pairs: row by row the same result as
        one pass, several times faster on large batches.
        """
        layers = layers or (lambda dense, emb: _dense_layers(self.dlrm, dense, emb))
        c = INFERENCE_CHUNK_PAIRS
        if len(x) <= c:
            return layers(x, embedded).squeeze(-1)
        return torch.cat([layers(x[s : s + c], embedded[s : s + c]) for s in range(0, len(x), c)]).squeeze(-1)


def _dense_layers(dlrm: nn.Module, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
    return dlrm.over_arch(dlrm.inter_arch(dlrm.dense_arch(dense), embedded))


class _DenseLayers(nn.Module):
    """DLRM's layers after the embedding lookups: ``(dense (B, F) standardized, embedded (B, n_sparse, D))
    -> logits (B, 1)`` (what :meth:`Ranker.frozen_layers` traces)."""

    def __init__(self, dlrm: nn.Module) -> None:
        super().__init__()
        self.dlrm = dlrm

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return _dense_layers(self.dlrm, dense, embedded)
