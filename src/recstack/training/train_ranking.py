"""The ``train_ranking`` stage: train the DLRM ranker on the retrieval stage's own candidates.

The retriever used here is ``train_retrieval/valid_model`` (fit on the train part only), so the valid part
is a genuine future: its interactions are the labels, features are computed as of each user's last train
interaction. 10% of those users (seeded) are held out for early stopping on re-ranked ``valid_ndcg@10``.
The trained ranker is then applied, unchanged, to the refitted retriever's candidates at test time.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.split import TRAIN, VALID
from recstack.evaluation.topk import interaction_matrix, read_interactions
from recstack.models.artifact import ModelCard, save_artifact, write_card
from recstack.models.inputs import FeatureTables, Sequences
from recstack.models.ranker import Ranker, RankerConfig
from recstack.ranking.features import DENSE_FEATURES, RankingContext, ranker_cardinalities
from recstack.retrieval.two_tower import TwoTowerRetriever
from recstack.training.common import BestState, EpochTimer, make_trainer, seed_everything, sharded_engine
from recstack.training.ranking import RankingPairs, RankingSystem, build_pairs
from recstack.training.train_retrieval import VALID_MODEL_DIR

MODEL_DIR = "model"
DVCLIVE_DIR = "dvclive"


@dataclass
class TrainRankingResult:
    card: ModelCard
    metrics: dict[str, Any]  # deterministic
    timing: dict[str, float]  # wall times and throughput
    history: list[dict[str, float]]


@dataclass
class RankingSetup:
    """What both training paths start from: the pairs, the split of their users, the architecture.

    Attributes:
        tables: the feature tables.
        retrieval_version: version of the retriever whose candidates the pairs are.
        pairs: every user's candidate list, missed positives and random negatives.
        train_rows / valid_rows: rows of ``pairs`` to train on / held out for early stopping.
        config: the ranker architecture, dense standardization fitted on the training pairs.
        pairs_seconds: wall time of building the pairs.
    """

    tables: FeatureTables
    retrieval_version: str
    pairs: RankingPairs
    train_rows: np.ndarray
    valid_rows: np.ndarray
    config: RankerConfig
    pairs_seconds: float


def prepare_ranking(
    features_dir: str | Path,
    retrieval_dir: str | Path,
    *,
    n_candidates: int = 200,
    n_random_negatives: int = 20,
    embedding_dim: int = 16,
    dense_arch: tuple[int, ...] = (64,),
    over_arch: tuple[int, ...] = (128, 64),
    dcn_layers: int = 2,
    holdout_users: float = 0.1,
    max_users: int | None = None,
    seed: int = 42,
) -> RankingSetup:
    """Build the candidate pairs, hold out users, fit the dense standardization (see
    :func:`train_ranking` for the arguments)."""
    tables = FeatureTables.load(features_dir)
    n_users, n_items = tables.spec.user_id.size, tables.spec.item_id.size
    retriever = TwoTowerRetriever.load(Path(retrieval_dir) / VALID_MODEL_DIR, tables)
    observed = Sequences.from_interactions(read_interactions(features_dir, [TRAIN]), n_users)
    ctx = RankingContext.build(tables, observed, retriever.item_vectors)
    target = interaction_matrix(read_interactions(features_dir, [VALID]), n_users, n_items)
    start = time.perf_counter()
    pairs = build_pairs(
        retriever,
        ctx,
        target,
        n_candidates=n_candidates,
        n_random=n_random_negatives,
        seed=seed,
        max_users=max_users,
    )
    pairs_seconds = time.perf_counter() - start

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs.users))
    n_hold = max(1, round(holdout_users * len(order)))
    valid_rows, train_rows = np.sort(order[:n_hold]), np.sort(order[n_hold:])
    flat = pairs.dense[train_rows][pairs.mask[train_rows]]
    config = RankerConfig(
        sparse_features=ranker_cardinalities(tables),
        dense_features=list(DENSE_FEATURES),
        dense_mean=flat.mean(axis=0).astype(float).tolist(),
        dense_std=np.maximum(flat.std(axis=0), 1e-6).astype(float).tolist(),
        embedding_dim=embedding_dim,
        dense_arch=list(dense_arch),
        over_arch=list(over_arch),
        dcn_layers=dcn_layers,
    )
    return RankingSetup(tables, retriever.card.version, pairs, train_rows, valid_rows, config, pairs_seconds)


def train_ranking(
    features_dir: str | Path,
    retrieval_dir: str | Path,
    out_dir: str | Path,
    *,
    n_candidates: int = 200,
    n_random_negatives: int = 20,
    embedding_dim: int = 16,
    dense_arch: tuple[int, ...] = (64,),
    over_arch: tuple[int, ...] = (128, 64),
    dcn_layers: int = 2,
    batch_size: int = 2048,
    lr: float = 1e-3,
    weight_decay: float = 1e-6,
    max_epochs: int = 20,
    patience: int = 3,
    holdout_users: float = 0.1,
    max_users: int | None = None,
    seed: int = 42,
    nproc: int = 1,
    engine: str = "auto",
    sharding: str = "table_wise",
    embedding_lr: float = 0.05,
) -> TrainRankingResult:
    """Build candidate pairs, train the ranker with early stopping, save ``out_dir/model``.

    With ``nproc > 1`` or ``engine="dmp"`` the training runs as a TorchRec sharded job under torchrun
    (:func:`train_ranking_sharded`) on the same pairs.

    Args:
        features_dir: the ``features`` stage's output.
        retrieval_dir: the ``train_retrieval`` stage's output (its ``valid_model`` is used).
        out_dir: ``artifacts/train_ranking``.
        n_candidates: retrieval list length the ranker re-scores (also at serving time).
        n_random_negatives: random items per user added as easy negatives.
        embedding_dim / dense_arch / over_arch / dcn_layers: architecture (:class:`RankerConfig`).
        batch_size / lr / weight_decay / max_epochs / patience: training.
        holdout_users: share of users held out for early stopping.
        max_users: train on pairs of at most this many users (a seeded sample); None = every user with
            valid-period interactions.
        seed: seeds weights, sampling and batch order.
        nproc / engine: processes, and what trains (:func:`recstack.training.common.sharded_engine`).
        sharding / embedding_lr: the sharded path's sharding of the tables and their Adagrad learning rate.
    """
    use_dmp = sharded_engine(engine, nproc)  # before the pairs: a bad setting fails at once
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup = prepare_ranking(
        features_dir,
        retrieval_dir,
        n_candidates=n_candidates,
        n_random_negatives=n_random_negatives,
        embedding_dim=embedding_dim,
        dense_arch=dense_arch,
        over_arch=over_arch,
        dcn_layers=dcn_layers,
        holdout_users=holdout_users,
        max_users=max_users,
        seed=seed,
    )
    settings = {
        "n_candidates": n_candidates,
        "n_random_negatives": n_random_negatives,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "max_epochs": max_epochs,
        "patience": patience,
        "holdout_users": holdout_users,
        "max_users": max_users,
        "seed": seed,
    }
    if use_dmp:
        return train_ranking_sharded(
            setup,
            features_dir,
            out,
            settings,
            nproc=nproc,
            sharding=sharding,
            embedding_lr=embedding_lr,
        )
    pairs, tables, config = setup.pairs, setup.tables, setup.config
    seed_everything(seed)
    model = Ranker(config)
    system = RankingSystem(
        model,
        pairs,
        tables,
        setup.train_rows,
        setup.valid_rows,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
    )
    n_train_pairs = int(pairs.mask[setup.train_rows].sum())
    timer = EpochTimer(n_train_pairs)
    best = BestState("valid_ndcg@10", mode="max")
    trainer = make_trainer(
        max_epochs, out / DVCLIVE_DIR, [timer, best], monitor="valid_ndcg@10", patience=patience
    )
    start = time.perf_counter()
    trainer.fit(system)
    train_seconds = time.perf_counter() - start
    if best.state is not None:
        system.load_state_dict(best.state)
    model.eval()
    valid_metrics = next((h for h in best.history if h["epoch"] == best.best_epoch), {})
    card = save_artifact(
        out / MODEL_DIR,
        model,
        kind="dlrm",
        config=config,
        features_dir=features_dir,
        spec=tables.spec,
        training={
            "settings": settings,
            "n_candidates": n_candidates,
            "retrieval_version": setup.retrieval_version,
            "best_epoch": best.best_epoch,
            "valid": valid_metrics,
        },
    )
    metrics = {
        "best_epoch": best.best_epoch,
        "epochs_run": len(timer.seconds),
        **{k: v for k, v in valid_metrics.items() if k != "epoch"},
        "train_pairs": n_train_pairs,
        "positive_share": _positive_share(pairs),
        "version": card.version,
    }
    timing = {"pairs_seconds": setup.pairs_seconds, **timer.summary(), "train_seconds": train_seconds}
    return TrainRankingResult(card=card, metrics=metrics, timing=timing, history=best.history)


def train_ranking_sharded(
    setup: RankingSetup,
    features_dir: str | Path,
    out_dir: str | Path,
    settings: dict[str, Any],
    *,
    nproc: int,
    sharding: str = "table_wise",
    embedding_lr: float = 0.05,
) -> TrainRankingResult:
    """The stage's training on TorchRec DistributedModelParallel: ``nproc`` processes under torchrun.

    The pairs are written once under ``out_dir/distributed/pairs`` and memory-mapped by every process
    (:mod:`recstack.training.distributed_ranking`). The job early-stops on the same held-out users and
    metric as the Lightning path; tables train with Adagrad (``embedding_lr``), the dense layers with
    AdamW. The job's sharded checkpoints and the saved pairs are removed once the best epoch is
    consolidated into ``out_dir/model`` (the CLI keeps them).

    Args:
        setup: :func:`prepare_ranking`'s output.
        features_dir / out_dir: as for :func:`train_ranking`.
        settings: the stage's settings (``batch_size``, ``lr``, ``weight_decay``, ``max_epochs``,
            ``patience``, ``seed``...), recorded in the card.
        nproc: processes on this machine (``torchrun --standalone --nproc_per_node``).
        sharding: ``table_wise`` / ``column_wise`` / ``data_parallel`` / ``auto``.
        embedding_lr: Adagrad learning rate of the tables.
    """
    from recstack.training.distributed import run_torchrun
    from recstack.training.distributed_ranking import read_result, save_setup

    out = Path(out_dir)
    work = out / "distributed"
    shutil.rmtree(work, ignore_errors=True)
    pairs_dir = save_setup(work / "pairs", setup.pairs, setup.config, setup.train_rows, setup.valid_rows)
    job = work / "job"
    start = time.perf_counter()
    run_torchrun(
        "recstack.training.distributed_ranking",
        {
            "features": features_dir,
            "pairs": pairs_dir,
            "out": job,
            "sharding": sharding,
            "epochs": settings["max_epochs"],
            "patience": settings["patience"],
            "batch_size": settings["batch_size"],
            "seed": settings["seed"],
            "embedding_lr": embedding_lr,
            "lr": settings["lr"],
            "weight_decay": settings["weight_decay"],
        },
        nproc=nproc,
    )
    train_seconds = time.perf_counter() - start
    result = read_result(job)
    card = ModelCard(**result.card)
    card.training.update(
        settings={**settings, **result.settings, "nproc": nproc},
        n_candidates=setup.pairs.n_candidates,
        retrieval_version=setup.retrieval_version,
    )
    shutil.rmtree(out / MODEL_DIR, ignore_errors=True)
    shutil.move(str(job / MODEL_DIR), out / MODEL_DIR)
    write_card(out / MODEL_DIR, card)
    shutil.rmtree(work)
    valid = {k: v for k, v in result.best.items() if k not in ("epoch", "train_loss")}
    metrics = {
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
        **valid,
        "train_pairs": result.settings["train_pairs"],
        "positive_share": _positive_share(setup.pairs),
        "version": card.version,
        "engine": "dmp",
        "nproc": nproc,
        "sharding": sharding,
    }
    timing = {"pairs_seconds": setup.pairs_seconds, **result.timing, "job_seconds": train_seconds}
    history = [{k: v for k, v in h.items() if k != "train_loss"} for h in result.history]
    return TrainRankingResult(card=card, metrics=metrics, timing=timing, history=history)


def _positive_share(pairs: RankingPairs) -> float:
    return float(pairs.labels[pairs.mask].sum()) / float(pairs.mask.sum())
