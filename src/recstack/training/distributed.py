"""Distributed training of the two-tower model: TorchRec DistributedModelParallel under torchrun.

Run (2 CPU processes, gloo; nccl and one GPU per process when CUDA is available)::

    torchrun --standalone --nproc_per_node=2 -m recstack.training.distributed \\
        --features artifacts/features --out artifacts/train_retrieval_distributed \\
        --sharding table_wise --steps 200 --batch-size 512 --seed 42

A plain loop, not Lightning: Lightning has no strategy for TorchRec's DistributedModelParallel (DMP wraps
the dense part in DDP itself and shards the embedding tables), and DMP owns the embedding optimizer, which
runs fused inside the backward pass of the sharded tables, where a Lightning optimizer step cannot reach.

The math equals single-process training (:func:`train_distributed` without torchrun):

* Every rank draws the same global batch order from the seed and takes a disjoint, equal slice of every
  global batch (full batches only, so every rank's slice has the same size).
* The candidate embeddings of all ranks' positives are all-gathered (with gradient) before the sampled
  softmax (:func:`recstack.training.retrieval.sampled_softmax_loss`), so each query sees the negatives of
  the whole global batch, exactly as in one process. Random negatives are drawn identically on every rank.
* Each rank's loss is its mean over its slice; DDP averages dense gradients and TorchRec divides the
  sharded tables' gradients by the world size, so the update is the gradient of the global-batch mean.
* Embedding tables train with Adagrad (fused, ``EXACT_ADAGRAD``: the fused CPU kernels support only SGD and
  Adagrad variants, not Adam), the MLPs with AdamW. Data-parallel tables are not fused: they get a plain
  ``torch.optim.Adagrad`` with the same settings, so every sharding trains the same model.

What differs is floating-point order (all-to-all sums, fused vs plain Adagrad), and dropout: each rank draws
its own masks, so only with ``dropout=0`` are runs comparable step for step. The reference is this loop in
one process, not the Lightning ``train_retrieval`` stage (AdamW on every parameter, epochs, early stopping).

Outputs under ``--out``: ``checkpoints/step_NNNNNN/`` (sharded, DCP; see
:mod:`recstack.training.sharded_checkpoint`), ``model/`` (the consolidated single-file artifact that serving
loads), ``result.json`` (per-step losses, valid metrics, the sharding plan) and ``probe.pt``.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch
import torch.distributed as dist
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.optim.keyed import KeyedOptimizer

from recstack.data.io import INTERACTIONS_FILE
from recstack.data.split import SPLIT, TRAIN, VALID
from recstack.evaluation.metrics import ranking_metrics
from recstack.evaluation.topk import interaction_matrix
from recstack.features.transform import ITEM_IDX, USER_IDX
from recstack.jsonio import write_json
from recstack.models.inputs import FeatureTables, Sequences, gather_ranges, query_bags, to_kjt
from recstack.models.two_tower import Similarity, TwoTower, TwoTowerConfig
from recstack.retrieval.two_tower import TwoTowerRetriever
from recstack.training.common import seed_everything
from recstack.training.retrieval import ExampleBatches, RetrievalData, sampled_softmax_loss
from recstack.training.sharded_checkpoint import CheckpointMeta, consolidate, load_checkpoint, save_checkpoint
from recstack.training.sharding import (
    SHARDINGS,
    Cluster,
    Sharding,
    backward_and_step,
    describe_plan,
    end_job,
    gather_candidates,
    make_optimizer,
    plan_summary,
    shard,
    start_job,
)
from recstack.training.streaming import build_sequences, open_sequences

log = logging.getLogger(__name__)

RESULT_FILE = "result.json"
PROBE_FILE = "probe.pt"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"


class TrainTowers(nn.Module):
    """Both towers in one forward: DMP's DDP needs the whole step to go through ``forward``.

    Input: query KJT (batch B), candidate KJT (batch N). Output: ``(B, D)`` and ``(N, D)`` embeddings.
    """

    def __init__(self, model: TwoTower):
        super().__init__()
        self.model = model

    def forward(
        self, query: KeyedJaggedTensor, candidate: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.query(query), self.model.candidate(candidate)


# --- data ---------------------------------------------------------------------------------------------
def global_batches(n_examples: int, batch_size: int, seed: int) -> Iterator[np.ndarray]:
    """Endless full batches of example rows: a seeded permutation per epoch, identical on every rank."""
    if batch_size > n_examples:
        raise ValueError(f"batch_size {batch_size} exceeds the {n_examples} training examples")
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n_examples, generator=g).numpy()
        for s in range(0, n_examples - batch_size + 1, batch_size):
            yield order[s : s + batch_size]


def load_retrieval_data(
    features_dir: str | Path,
    *,
    sequences_dir: str | Path | None = None,
    max_valid_users: int | None = None,
    seed: int = 0,
    cluster: Cluster | None = None,
    splits: tuple[str, ...] = (TRAIN,),
) -> tuple[FeatureTables, RetrievalData]:
    """Feature tables and the examples of ``splits`` with the valid split to score (phase 1 of P1).

    Args:
        features_dir: the features stage's output.
        splits: the training examples: ``("train",)`` (phase 1, scored on valid) or P1's refit on
            ``("train", "valid")`` (nothing left to score).
        sequences_dir: serve the examples from disk: the train sequences are laid out there once
            (:func:`recstack.training.streaming.build_sequences`, by rank 0 while the others wait) and
            memory-mapped, so the process never holds the log. None: read into memory.
        max_valid_users: score at most this many valid users (a seeded sample): full-catalog ranking of
            every valid user of a 5M-user log is hours of work for a number a sample gives as well.
        seed: the sample's seed.
        cluster: the process group (for the build-then-wait on rank 0).
    """
    tables = FeatureTables.load(features_dir)
    path = Path(features_dir) / INTERACTIONS_FILE
    n_users, n_items = tables.spec.user_id.size, tables.spec.item_id.size
    if sequences_dir is None:
        interactions = pl.read_parquet(path)
        sequences = Sequences.from_interactions(interactions.filter(pl.col(SPLIT).is_in(splits)), n_users)
        log_frame = interactions.lazy()  # read once: the valid split below comes from memory too
    else:
        if cluster is None or cluster.rank == 0:
            build_sequences(path, splits, n_users, sequences_dir)
        if cluster is not None and cluster.distributed:
            dist.barrier()
        sequences = open_sequences(sequences_dir)
        log_frame = pl.scan_parquet(path)
    if VALID in splits:
        # P1's refit trains on valid: scoring it would measure nothing, and with no sample it ranked every
        # valid user over the whole catalog (millions of users at 50M interactions: hours).
        return tables, RetrievalData(tables.items, tables.users, sequences, None)
    valid = log_frame.filter(pl.col(SPLIT) == VALID).select(USER_IDX, ITEM_IDX).collect(engine="streaming")
    if max_valid_users is not None:
        users = np.unique(valid[USER_IDX].to_numpy())
        if len(users) > max_valid_users:
            keep = np.random.default_rng(seed).choice(users, size=max_valid_users, replace=False)
            valid = valid.filter(pl.col(USER_IDX).is_in(np.sort(keep)))
    data = RetrievalData(tables.items, tables.users, sequences, interaction_matrix(valid, n_users, n_items))
    return tables, data


def probe_batch(
    data: RetrievalData, config: TwoTowerConfig, n_users: int = 64, n_items: int = 4096
) -> dict[str, Any]:
    """A fixed scoring batch: the first ``n_users`` users with history (queries after all their data) and
    the first ``n_items`` items (candidates): what :class:`TwoTowerRetriever` computes for the same users
    and items. Bounded, because every rank embeds it through the sharded model: a 1M-item catalog in one
    forward took more memory than this machine has.
    """
    users = np.flatnonzero(data.sequences.lengths() > 0)[:n_users]
    history = data.sequences.last(users, config.history_length)
    items = np.arange(min(n_items, data.items.n_items))
    return {
        "users": users,
        "items": items,
        "query": to_kjt(query_bags(data.users, users, history, config.history_decay)),
        "candidate": data.items.kjt(items),
    }


def valid_metrics(artifact_dir: Path, tables: FeatureTables, data: RetrievalData, k: int) -> dict[str, float]:
    """Full-catalog ranking of the valid users by the artifact (train items excluded), as in training."""
    if data.valid is None:
        return {}
    retriever = TwoTowerRetriever.load(artifact_dir, tables)
    users = np.flatnonzero(np.diff(data.valid.indptr) > 0)
    kk = max(k, 10)
    ranked, _ = retriever.candidates(data.sequences, users, _seen(data, users), kk)
    m = ranking_metrics(ranked, sp.csr_matrix(data.valid[users]), ks=sorted({10, kk}))
    return {f"valid_{key}": float(m[key]) for key in (f"recall@{kk}", "recall@10", "ndcg@10")}


def _seen(data: RetrievalData, users: np.ndarray) -> sp.csr_matrix:
    """Train items of ``users`` only, as a ``(n_users + 1, n_items)`` CSR (the rest of its rows empty).

    The whole log's matrix would cost 12 bytes per interaction to score a sample of users.
    """
    s = data.sequences
    starts, lengths = s.offsets[users], s.offsets[users + 1] - s.offsets[users]
    cols = gather_ranges(np.asarray(s.items), starts, lengths)
    m = sp.csr_matrix(
        (np.ones(len(cols), np.float32), (np.repeat(users, lengths), cols)),
        shape=(len(s.offsets) - 1, data.items.n_items),
    )
    m.data[:] = 1.0
    return m


# --- training -----------------------------------------------------------------------------------------
@dataclass
class DistributedResult:
    """What a run leaves in ``result.json`` (rank 0).

    Attributes:
        losses: global-batch mean loss of every step of this run (resumed runs: the steps after the resume).
        first_step: the step the run started from (0 unless resumed).
        metrics: valid-split ranking metrics of the consolidated model.
        plan: table -> sharding type, kernel and ranks (empty for single-process training).
        settings: the training settings.
        timing: wall times (vary run to run).
        card: the consolidated artifact's model card (as a dict).
    """

    losses: list[float]
    first_step: int
    metrics: dict[str, float]
    plan: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)


def train_distributed(
    features_dir: str | Path,
    out_dir: str | Path,
    *,
    sharding: Sharding = "table_wise",
    steps: int = 100,
    batch_size: int = 512,
    seed: int = 42,
    embedding_dim: int = 64,
    tower_dims: tuple[int, ...] = (128, 64),
    similarity: Similarity = "cosine",
    temperature: float = 0.05,
    history_length: int = 50,
    history_decay: float = 0.9,
    dropout: float = 0.1,
    n_random_negatives: int = 0,
    embedding_lr: float = 0.05,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    checkpoint_every: int = 0,
    resume_from: str | Path | None = None,
    monitor_k: int = 100,
    log_every: int = 1,
    sequences_dir: str | Path | None = None,
    max_valid_users: int | None = None,
    epochs: int | None = None,
    max_steps: int | None = None,
    splits: tuple[str, ...] = (TRAIN,),
) -> DistributedResult | None:
    """Train the two-tower model on the train split, sharded over the torchrun job (or in one process).

    Writes (rank 0) ``out_dir/result.json``, the consolidated artifact ``out_dir/model/``, the DMP model's
    embeddings of :func:`probe_batch` in ``out_dir/probe.pt``; every rank writes its shards of
    ``out_dir/checkpoints/step_NNNNNN/``.

    Args:
        features_dir: output of the ``features`` stage.
        out_dir: where the outputs go.
        sharding: ``table_wise`` / ``column_wise`` / ``data_parallel`` for every table, or ``auto`` (the
            planner chooses among the shardings that run on this device).
        steps: optimizer steps in all (a resumed run continues up to this many).
        batch_size: global batch (positives per step, all ranks together); a multiple of the world size.
        seed: seeds the weights, the batch order and the random negatives (the same on every rank).
        embedding_dim / tower_dims / similarity / temperature / history_* / dropout: architecture.
        n_random_negatives: uniformly drawn extra negatives per global batch.
        embedding_lr: Adagrad learning rate of the embedding tables.
        lr / weight_decay: AdamW of the MLPs.
        checkpoint_every: also checkpoint every this many steps (0 = only at the end).
        resume_from: a checkpoint directory to continue from (same architecture and data settings).
        monitor_k: K of ``valid_recall@K``.
        log_every: log the loss every this many steps (rank 0).
        sequences_dir: serve the examples from memory-mapped arrays laid out there (bounded memory on a
            log of any length); None reads the train split into memory.
        max_valid_users: score a seeded sample of at most this many valid users.
        epochs: train this many passes over the examples instead of ``steps`` (full global batches).
        max_steps: a cap on the steps that ``steps`` or ``epochs`` ask for (None: no cap).
        splits: the example splits (``train``; ``train valid`` for P1's refit, which is not scored).

    Returns:
        The result on rank 0, None on the other ranks.
    """
    started = time.perf_counter()
    cluster = start_job(sharding, batch_size)
    out = Path(out_dir)
    settings = {
        "sharding": sharding,
        "batch_size": batch_size,
        "seed": seed,
        "dropout": dropout,
        "n_random_negatives": n_random_negatives,
        "embedding_lr": embedding_lr,
        "lr": lr,
        "weight_decay": weight_decay,
        "world_size": cluster.world_size,
    }
    tables, data = load_retrieval_data(
        features_dir,
        sequences_dir=sequences_dir,
        max_valid_users=max_valid_users,
        seed=seed,
        cluster=cluster,
        splits=splits,
    )
    if epochs is not None:
        steps = epochs * (len(data.sequences.items) // batch_size)
    if max_steps is not None:
        steps = min(steps, max_steps)
    settings.update(steps=steps, splits=list(splits), examples=len(data.sequences.items))
    config = TwoTowerConfig(
        query_features=tables.query_cardinalities(),
        candidate_features=tables.items.cardinalities,
        embedding_dim=embedding_dim,
        tower_dims=list(tower_dims),
        similarity=similarity,
        temperature=temperature,
        history_decay=history_decay,
        history_length=history_length,
        dropout=dropout,
    )
    seed_everything(seed)
    module: nn.Module = TrainTowers(TwoTower(config))
    plan = None
    if cluster.distributed:
        module, plan = shard(module, sharding, cluster, embedding_lr, batch_size // cluster.world_size)
    else:
        module = module.to(cluster.device)
    optimizer = make_optimizer(module, embedding_lr, lr, weight_decay)
    examples = ExampleBatches(data, history_length, history_decay, n_random_negatives, seed)
    first_step = 0
    if resume_from is not None:
        meta = CheckpointMeta.read(resume_from)
        _check_resumable(meta, config, settings, steps)
        load_checkpoint(resume_from, module, optimizer)
        first_step = meta.step
        examples.rng.bit_generator.state = meta.sampler_state
    if cluster.rank == 0:
        log.info("sharding plan: %s", describe_plan(plan))

    def checkpoint(step: int) -> Path:
        meta = CheckpointMeta(step, config, settings, examples.rng.bit_generator.state, cluster.world_size)
        return save_checkpoint(out / CHECKPOINTS_DIR / f"step_{step:06d}", module, optimizer, meta)

    log_q = torch.from_numpy(data.log_q(batch_size, n_random_negatives)).to(cluster.device)
    batches = global_batches(len(data.sequences.items), batch_size, seed)
    for _ in range(first_step):  # the batch order depends on the seed only: skip what was trained
        next(batches)
    losses: list[float] = []
    module.train()
    train_start = time.perf_counter()
    for step in range(first_step + 1, steps + 1):
        losses.append(train_step(module, optimizer, examples, next(batches), log_q, config, cluster))
        if cluster.rank == 0 and (step % log_every == 0 or step == first_step + 1):
            log.info("step %d loss %.5f", step, losses[-1])
        if checkpoint_every and step % checkpoint_every == 0 and step < steps:
            checkpoint(step)
    train_seconds = time.perf_counter() - train_start
    final = checkpoint(steps)
    probe = _probe(module, data, config, cluster)
    end_job(cluster)
    # The trained weights are in the checkpoint now: free the sharded model and its optimizer state (two
    # copies of every table) before consolidation loads the whole model again.
    module = optimizer = examples = None  # type: ignore[assignment]
    gc.collect()
    if cluster.rank != 0:
        return None

    # Rank 0 alone from here: nothing below is a collective, so a failure cannot leave a rank waiting.
    torch.save(probe, out / PROBE_FILE)
    training = {"settings": settings, "steps": steps, "final_loss": losses[-1] if losses else None}
    card = consolidate(final, features_dir, out / MODEL_DIR, training=training)
    result = DistributedResult(
        losses=losses,
        first_step=first_step,
        metrics=valid_metrics(out / MODEL_DIR, tables, data, monitor_k),
        plan=plan_summary(plan),
        settings=settings,
        timing={
            "train_seconds": train_seconds,
            "seconds_per_step": train_seconds / max(len(losses), 1),
            "total_seconds": time.perf_counter() - started,
        },
        card=card.model_dump(),
    )
    write_json(asdict(result), out / RESULT_FILE)
    return result


def train_step(
    module: nn.Module,
    optimizer: KeyedOptimizer,
    examples: ExampleBatches,
    rows: np.ndarray,
    log_q: torch.Tensor,
    config: TwoTowerConfig,
    cluster: Cluster,
) -> float:
    """One optimizer step on this rank's slice of the global batch ``rows`` ``(B,)``.

    Returns:
        The loss of the global batch (mean over its ``B`` queries, all ranks together).
    """
    local = len(rows) // cluster.world_size
    batch = examples[rows[cluster.rank * local : (cluster.rank + 1) * local].tolist()]
    # Candidates of the global batch: every rank's positives in rank order, then the random negatives
    # (drawn identically on every rank, so each rank embeds them itself).
    items = torch.cat([torch.from_numpy(examples.data.sequences.items[rows]), batch["items"][local:]])
    q, c = module(batch["query"].to(cluster.device), batch["candidate"].to(cluster.device))
    c = torch.cat([gather_candidates(c[:local], cluster), c[local:]])
    labels = torch.arange(local, device=cluster.device) + cluster.rank * local
    loss_sum = sampled_softmax_loss(
        q, c, items.to(cluster.device), log_q, config.temperature, labels=labels, reduction="sum"
    )
    return backward_and_step(optimizer, loss_sum, local, cluster)


def _check_resumable(
    meta: CheckpointMeta, config: TwoTowerConfig, settings: dict[str, Any], steps: int
) -> None:
    if meta.config != config:
        raise ValueError(f"cannot resume: the checkpoint's architecture {meta.config} differs from {config}")
    for key in ("batch_size", "seed", "n_random_negatives"):
        if meta.settings.get(key) != settings[key]:
            raise ValueError(
                f"cannot resume: the checkpoint was trained with {key}={meta.settings.get(key)}, this run "
                f"has {key}={settings[key]} (the batch order and negatives would not continue)"
            )
    if meta.step > steps:
        raise ValueError(f"cannot resume: the checkpoint is at step {meta.step}, past steps={steps}")


@torch.no_grad()
def _probe(module: nn.Module, data: RetrievalData, config: TwoTowerConfig, cluster: Cluster) -> dict:
    """The trained (DMP) model's embeddings of :func:`probe_batch`; every rank passes the same batch."""
    module.eval()
    batch = probe_batch(data, config)
    q, c = module(batch["query"].to(cluster.device), batch["candidate"].to(cluster.device))
    return {
        "users": torch.from_numpy(batch["users"]),
        "items": torch.from_numpy(batch["items"]),
        "query": q.cpu(),
        "candidate": c.cpu(),
    }


# --- command line -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """``torchrun ... -m recstack.training.distributed --features DIR --out DIR [...]``."""
    p = argparse.ArgumentParser(prog="recstack.training.distributed", description=__doc__.split("\n")[0])
    p.add_argument("--features", required=True, type=Path, help="features stage output")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--sharding", choices=SHARDINGS, default="table_wise")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=512, help="global batch (all ranks)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--tower-dims", type=int, nargs="+", default=[128, 64])
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--similarity", choices=["cosine", "dot"], default="cosine")
    p.add_argument("--temperature", type=float, default=0.05)
    p.add_argument("--history-length", type=int, default=50)
    p.add_argument("--history-decay", type=float, default=0.9)
    p.add_argument("--monitor-k", type=int, default=100, help="K of valid_recall@K")
    p.add_argument("--n-random-negatives", type=int, default=0)
    p.add_argument("--embedding-lr", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW of the MLPs")
    p.add_argument("--weight-decay", type=float, default=1e-5)
    p.add_argument("--log-every", type=int, default=1, help="log the loss every N steps (rank 0)")
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--resume-from", type=Path, default=None, help="checkpoint directory to continue from")
    p.add_argument(
        "--sequences-dir",
        type=Path,
        default=None,
        help="serve the examples from memory-mapped arrays laid out here (bounded memory)",
    )
    p.add_argument("--max-valid-users", type=int, default=None, help="score a sample of valid users")
    p.add_argument("--epochs", type=int, default=None, help="passes over the examples (overrides --steps)")
    p.add_argument("--max-steps", type=int, default=None, help="at most this many steps (caps --epochs)")
    p.add_argument("--splits", nargs="+", default=[TRAIN], help="example splits (train valid: P1's refit)")
    p.add_argument(
        "--consolidate",
        type=Path,
        default=None,
        metavar="CHECKPOINT",
        help="only turn CHECKPOINT into the artifact --out (one process, no training)",
    )
    a = p.parse_args(argv)
    # Only this module's progress at INFO: fbgemm logs every kernel's arguments at INFO on the root logger.
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s", force=True)
    log.setLevel(logging.INFO)
    if a.consolidate is not None:
        consolidate(a.consolidate, a.features, a.out)
        return
    train_distributed(
        a.features,
        a.out,
        sharding=a.sharding,
        steps=a.steps,
        batch_size=a.batch_size,
        seed=a.seed,
        embedding_dim=a.embedding_dim,
        tower_dims=tuple(a.tower_dims),
        dropout=a.dropout,
        similarity=a.similarity,
        temperature=a.temperature,
        history_length=a.history_length,
        history_decay=a.history_decay,
        monitor_k=a.monitor_k,
        n_random_negatives=a.n_random_negatives,
        embedding_lr=a.embedding_lr,
        lr=a.lr,
        weight_decay=a.weight_decay,
        log_every=a.log_every,
        checkpoint_every=a.checkpoint_every,
        resume_from=a.resume_from,
        sequences_dir=a.sequences_dir,
        max_valid_users=a.max_valid_users,
        epochs=a.epochs,
        max_steps=a.max_steps,
        splits=tuple(a.splits),
    )


def launch(
    features_dir: str | Path,
    out_dir: str | Path,
    *,
    nproc: int,
    timeout: float | None = None,
    **options: Any,
) -> DistributedResult:
    """Run :func:`train_distributed` under ``torchrun --standalone --nproc_per_node=nproc`` and wait.

    This is how a training stage switches to sharded training (``train_retrieval.nproc``). ``options``
    are :func:`train_distributed`'s keyword arguments. Multi-node jobs run the documented ``torchrun
    --nnodes ... --rdzv-endpoint ...`` command on every node instead.

    Raises:
        RuntimeError: the job failed; the message holds the end of its output.
    """
    run_torchrun(
        "recstack.training.distributed",
        {"features": features_dir, "out": out_dir, **options},
        nproc=nproc,
        timeout=timeout,
    )
    data = json.loads((Path(out_dir) / RESULT_FILE).read_text())
    return DistributedResult(**data)


def run_torchrun(module: str, options: dict[str, Any], *, nproc: int, timeout: float | None = None) -> None:
    """``torchrun --standalone --nproc_per_node=nproc -m module --option value ...``, waited for.

    ``options`` become flags (``sequences_dir`` -> ``--sequences-dir``; lists and tuples give several
    values; None is left out).

    Raises:
        RuntimeError: the job failed; the message holds the end of its output.
    """
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    args: list[str] = []
    for key, value in options.items():
        if value is None:
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", module, *args,
    ]  # fmt: skip
    # Each process gets its share of the cores (torchrun's default of 1 thread would idle the rest).
    threads = max(1, (os.cpu_count() or 1) // nproc)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-6000:]
        raise RuntimeError(f"torchrun with {nproc} processes failed (exit {proc.returncode}):\n{tail}")


if __name__ == "__main__":
    main()
