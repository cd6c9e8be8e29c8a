"""Training data and Lightning system of the DLRM ranker.

Training pairs come from the retrieval stage's own candidates (the model trained on the train part, whose
future is the valid part): for every user with valid interactions, the top-N candidates (hard negatives,
and positives where they were retrieved), the valid items the retriever missed (positives), and uniformly
drawn random items (easy negatives). Features are point-in-time as of the user's last train interaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import lightning.pytorch as L
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from recstack.evaluation.metrics import ranking_metrics
from recstack.evaluation.topk import MAX_SCORES_PER_BATCH
from recstack.models.inputs import FeatureTables, to_kjt
from recstack.models.ranker import Ranker
from recstack.ranking.features import RankingContext, sparse_bags
from recstack.ranking.scorer import last_items, pair_inputs
from recstack.retrieval.two_tower import TwoTowerRetriever
from recstack.training.retrieval import _loader

PAIRS_META = "pairs.json"  # beside saved pairs' arrays: what is not an array (the candidate list length)


@dataclass
class RankingPairs:
    """Rectangular per-user lists: ``(U, W)`` items (0 = padding), labels and a candidate flag.

    Columns ``[:n_candidates]`` are the retriever's top-N in order; then missed positives; then randoms.
    """

    users: np.ndarray  # (U,)
    items: np.ndarray  # (U, W)
    labels: np.ndarray  # (U, W) float32 1 = the user interacted with it in the target period
    dense: np.ndarray  # (U, W, F)
    last_item: np.ndarray  # (U,)
    n_candidates: int

    @property
    def mask(self) -> np.ndarray:
        return self.items > 0

    def save(self, directory: str | Path) -> Path:
        """Write every array as ``<name>.npy`` (and ``n_candidates``) under ``directory``, so that
        training processes can memory-map the pairs (:meth:`open`) instead of each building them."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        for f in fields(self):
            if f.name != "n_candidates":
                np.save(out / f"{f.name}.npy", getattr(self, f.name))
        (out / PAIRS_META).write_text(json.dumps({"n_candidates": self.n_candidates}) + "\n")
        return out

    @classmethod
    def open(cls, directory: str | Path) -> RankingPairs:
        """The pairs :meth:`save` wrote, memory-mapped (read-only)."""
        d = Path(directory)
        if not (d / PAIRS_META).is_file():
            raise FileNotFoundError(f"{d / PAIRS_META} does not exist: {d} holds no saved ranking pairs")
        arrays = {
            f.name: np.load(d / f"{f.name}.npy", mmap_mode="r")
            for f in fields(cls)
            if f.name != "n_candidates"
        }
        return cls(**arrays, n_candidates=int(json.loads((d / PAIRS_META).read_text())["n_candidates"]))


def _full_ranks(q: np.ndarray, vectors: np.ndarray, exclude: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
    """1-based rank of ``items`` ``(B, W)`` in each user's full masked score list: 1 + the number of
    recommendable items scoring strictly higher.

    Args:
        q: ``(B, D)`` query vectors; vectors: ``(n_items + 1, D)`` item vectors (row 0 = OOV).
        exclude: ``(B, n_items + 1)`` CSR of each user's excluded items.
        items: ``(B, W)`` item indices.

    Returns:
        ``(B, W)`` int64 ranks (an excluded item's rank counts every recommendable one).
    """
    n = vectors.shape[0]
    rows = max(1, MAX_SCORES_PER_BATCH // n)
    # One score buffer of at most MAX_SCORES_PER_BATCH floats, reused by every chunk of users: on a 1M-item
    # catalog each fresh 1 GB temporary cost more in page faults than the sort itself (291 s for 20,000 users).
    buf = np.empty((min(rows, len(q)), n), dtype=np.float32)
    out = np.empty(items.shape, dtype=np.int64)
    for s in range(0, len(q), rows):
        e = min(s + rows, len(q))
        scores = buf[: e - s]
        np.matmul(q[s:e], vectors.T, out=scores)
        scores[:, 0] = -np.inf
        r, c = exclude[s:e].nonzero()
        scores[r, c] = -np.inf
        own = np.take_along_axis(scores, items[s:e], axis=1)
        scores.sort(axis=1)  # ascending, in place: no negated copies
        # Strictly higher = n - (scores <= own): searchsorted on the right side of equal scores.
        out[s:e] = 1 + n - np.stack([np.searchsorted(scores[i], own[i], side="right") for i in range(e - s)])
    return out


def build_pairs(
    retriever: TwoTowerRetriever,
    ctx: RankingContext,
    target: sp.csr_matrix,
    *,
    n_candidates: int,
    n_random: int,
    seed: int,
    batch_size: int = 256,
    max_users: int | None = None,
) -> RankingPairs:
    """Training / validation pairs for every user with target interactions (or a seeded sample of
    ``max_users`` of them: pairs take ``users x (N + negatives) x features`` floats in memory, ~10 GB for
    a million users).

    Args:
        retriever: the retrieval model that saw only the observed data of ``ctx``.
        ctx: observed data (the train part) for features and exclusion.
        target: ``(n_users + 1, n_items + 1)`` CSR of the period to predict (the valid part).
        n_candidates: retriever list length (N).
        n_random: random negatives per user.
    """
    rng = np.random.default_rng(seed)
    exclude = ctx.sequences.matrix(target.shape[1])
    users = np.flatnonzero(np.diff(target.indptr) > 0)
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng([seed, max_users]).choice(users, max_users, replace=False))
    n_items = ctx.tables.items.n_items
    lists, label_rows, dense_rows, last_rows = [], [], [], []
    length = retriever.config.history_length
    missed_max = 0
    for s in range(0, len(users), batch_size):
        batch = users[s : s + batch_size]
        q = retriever.user_vectors(ctx.sequences, batch)
        cand, _ = retriever.candidates(ctx.sequences, batch, exclude, n_candidates, query=q)
        cand = np.maximum(cand, 0)  # empty slots (tiny catalogs) become padding
        tgt = target[batch]
        missed = []
        for r in range(len(batch)):
            pos = tgt.indices[tgt.indptr[r] : tgt.indptr[r + 1]]
            missed.append(np.setdiff1d(pos, cand[r], assume_unique=False))
        width_missed = max(len(m) for m in missed)
        missed_max = max(missed_max, width_missed)
        miss = np.zeros((len(batch), width_missed), dtype=np.int64)
        for r, m in enumerate(missed):
            miss[r, : len(m)] = m
        rand = rng.integers(1, n_items, size=(len(batch), n_random))
        items = np.concatenate([cand, miss, rand], axis=1)
        ranks = _full_ranks(q, retriever.item_vectors, sp.csr_matrix(exclude[batch]), items)
        sims = np.einsum("bd,bwd->bw", q, retriever.item_vectors[items])
        dense, _ = pair_inputs(ctx, batch, items, sims.astype(np.float32), ranks, length)
        labels = np.asarray(tgt[np.arange(len(batch))[:, None], items].todense(), dtype=np.float32)
        # Random items the user already had (or padding) are neither positive nor negative: drop them.
        observed = np.asarray(exclude[batch][np.arange(len(batch))[:, None], items].todense()) > 0
        items = np.where(observed | (items == 0), 0, items)
        lists.append(items)
        label_rows.append(labels)
        dense_rows.append(dense)
        last_rows.append(last_items(*ctx.sequences.last(batch, 1)))
    width = n_candidates + missed_max + n_random

    def pad(a: np.ndarray) -> np.ndarray:
        cut = n_candidates + (a.shape[1] - n_candidates - n_random)
        widths = [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        # Keep the randoms at the end of every row: pad between the missed positives and the randoms.
        return np.concatenate([np.pad(a[:, :cut], widths), a[:, cut:]], axis=1)

    return RankingPairs(
        users=users,
        items=np.concatenate([pad(x) for x in lists]),
        labels=np.concatenate([pad(x) for x in label_rows]),
        dense=np.concatenate([pad(x) for x in dense_rows]),
        last_item=np.concatenate(last_rows),
        n_candidates=n_candidates,
    )


class PairBatches(Dataset):
    """Index-batch dataset over the flattened non-padding pairs of some users."""

    def __init__(self, pairs: RankingPairs, tables: FeatureTables, user_rows: np.ndarray):
        rows, cols = np.nonzero(pairs.mask[user_rows])
        self.rows, self.cols = user_rows[rows], cols
        self.pairs, self.tables = pairs, tables

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx: list[int]) -> dict:
        i = np.asarray(idx)
        r, c = self.rows[i], self.cols[i]
        p = self.pairs
        bags = sparse_bags(self.tables, p.users[r], p.items[r, c][:, None], p.last_item[r])
        return {
            "dense": torch.from_numpy(p.dense[r, c]),
            "sparse": to_kjt(bags),
            "label": torch.from_numpy(p.labels[r, c]),
        }


class RankingSystem(L.LightningModule):
    """BCE on pairs; validation re-ranks held-out users' candidate lists and reports P1 metrics.

    Args:
        model: the DLRM ranker.
        pairs: all pairs; ``train_rows`` / ``valid_rows`` index its users.
        tables: feature tables (for the sparse features).
        batch_size / lr / weight_decay: training settings.
        seed: batch order.
    """

    def __init__(
        self,
        model: Ranker,
        pairs: RankingPairs,
        tables: FeatureTables,
        train_rows: np.ndarray,
        valid_rows: np.ndarray,
        *,
        batch_size: int = 2048,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        seed: int = 42,
    ):
        super().__init__()
        self.model, self.pairs, self.tables = model, pairs, tables
        self.train_rows, self.valid_rows = train_rows, valid_rows
        self.batch_size, self.lr, self.weight_decay, self.seed = batch_size, lr, weight_decay, seed
        self._logits: list[np.ndarray] = []

    def train_dataloader(self) -> DataLoader:
        return _loader(
            PairBatches(self.pairs, self.tables, self.train_rows), self.batch_size, True, self.seed
        )

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self.model(batch["dense"], batch["sparse"])
        loss = F.binary_cross_entropy_with_logits(logits, batch["label"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(logits))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    def val_dataloader(self) -> DataLoader:
        return _loader(
            CandidateRows(self.pairs, self.tables, self.valid_rows), 64, shuffle=False, seed=self.seed
        )

    def on_validation_epoch_start(self) -> None:
        self._logits = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self.model(batch["dense"], batch["sparse"])
        self._logits.append(logits.reshape(-1, self.pairs.n_candidates).numpy())

    def on_validation_epoch_end(self) -> None:
        if not self._logits:
            return
        metrics = rerank_metrics(
            self.pairs, self.valid_rows, np.concatenate(self._logits), self.tables.items.n_items
        )
        for key, value in metrics.items():
            self.log(key, value)


def rerank_metrics(
    pairs: RankingPairs, valid_rows: np.ndarray, logits: np.ndarray, n_items: int
) -> dict[str, float]:
    """Held-out users' candidate lists re-ranked by the ranker's ``logits`` ``(len(valid_rows), N)``:
    ``valid_{ndcg@10, recall@10, recall@20}``, and ``valid_retrieval_*`` of the same lists in the
    retriever's own order (what the ranker has to improve on). The early-stopping metric of every
    training path (Lightning and sharded).
    """
    n = pairs.n_candidates
    items = np.asarray(pairs.items[valid_rows, :n])
    order = np.argsort(-logits, axis=1, kind="stable")
    reranked = np.take_along_axis(items, order, axis=1)
    relevant = _relevance(pairs, valid_rows, n_items)
    m = ranking_metrics(reranked, relevant, ks=(10, 20))
    base = ranking_metrics(items, relevant, ks=(10, 20))
    out = {}
    for key in ("ndcg@10", "recall@10", "recall@20"):
        out[f"valid_{key}"] = float(m[key])
        out[f"valid_retrieval_{key}"] = float(base[key])
    return out


def _relevance(pairs: RankingPairs, valid_rows: np.ndarray, n_items: int) -> sp.csr_matrix:
    """``(len(valid_rows), n_items)`` CSR of every target item of the held-out users."""
    labels = np.asarray(pairs.labels[valid_rows])
    items = np.asarray(pairs.items[valid_rows])
    rows, cols = np.nonzero(labels > 0)
    m = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, items[rows, cols])), shape=(len(valid_rows), n_items)
    )
    m.data[:] = 1.0
    return m


class CandidateRows(Dataset):
    """Validation batches: whole candidate lists (first N columns) of held-out users ``user_rows``.

    A batch of ``b`` users is ``b * N`` pairs, user-major: ``dense`` ``(b * N, F)``, ``sparse`` a KJT of
    batch ``b * N``.
    """

    def __init__(self, pairs: RankingPairs, tables: FeatureTables, user_rows: np.ndarray):
        self.pairs, self.tables, self.user_rows = pairs, tables, user_rows

    def __len__(self) -> int:
        return len(self.user_rows)

    def __getitem__(self, idx: list[int]) -> dict:
        p, n = self.pairs, self.pairs.n_candidates
        r = self.user_rows[np.asarray(idx)]
        items = np.asarray(p.items[r, :n])
        bags = sparse_bags(self.tables, p.users[r], items, p.last_item[r])
        dense = p.dense[r, :n].reshape(-1, p.dense.shape[-1])
        return {"dense": torch.from_numpy(np.ascontiguousarray(dense)), "sparse": to_kjt(bags)}
