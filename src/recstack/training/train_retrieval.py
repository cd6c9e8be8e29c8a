"""The ``train_retrieval`` stage: fit the two-tower model with early stopping, then refit (protocol P1).

1. Train on the train part (P1's ``train_sub``), validate every epoch on the valid part with full-catalog
   ranking, stop early on ``valid_recall@K``, keep the best epoch. This model is saved as
   ``artifacts/train_retrieval/valid_model``: the ranker's training data comes from its candidates, which
   see the valid period as the future (no leakage).
2. Refit on train + valid for the best number of epochs with the same seed: ``artifacts/train_retrieval/model``,
   the model that evaluation tests and serving loads.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import polars as pl

from recstack.data.io import INTERACTIONS_FILE
from recstack.data.split import FIT_SPLITS, SPLIT, TRAIN, VALID
from recstack.evaluation.topk import interaction_matrix
from recstack.models.artifact import ModelCard, load_card, save_artifact
from recstack.models.inputs import FeatureTables, Sequences
from recstack.models.two_tower import Similarity, TwoTower, TwoTowerConfig
from recstack.training.common import BestState, EpochTimer, make_trainer, seed_everything, sharded_engine
from recstack.training.retrieval import RetrievalData, RetrievalSystem

VALID_MODEL_DIR = "valid_model"
MODEL_DIR = "model"
DVCLIVE_DIR = "dvclive"


@dataclass
class TrainRetrievalResult:
    """Both artifacts' cards and the stage's metrics."""

    valid_card: ModelCard
    card: ModelCard
    metrics: dict[str, Any]  # deterministic: `dvc metrics show` and repeated runs compare them
    timing: dict[str, float]  # wall times and throughput: vary run to run, kept out of the metrics
    history: list[dict[str, float]]


def _fit(
    config: TwoTowerConfig,
    data: RetrievalData,
    *,
    max_epochs: int,
    log_dir: Path | None,
    monitor: str | None,
    patience: int,
    system_kwargs: dict[str, Any],
    seed: int,
) -> tuple[TwoTower, EpochTimer, BestState]:
    seed_everything(seed)
    model = TwoTower(config)
    system = RetrievalSystem(model, data, seed=seed, **system_kwargs)
    timer = EpochTimer(len(data.sequences.items))
    best = BestState(monitor or "", mode="max")
    trainer = make_trainer(
        max_epochs,
        log_dir,
        [timer, best],
        monitor=monitor,
        patience=patience,
        validate=data.valid is not None,
    )
    trainer.fit(system)
    if monitor is not None and best.state is not None:
        system.load_state_dict(best.state)
    model.eval()
    return model, timer, best


def train_retrieval(
    features_dir: str | Path,
    out_dir: str | Path,
    *,
    embedding_dim: int = 64,
    tower_dims: tuple[int, ...] = (128, 64),
    similarity: Similarity = "cosine",
    temperature: float = 0.05,
    history_length: int = 50,
    history_decay: float = 0.9,
    dropout: float = 0.1,
    batch_size: int = 512,
    n_random_negatives: int = 0,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    max_epochs: int = 30,
    patience: int = 3,
    monitor_k: int = 100,
    refit: bool = True,
    seed: int = 42,
    nproc: int = 1,
    engine: str = "auto",
    sharding: str = "table_wise",
    max_valid_users: int | None = None,
    max_steps: int | None = None,
) -> TrainRetrievalResult:
    """Train the two-tower retrieval model (see the module docstring for the two phases).

    With ``nproc > 1`` or ``engine="dmp"`` both phases run as TorchRec sharded jobs under torchrun
    instead (:func:`train_retrieval_sharded`).

    Args:
        features_dir: output of the ``features`` stage.
        out_dir: ``artifacts/train_retrieval``: ``valid_model/``, ``model/`` and ``dvclive/`` go there.
        embedding_dim / tower_dims / similarity / temperature / history_* / dropout: architecture
            (:class:`TwoTowerConfig`).
        batch_size: positives per batch; each sees the others as negatives.
        n_random_negatives: extra uniformly drawn negatives per batch.
        lr / weight_decay: AdamW.
        max_epochs / patience / monitor_k: early stopping on ``valid_recall@{monitor_k}``.
        refit: retrain on train + valid for the best epoch count (P1); False saves the phase-1 model as
            ``model`` too.
        seed: seeds weights, batch order and negatives.
        nproc / engine: processes, and what trains (:func:`recstack.training.common.sharded_engine`).
        sharding / max_valid_users / max_steps: the sharded path's settings (:func:`train_retrieval_sharded`).
    """
    if sharded_engine(engine, nproc):
        return train_retrieval_sharded(
            features_dir,
            out_dir,
            nproc=nproc,
            sharding=sharding,
            embedding_dim=embedding_dim,
            tower_dims=tower_dims,
            similarity=similarity,
            temperature=temperature,
            history_length=history_length,
            history_decay=history_decay,
            dropout=dropout,
            batch_size=batch_size,
            n_random_negatives=n_random_negatives,
            lr=lr,
            weight_decay=weight_decay,
            epochs=max_epochs,
            monitor_k=monitor_k,
            refit=refit,
            seed=seed,
            max_valid_users=max_valid_users,
            max_steps=max_steps,
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = FeatureTables.load(features_dir)
    interactions = pl.read_parquet(Path(features_dir) / INTERACTIONS_FILE)
    n_users, n_items = tables.spec.user_id.size, tables.spec.item_id.size
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
    system_kwargs = {
        "batch_size": batch_size,
        "n_random": n_random_negatives,
        "lr": lr,
        "weight_decay": weight_decay,
        "monitor_k": monitor_k,
    }
    monitor = f"valid_recall@{monitor_k}"
    train_part = interactions.filter(pl.col(SPLIT) == TRAIN)
    valid_part = interactions.filter(pl.col(SPLIT) == VALID)
    data = RetrievalData(
        tables.items,
        tables.users,
        Sequences.from_interactions(train_part, n_users),
        interaction_matrix(valid_part, n_users, n_items),
    )
    start = time.perf_counter()
    model, timer, best = _fit(
        config,
        data,
        max_epochs=max_epochs,
        log_dir=out / DVCLIVE_DIR,
        monitor=monitor,
        patience=patience,
        system_kwargs=system_kwargs,
        seed=seed,
    )
    phase1_seconds = time.perf_counter() - start
    best_epoch = max(best.best_epoch, 1)
    valid_metrics = next((h for h in best.history if h["epoch"] == best_epoch), {})
    settings = {**system_kwargs, "max_epochs": max_epochs, "patience": patience, "seed": seed}
    save = partial(
        save_artifact,
        kind="two_tower",
        config=config,
        features_dir=features_dir,
        spec=tables.spec,
        similarity=similarity,
    )
    valid_card = save(
        out / VALID_MODEL_DIR,
        model,
        training={"settings": settings, "fit_on": [TRAIN], "best_epoch": best_epoch, "valid": valid_metrics},
    )
    refit_timing: dict[str, float] = {}
    if refit:
        fit_data = RetrievalData(
            tables.items,
            tables.users,
            Sequences.from_interactions(interactions.filter(pl.col(SPLIT).is_in(FIT_SPLITS)), n_users),
        )
        start = time.perf_counter()
        model, refit_timer, _ = _fit(
            config,
            fit_data,
            max_epochs=best_epoch,
            log_dir=None,
            monitor=None,
            patience=patience,
            system_kwargs=system_kwargs,
            seed=seed,
        )
        refit_timing = {"refit_seconds": time.perf_counter() - start, **refit_timer.summary()}
    card = save(
        out / MODEL_DIR,
        model,
        training={
            "settings": settings,
            "fit_on": list(FIT_SPLITS) if refit else [TRAIN],
            "epochs": best_epoch,
            "valid": valid_metrics,
        },
    )
    metrics = {
        "best_epoch": best_epoch,
        "epochs_run": len(timer.seconds),
        **{k: v for k, v in valid_metrics.items() if k != "epoch"},
        "train_examples": len(data.sequences.items),
        "version": card.version,
    }
    timing = {
        **timer.summary(),
        "train_seconds": phase1_seconds,
        **{k if k.startswith("refit") else f"refit_{k}": v for k, v in refit_timing.items()},
    }
    return TrainRetrievalResult(valid_card, card, metrics, timing, best.history)


def train_retrieval_sharded(
    features_dir: str | Path,
    out_dir: str | Path,
    *,
    nproc: int,
    sharding: str = "table_wise",
    epochs: int = 1,
    refit: bool = True,
    max_valid_users: int | None = None,
    max_steps: int | None = None,
    **options: Any,
) -> TrainRetrievalResult:
    """The stage on TorchRec DistributedModelParallel: ``nproc`` processes under torchrun.

    The same two phases as the Lightning path, each a job of :mod:`recstack.training.distributed`:
    ``epochs`` passes over the train split, scored on valid (``valid_model/``), then, with ``refit``, the
    same number of passes over train + valid (``model/``). There is no early stopping: a sharded job
    trains a fixed budget (``max_epochs`` of the stage). The examples are served from memory-mapped
    sequences under ``out_dir/distributed/``; the jobs' sharded checkpoints and those sequences are removed
    once each is consolidated into its artifact (the CLI keeps them).

    Args:
        features_dir / out_dir: as for :func:`train_retrieval`.
        nproc: processes on this machine (``torchrun --standalone --nproc_per_node``).
        sharding: ``table_wise`` / ``column_wise`` / ``data_parallel`` / ``auto``.
        epochs: passes over the examples per phase.
        refit: also train on train + valid for the final ``model/``.
        max_valid_users: score a seeded sample of valid users (None: all).
        max_steps: end each phase after this many optimizer steps if that comes before ``epochs``
            passes (None: the full passes); the card and metrics record the steps trained.
        options: :func:`recstack.training.distributed.train_distributed` settings (architecture, batch
            size, negatives, learning rates, seed).
    """
    from recstack.training.distributed import CHECKPOINTS_DIR, launch

    out = Path(out_dir)
    work = out / "distributed"
    phases = [("valid", (TRAIN,), VALID_MODEL_DIR)]
    if refit:
        phases.append(("refit", FIT_SPLITS, MODEL_DIR))
    results = {}
    start = time.perf_counter()
    for name, splits, target in phases:
        job = work / name
        results[name] = launch(
            features_dir,
            job,
            nproc=nproc,
            sharding=sharding,
            epochs=epochs,
            splits=list(splits),
            sequences_dir=work / f"sequences_{name}",
            max_valid_users=max_valid_users if name == "valid" else None,
            max_steps=max_steps,
            **options,
        )
        # Checkpoints and the laid-out examples (a GB at 50M interactions) would only bloat the DVC cache.
        shutil.rmtree(job / CHECKPOINTS_DIR, ignore_errors=True)
        shutil.rmtree(work / f"sequences_{name}", ignore_errors=True)
        shutil.rmtree(out / target, ignore_errors=True)
        shutil.move(str(job / "model"), out / target)
    if not refit:
        shutil.copytree(out / VALID_MODEL_DIR, out / MODEL_DIR, dirs_exist_ok=True)
    valid = results["valid"]
    card = load_card(out / MODEL_DIR)
    metrics = {
        "best_epoch": epochs,
        "epochs_run": epochs,
        **valid.metrics,
        "train_examples": valid.settings["examples"],
        "train_steps": valid.settings["steps"],
        "version": card.version,
        "engine": "dmp",
        "nproc": nproc,
        "sharding": sharding,
    }
    timing = {
        **{f"{name}_{k}": v for name, r in results.items() for k, v in r.timing.items()},
        "train_seconds": time.perf_counter() - start,
    }
    history = [{"epoch": epochs, **valid.metrics}]
    return TrainRetrievalResult(load_card(out / VALID_MODEL_DIR), card, metrics, timing, history)
