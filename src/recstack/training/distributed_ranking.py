"""Distributed training of the DLRM ranker: TorchRec DistributedModelParallel under torchrun.

Run (2 CPU processes, gloo; nccl and one GPU per process when CUDA is available), on pairs saved by the
``train_ranking`` stage (:func:`recstack.training.train_ranking.prepare_ranking`)::

    torchrun --standalone --nproc_per_node=2 -m recstack.training.distributed_ranking \\
        --features artifacts/features --pairs artifacts/train_ranking/distributed/pairs \\
        --out artifacts/train_ranking/distributed/job --sharding table_wise --epochs 20 --patience 3

The same plain loop as the two-tower job (:mod:`recstack.training.distributed`, which says why not
Lightning), and the same math as one process:

* Every rank draws the same global batch order of the training pairs from the seed and takes a disjoint,
  equal slice of every global batch (full batches only).
* Each rank's loss is the mean binary cross-entropy of its slice; DDP averages the dense gradients and
  TorchRec divides the sharded tables' gradients by the world size: the update is that of the global batch.
* Tables train with Adagrad (fused into the backward pass of the sharded tables: the fused CPU kernels
  offer SGD and Adagrad, not Adam), the dense layers with AdamW. The Lightning stage trains everything with
  AdamW, so the reference for parity is this loop in one process.
* After every epoch the held-out users' candidate lists are re-ranked, each rank scoring its share of the
  users through the sharded model; the logits are gathered and every rank computes the same
  ``valid_ndcg@10`` (:func:`recstack.training.ranking.rerank_metrics`, the Lightning stage's early-stopping
  metric), so all ranks take the same early-stopping decision without another message.
* Every epoch is checkpointed (sharded, DCP). The best epoch's checkpoint is consolidated into the
  single-file artifact that evaluation and serving load; the others are removed as training goes.

Outputs under ``--out``: ``checkpoints/epoch_NNN/`` (the best and the last), ``model/``, ``result.json``.

An interrupted job continues with the same command plus ``--resume``: from its last epoch checkpoint
(weights, both optimizers' state, the validation history that early stopping reads), drawing the batches the
uninterrupted job would have drawn. Any torchrun world size and sharding can resume it (DCP reshards).
"""

from __future__ import annotations

import argparse
import gc
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.optim.keyed import KeyedOptimizer

from recstack.jsonio import read_json, write_json
from recstack.models.inputs import FeatureTables
from recstack.models.ranker import Ranker, RankerConfig
from recstack.training.common import seed_everything
from recstack.training.distributed import CHECKPOINTS_DIR, MODEL_DIR, RESULT_FILE, global_batches
from recstack.training.ranking import CandidateRows, PairBatches, RankingPairs, rerank_metrics
from recstack.training.sharded_checkpoint import CheckpointMeta, consolidate, load_checkpoint, save_checkpoint
from recstack.training.sharding import (
    SHARDINGS,
    Cluster,
    Sharding,
    backward_and_step,
    describe_plan,
    end_job,
    make_optimizer,
    plan_summary,
    shard,
    start_job,
)

log = logging.getLogger(__name__)

SETUP_FILE = "setup.json"  # next to the saved pairs: the ranker config and the train / held-out users
HISTORY_FILE = "history.json"  # in every epoch checkpoint: the validation history up to it (for resuming)
RESUME_KEYS = ("batch_size", "seed", "steps_per_epoch", "train_pairs")  # must match to continue a job
MONITOR = "valid_ndcg@10"
VALID_USERS_PER_BATCH = 64  # held-out users per scoring batch (x N candidates = pairs per forward)


class TrainRanker(nn.Module):
    """The ranker as DMP's module: ``forward(dense (B, F), sparse KJT of batch B) -> logits (B,)``.

    A wrapper so that checkpoint keys carry the ``model.`` prefix every recstack checkpoint has.
    """

    def __init__(self, model: Ranker):
        super().__init__()
        self.model = model

    def forward(self, dense: torch.Tensor, sparse: KeyedJaggedTensor) -> torch.Tensor:
        return self.model(dense, sparse)


# --- what the stage hands the job ----------------------------------------------------------------------
def save_setup(
    directory: str | Path,
    pairs: RankingPairs,
    config: RankerConfig,
    train_rows: np.ndarray,
    valid_rows: np.ndarray,
) -> Path:
    """Write the pairs (memory-mappable arrays), the ranker config and the train / held-out user rows."""
    out = pairs.save(directory)
    np.save(out / "train_rows.npy", train_rows)
    np.save(out / "valid_rows.npy", valid_rows)
    write_json({"config": config.model_dump()}, out / SETUP_FILE)
    return out


def open_setup(directory: str | Path) -> tuple[RankingPairs, RankerConfig, np.ndarray, np.ndarray]:
    """What :func:`save_setup` wrote; the pairs memory-mapped."""
    d = Path(directory)
    if not (d / SETUP_FILE).is_file():
        raise FileNotFoundError(f"{d / SETUP_FILE} does not exist: {d} was not written by save_setup")
    config = RankerConfig(**read_json(d / SETUP_FILE)["config"])
    return RankingPairs.open(d), config, np.load(d / "train_rows.npy"), np.load(d / "valid_rows.npy")


# --- training -----------------------------------------------------------------------------------------
@dataclass
class RankingJobResult:
    """What a job leaves in ``result.json`` (rank 0).

    Attributes:
        losses: global-batch mean loss of every step.
        history: per epoch: ``epoch``, ``train_loss`` and the :func:`rerank_metrics` of the held-out users.
        best_epoch: the epoch whose model was kept (highest ``valid_ndcg@10``).
        plan: table -> sharding type, kernel and ranks (empty for single-process training).
        settings: the training settings.
        timing: wall times (vary run to run).
        card: the artifact's model card (as a dict).
    """

    losses: list[float]
    history: list[dict[str, float]]
    best_epoch: int
    plan: dict[str, dict[str, Any]]
    settings: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, float]:
        """The best epoch's line of :attr:`history`."""
        return next(h for h in self.history if h["epoch"] == self.best_epoch)


def train_ranking_distributed(
    features_dir: str | Path,
    pairs_dir: str | Path,
    out_dir: str | Path,
    *,
    sharding: Sharding = "table_wise",
    epochs: int = 20,
    patience: int = 3,
    steps: int | None = None,
    batch_size: int = 2048,
    seed: int = 42,
    embedding_lr: float = 0.05,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    log_every: int = 50,
    valid_batch_users: int = VALID_USERS_PER_BATCH,
    resume: bool = False,
) -> RankingJobResult | None:
    """Train the ranker on saved pairs, sharded over the torchrun job (or in one process outside torchrun).

    Args:
        features_dir: the ``features`` stage output (the sparse features' tables, the spec).
        pairs_dir: written by :func:`save_setup`.
        out_dir: where the outputs go.
        sharding: ``table_wise`` / ``column_wise`` / ``data_parallel`` for every table, or ``auto``.
        epochs: at most this many passes over the training pairs.
        patience: stop after this many epochs without a better ``valid_ndcg@10`` (0: never stop early).
        steps: stop each epoch after this many steps (smoke runs and tests); None: whole epochs.
        batch_size: global batch of pairs (all ranks together); a multiple of the world size.
        seed: seeds the weights and the batch order (the same on every rank).
        embedding_lr: Adagrad learning rate of the tables.
        lr / weight_decay: AdamW of the dense layers.
        log_every: log the loss every this many steps (rank 0).
        valid_batch_users: held-out users per scoring batch.
        resume: continue from the last epoch checkpoint under ``out_dir`` (same pairs, batch size, seed
            and architecture; ``epochs`` / ``patience`` may grow). The result's ``losses`` are this run's.

    Returns:
        The result on rank 0, None on the other ranks.

    Raises:
        FileNotFoundError: ``resume`` without a checkpoint to resume from.
        ValueError: bad settings, or a checkpoint that this run's settings cannot continue.
    """
    started = time.perf_counter()
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    cluster = start_job(sharding, batch_size)
    out = Path(out_dir)
    last = _last_checkpoint(out / CHECKPOINTS_DIR) if resume else None
    if resume and last is None:
        raise FileNotFoundError(f"cannot resume: {out / CHECKPOINTS_DIR} holds no complete epoch checkpoint")
    if not resume and cluster.rank == 0:  # a previous run's epochs in the same place would be taken for ours
        shutil.rmtree(out / CHECKPOINTS_DIR, ignore_errors=True)
    if cluster.distributed:
        dist.barrier()
    tables = FeatureTables.load(features_dir)
    pairs, config, train_rows, valid_rows = open_setup(pairs_dir)
    train = PairBatches(pairs, tables, train_rows)
    per_epoch = len(train) // batch_size
    if per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(train)} training pairs")
    if steps is not None:
        per_epoch = min(per_epoch, steps)
    settings = {
        "sharding": sharding,
        "batch_size": batch_size,
        "seed": seed,
        "embedding_lr": embedding_lr,
        "lr": lr,
        "weight_decay": weight_decay,
        "epochs": epochs,
        "patience": patience,
        "steps_per_epoch": per_epoch,
        "train_pairs": len(train),
        "world_size": cluster.world_size,
        "dmp": cluster.distributed,  # DMP jobs keep fused table-optimizer state; the plain loop, torch's own
    }
    seed_everything(seed)
    module: nn.Module = TrainRanker(Ranker(config))
    plan = None
    if cluster.distributed:
        module, plan = shard(module, sharding, cluster, embedding_lr, batch_size // cluster.world_size)
    optimizer = make_optimizer(module, embedding_lr, lr, weight_decay)
    if cluster.rank == 0:
        log.info("sharding plan: %s", describe_plan(plan))

    batches = global_batches(len(train), batch_size, seed)
    losses: list[float] = []
    history: list[dict[str, float]] = []
    best_epoch, best_value, since_best = 0, -np.inf, 0
    kept: dict[int, Path] = {}
    done = 0
    if last is not None:
        done, history = _resume(last, module, optimizer, config, settings)
        for h in history:
            best_epoch, best_value, since_best = _track(h, best_epoch, best_value, since_best)
        kept = {e: d for e in (best_epoch, done) if (d := out / CHECKPOINTS_DIR / f"epoch_{e:03d}").is_dir()}
        for _ in range(done * (len(train) // batch_size)):  # the batches the finished epochs drew
            next(batches)
        if cluster.rank == 0:
            log.info("resumed after epoch %d (best %.5f at epoch %d)", done, best_value, best_epoch)
    train_seconds = 0.0
    stopped = bool(patience and since_best >= patience)
    for epoch in range(done + 1, epochs + 1):
        if stopped:
            break
        module.train()
        start = time.perf_counter()
        epoch_losses = []
        for _ in range(per_epoch):
            epoch_losses.append(_step(module, optimizer, train, next(batches), cluster))
            step = len(losses) + len(epoch_losses)
            if cluster.rank == 0 and (step == 1 or step % log_every == 0):
                log.info("epoch %d step %d loss %.5f", epoch, step, epoch_losses[-1])
        # An epoch's permutation is drawn whole: skip its rest when steps cut the epoch short.
        for _ in range(len(train) // batch_size - per_epoch):
            next(batches)
        train_seconds += time.perf_counter() - start
        losses += epoch_losses
        metrics = {
            "epoch": epoch,
            "train_loss": float(np.mean(epoch_losses)),
            **_validate(module, pairs, tables, valid_rows, cluster, valid_batch_users),
        }
        history.append(metrics)
        meta = CheckpointMeta(epoch, config, settings, {}, cluster.world_size, kind="dlrm")
        if cluster.rank == 0:  # before the DCP save, whose meta.json marks the checkpoint complete
            write_json(history, out / CHECKPOINTS_DIR / f"epoch_{epoch:03d}" / HISTORY_FILE)
        kept[epoch] = save_checkpoint(out / CHECKPOINTS_DIR / f"epoch_{epoch:03d}", module, optimizer, meta)
        best_epoch, best_value, since_best = _track(metrics, best_epoch, best_value, since_best)
        if cluster.rank == 0:
            log.info(
                "epoch %d %s %.5f (best %.5f at epoch %d)",
                epoch,
                MONITOR,
                metrics[MONITOR],
                best_value,
                best_epoch,
            )
            for e in [e for e in kept if e not in (best_epoch, epoch)]:
                shutil.rmtree(kept.pop(e))
        stopped = bool(patience and since_best >= patience)
    end_job(cluster)
    module = optimizer = None  # type: ignore[assignment]
    gc.collect()
    if cluster.rank != 0:
        return None

    best = next(h for h in history if h["epoch"] == best_epoch)
    training = {"settings": settings, "best_epoch": best_epoch, "valid": best}
    card = consolidate(kept[best_epoch], features_dir, out / MODEL_DIR, training=training)
    result = RankingJobResult(
        losses=losses,
        history=history,
        best_epoch=best_epoch,
        plan=plan_summary(plan),
        settings=settings,
        timing={
            "train_seconds": train_seconds,
            "seconds_per_step": train_seconds / max(len(losses), 1),
            "pairs_per_second": len(losses) * batch_size / max(train_seconds, 1e-9),
            "total_seconds": time.perf_counter() - started,
        },
        card=card.model_dump(),
    )
    write_json(asdict(result), out / RESULT_FILE)
    return result


def _track(
    metrics: dict[str, float], best_epoch: int, best_value: float, since_best: int
) -> tuple[int, float, int]:
    """Early stopping's state after one more epoch's metrics: (best epoch, best value, epochs since)."""
    if metrics[MONITOR] > best_value:
        return int(metrics["epoch"]), float(metrics[MONITOR]), 0
    return best_epoch, best_value, since_best + 1


def _last_checkpoint(checkpoints: Path) -> Path | None:
    """The latest complete epoch checkpoint (one whose ``meta.json`` was written), or None."""
    done = sorted(d for d in checkpoints.glob("epoch_*") if CheckpointMeta.is_complete(d))
    return done[-1] if done else None


def _resume(
    checkpoint: Path, module: nn.Module, optimizer: KeyedOptimizer, config: RankerConfig, settings: dict
) -> tuple[int, list[dict[str, float]]]:
    """Load ``checkpoint`` into the module and optimizer; return its epoch and validation history.

    Raises:
        ValueError: another architecture or model kind, or settings the batch order depends on differ.
    """
    meta = CheckpointMeta.read(checkpoint)
    if meta.kind != "dlrm" or meta.config != config:
        raise ValueError(f"cannot resume: {checkpoint} holds another model ({meta.kind}, {meta.config})")
    if meta.settings.get("dmp", True) != settings["dmp"]:
        was, now = (
            ("a torchrun (DMP) job", "this plain process")
            if settings["dmp"] is False
            else ("the plain loop", "this torchrun (DMP) job")
        )
        raise ValueError(
            f"cannot resume: {checkpoint} was written by {was}, whose optimizer state {now} cannot load; "
            "resume a torchrun job under torchrun (any --nproc_per_node), a plain run without it"
        )
    for key in RESUME_KEYS:
        if meta.settings.get(key) != settings[key]:
            raise ValueError(
                f"cannot resume: {checkpoint} was trained with {key}={meta.settings.get(key)}, this run has "
                f"{key}={settings[key]} (the batch order would not continue)"
            )
    load_checkpoint(checkpoint, module, optimizer)
    return meta.step, read_json(checkpoint / HISTORY_FILE)


def _step(
    module: nn.Module, optimizer: KeyedOptimizer, train: PairBatches, rows: np.ndarray, cluster: Cluster
) -> float:
    """One optimizer step on this rank's slice of the global batch ``rows`` ``(B,)`` of training pairs.

    Returns:
        The mean loss of the global batch (all ranks together).
    """
    local = len(rows) // cluster.world_size
    batch = train[rows[cluster.rank * local : (cluster.rank + 1) * local].tolist()]
    logits = module(batch["dense"].to(cluster.device), batch["sparse"].to(cluster.device))
    loss_sum = F.binary_cross_entropy_with_logits(logits, batch["label"].to(cluster.device), reduction="sum")
    return backward_and_step(optimizer, loss_sum, local, cluster)


@torch.no_grad()
def _validate(
    module: nn.Module,
    pairs: RankingPairs,
    tables: FeatureTables,
    valid_rows: np.ndarray,
    cluster: Cluster,
    per_batch: int,
) -> dict[str, float]:
    """:func:`rerank_metrics` of the held-out users, each rank scoring a contiguous share of them.

    Every rank makes the same number of forward calls (the sharded tables' all-to-alls pair up across
    ranks): a rank with fewer users repeats its last batch and drops the repeat's logits.
    """
    module.eval()
    shares = np.array_split(valid_rows, cluster.world_size)
    n_batches = -(-max(len(s) for s in shares) // per_batch)
    own = shares[cluster.rank] if len(shares[cluster.rank]) else valid_rows[:1]
    rows = CandidateRows(pairs, tables, own)
    n = pairs.n_candidates
    logits = []
    for b in range(n_batches):
        idx = list(range(b * per_batch, min((b + 1) * per_batch, len(own))))
        if not idx:  # this rank is done: a repeat of its last users keeps the collectives in step
            idx = list(range(max(0, len(own) - per_batch), len(own)))
            batch = rows[idx]
            module(batch["dense"].to(cluster.device), batch["sparse"].to(cluster.device))
            continue
        batch = rows[idx]
        out = module(batch["dense"].to(cluster.device), batch["sparse"].to(cluster.device))
        logits.append(out.cpu().numpy().reshape(-1, n))
    mine = np.concatenate(logits)[: len(shares[cluster.rank])]
    if cluster.distributed:
        gathered: list[Any] = [None] * cluster.world_size
        dist.all_gather_object(gathered, mine)
        mine = np.concatenate(gathered)
    return rerank_metrics(pairs, valid_rows, mine, tables.items.n_items)


# --- command line -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    """``torchrun ... -m recstack.training.distributed_ranking --features DIR --pairs DIR --out DIR``."""
    p = argparse.ArgumentParser(
        prog="recstack.training.distributed_ranking", description=__doc__.split("\n")[0]
    )
    p.add_argument("--features", required=True, type=Path, help="features stage output")
    p.add_argument("--pairs", required=True, type=Path, help="pairs and setup written by save_setup")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--sharding", choices=SHARDINGS, default="table_wise")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--patience", type=int, default=3, help="0: never stop early")
    p.add_argument("--steps", type=int, default=None, help="at most this many steps per epoch")
    p.add_argument("--batch-size", type=int, default=2048, help="global batch of pairs (all ranks)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--embedding-lr", type=float, default=0.05, help="Adagrad of the tables")
    p.add_argument("--lr", type=float, default=1e-3, help="AdamW of the dense layers")
    p.add_argument("--weight-decay", type=float, default=1e-6)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--valid-batch-users", type=int, default=VALID_USERS_PER_BATCH)
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint in --out")
    a = p.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(name)s %(message)s", force=True)
    log.setLevel(logging.INFO)
    train_ranking_distributed(
        a.features,
        a.pairs,
        a.out,
        sharding=a.sharding,
        epochs=a.epochs,
        patience=a.patience,
        steps=a.steps,
        batch_size=a.batch_size,
        seed=a.seed,
        embedding_lr=a.embedding_lr,
        lr=a.lr,
        weight_decay=a.weight_decay,
        log_every=a.log_every,
        valid_batch_users=a.valid_batch_users,
        resume=a.resume,
    )


def read_result(out_dir: str | Path) -> RankingJobResult:
    """The ``result.json`` a job wrote."""
    return RankingJobResult(**read_json(Path(out_dir) / RESULT_FILE))


if __name__ == "__main__":
    main()
