"""Training system of the two-tower retrieval model: sampled softmax with log-Q correction.

Examples are sequential and point-in-time: each observed interaction is a positive whose query sees only the
user's items *before* it (never the positive itself), which is exactly the situation at serving time.
Negatives are the other positives of the batch (in-batch, popularity-biased, hence the log-Q correction)
plus optional uniformly drawn random items; accidental hits (the positive appearing as a negative) are
masked. Validation ranks the full catalog for every validation user (train items masked) and reports P1
metrics; early stopping watches ``valid_recall@K``.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightning.pytorch as L
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from recstack.evaluation.metrics import ranking_metrics
from recstack.evaluation.topk import topk
from recstack.models.inputs import ItemFeatures, Sequences, UserFeatures, query_bags, to_kjt
from recstack.models.two_tower import TwoTower, item_embeddings


@dataclass
class RetrievalData:
    """What the retrieval system trains and validates on.

    Attributes:
        items / users: feature tables.
        sequences: observed interactions (the training examples and the query histories).
        valid: ``(n_users + 1, n_items + 1)`` CSR of validation items (None = no validation).
    """

    items: ItemFeatures
    users: UserFeatures
    sequences: Sequences
    valid: sp.csr_matrix | None = None

    def exclude(self) -> sp.csr_matrix:
        """Observed (user, item) pairs as a CSR: what full-catalog ranking must not recommend."""
        return self.sequences.matrix(self.items.n_items)

    def log_q(self, batch_size: int, n_random: int) -> np.ndarray:
        """``(n_items + 1,)`` log expected count of each item among a batch's negatives.

        In-batch negatives arrive in proportion to popularity, random ones uniformly; subtracting the
        log of their mixture from the logits (Yi et al., 2019) removes the popularity bias of sampling.
        """
        counts = np.bincount(self.sequences.items, minlength=self.items.n_items).astype(np.float64)
        expected = batch_size * counts / max(counts.sum(), 1.0) + n_random / max(self.items.n_items - 1, 1)
        return np.log(np.maximum(expected, 1e-12)).astype(np.float32)


def sampled_softmax_loss(
    q: torch.Tensor,
    c: torch.Tensor,
    items: torch.Tensor,
    log_q: torch.Tensor,
    temperature: float,
    labels: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sampled softmax with log-Q correction and accidental-hit masking.

    Args:
        q: ``(B, D)`` query embeddings.
        c: ``(N, D)`` candidate embeddings: the positives and the negatives of the batch.
        items: ``(N,)`` item index of each candidate.
        log_q: ``(n_items + 1,)`` log sampling frequency of each item (:meth:`RetrievalData.log_q`).
        temperature: the scores are ``q @ c.T / temperature``.
        labels: ``(B,)`` column of each query's positive in ``c``; default ``arange(B)`` (the positives
            come first). Distributed training passes the rank's offset into the all-gathered candidates.
        reduction: ``mean`` or ``sum`` over the ``B`` queries (``F.cross_entropy``).

    Returns:
        The loss, a scalar.
    """
    b = q.shape[0]
    if labels is None:
        labels = torch.arange(b, device=q.device)
    logits = q @ c.T / temperature - log_q[items][None, :]
    # The positive may also sit elsewhere in the batch (same item, another user): not a negative.
    hit = items[None, :] == items[labels][:, None]
    hit[torch.arange(b, device=q.device), labels] = False
    logits = logits.masked_fill(hit, torch.finfo(logits.dtype).min)
    return F.cross_entropy(logits, labels, reduction=reduction)


class ExampleBatches(Dataset):
    """Index-batch dataset: ``__getitem__`` receives a list of example rows and returns a whole batch."""

    def __init__(self, data: RetrievalData, history_length: int, decay: float, n_random: int, seed: int):
        self.data, self.history_length, self.decay = data, history_length, decay
        self.n_random = n_random
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.data.sequences.items)

    def __getitem__(self, rows: list[int]) -> dict:
        r = np.asarray(rows, dtype=np.int64)
        s = self.data.sequences
        users = s.users_of(r)
        query = to_kjt(query_bags(self.data.users, users, s.prefix(r, self.history_length), self.decay))
        positives = s.items[r]
        randoms = self.rng.integers(1, self.data.items.n_items, size=self.n_random)
        items = np.concatenate([positives, randoms])
        return {
            "query": query,
            "candidate": self.data.items.kjt(items),
            "items": torch.from_numpy(items),
        }


class ValidUsers(Dataset):
    """Index-batch dataset of validation users: their query features after all observed data."""

    def __init__(self, data: RetrievalData, users: np.ndarray, history_length: int, decay: float):
        self.data, self.users, self.history_length, self.decay = data, users, history_length, decay

    def __len__(self) -> int:
        return len(self.users)

    def __getitem__(self, rows: list[int]) -> dict:
        users = self.users[np.asarray(rows)]
        history = self.data.sequences.last(users, self.history_length)
        return {
            "users": torch.from_numpy(users),
            "query": to_kjt(query_bags(self.data.users, users, history, self.decay)),
        }


def _loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int) -> DataLoader:
    sampler = (
        RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
        if shuffle
        else SequentialSampler(dataset)
    )
    return DataLoader(
        dataset, sampler=BatchSampler(sampler, batch_size, drop_last=False), batch_size=None, num_workers=0
    )


class RetrievalSystem(L.LightningModule):
    """Lightning system around a :class:`TwoTower` model.

    Args:
        model: the two-tower nn.Module.
        data: training / validation data.
        batch_size: positives per batch (= in-batch negatives per positive + 1).
        n_random: uniformly drawn extra negatives shared by the batch.
        lr / weight_decay: AdamW settings.
        monitor_k: K of the early-stopping metric ``valid_recall@K``.
        seed: seed of the batch order and the random negatives.
    """

    def __init__(
        self,
        model: TwoTower,
        data: RetrievalData,
        *,
        batch_size: int = 512,
        n_random: int = 0,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        monitor_k: int = 100,
        seed: int = 42,
    ):
        super().__init__()
        self.model, self.data = model, data
        self.batch_size, self.n_random, self.lr, self.weight_decay = batch_size, n_random, lr, weight_decay
        self.monitor_k, self.seed = monitor_k, seed
        self.log_q = torch.from_numpy(data.log_q(batch_size, n_random))
        self._exclude = data.exclude()
        self._item_emb: torch.Tensor | None = None
        self._valid_topk: list[np.ndarray] = []
        self._valid_users = (
            np.flatnonzero(np.diff(data.valid.indptr) > 0)
            if data.valid is not None
            else np.empty(0, np.int64)
        )

    # --- training -----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        cfg = self.model.config
        ds = ExampleBatches(self.data, cfg.history_length, cfg.history_decay, self.n_random, self.seed)
        return _loader(ds, self.batch_size, shuffle=True, seed=self.seed)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        q = self.model.query(batch["query"])  # (B, D)
        c = self.model.candidate(batch["candidate"])  # (B + R, D)
        loss = sampled_softmax_loss(q, c, batch["items"], self.log_q, self.model.config.temperature)
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=q.shape[0])
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # --- validation: full-catalog ranking ------------------------------------------------------------
    def val_dataloader(self) -> DataLoader:
        cfg = self.model.config
        ds = ValidUsers(self.data, self._valid_users, cfg.history_length, cfg.history_decay)
        return _loader(ds, 1024, shuffle=False, seed=self.seed)

    def on_validation_epoch_start(self) -> None:
        self._item_emb = item_embeddings(self.model, self.data.items)
        self._valid_topk = []

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        q = self.model.query(batch["query"])
        scores = (q @ self._item_emb.T).numpy()
        users = batch["users"].numpy()
        local = sp.csr_matrix(self._exclude[users])
        k = max(self.monitor_k, 10)
        self._valid_topk.append(topk(lambda idx: scores[idx], np.arange(len(users)), local, k))

    def on_validation_epoch_end(self) -> None:
        if not self._valid_topk:
            return
        ranked = np.concatenate(self._valid_topk)
        k = max(self.monitor_k, 10)
        ks = sorted({10, k})
        m = ranking_metrics(ranked, sp.csr_matrix(self.data.valid[self._valid_users]), ks=ks)
        for key in (f"recall@{k}", "recall@10", "ndcg@10"):
            self.log(f"valid_{key}", m[key], prog_bar=False)
