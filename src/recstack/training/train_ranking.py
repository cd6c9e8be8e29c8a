"""The ``train_ranking`` stage: train the DLRM ranker on the retrieval stage's own candidates.

The retriever used here is ``train_retrieval/valid_model`` (fit on the train part only), so the valid part
is a genuine future: its interactions are the labels, features are computed as of each user's last train
interaction. 10% of those users (seeded) are held out for early stopping on re-ranked ``valid_ndcg@10``.
The trained ranker is then applied, unchanged, to the refitted retriever's candidates at test time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from recstack.data.io import INTERACTIONS_FILE
from recstack.data.split import SPLIT, TRAIN, VALID
from recstack.evaluation.topk import interaction_matrix
from recstack.models.artifact import ModelCard, save_artifact
from recstack.models.inputs import FeatureTables, Sequences
from recstack.models.ranker import Ranker, RankerConfig
from recstack.ranking.features import DENSE_FEATURES, RankingContext, ranker_cardinalities
from recstack.retrieval.two_tower import TwoTowerRetriever
from recstack.training.common import BestState, EpochTimer, make_trainer, seed_everything
from recstack.training.ranking import RankingSystem, build_pairs
from recstack.training.train_retrieval import VALID_MODEL_DIR

MODEL_DIR = "model"
DVCLIVE_DIR = "dvclive"


@dataclass
class TrainRankingResult:
    card: ModelCard
    metrics: dict[str, Any]  # deterministic
    timing: dict[str, float]  # wall times and throughput
    history: list[dict[str, float]]


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
) -> TrainRankingResult:
    """Build candidate pairs, train the ranker with early stopping, save ``out_dir/model``.

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
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = FeatureTables.load(features_dir)
    interactions = pl.read_parquet(Path(features_dir) / INTERACTIONS_FILE)
    n_users, n_items = tables.spec.user_id.size, tables.spec.item_id.size
    retriever = TwoTowerRetriever.load(Path(retrieval_dir) / VALID_MODEL_DIR, tables)
    observed = Sequences.from_interactions(interactions.filter(pl.col(SPLIT) == TRAIN), n_users)
    ctx = RankingContext.build(tables, observed, retriever.item_vectors)
    target = interaction_matrix(interactions.filter(pl.col(SPLIT) == VALID), n_users, n_items)
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
    seed_everything(seed)
    model = Ranker(config)
    system = RankingSystem(
        model,
        pairs,
        tables,
        train_rows,
        valid_rows,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
    )
    n_train_pairs = int(pairs.mask[train_rows].sum())
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
            "retrieval_version": retriever.card.version,
            "best_epoch": best.best_epoch,
            "valid": valid_metrics,
        },
    )
    positives = float(pairs.labels[pairs.mask].sum())
    metrics = {
        "best_epoch": best.best_epoch,
        "epochs_run": len(timer.seconds),
        **{k: v for k, v in valid_metrics.items() if k != "epoch"},
        "train_pairs": n_train_pairs,
        "positive_share": positives / float(pairs.mask.sum()),
        "version": card.version,
    }
    timing = {"pairs_seconds": pairs_seconds, **timer.summary(), "train_seconds": train_seconds}
    return TrainRankingResult(card=card, metrics=metrics, timing=timing, history=best.history)
