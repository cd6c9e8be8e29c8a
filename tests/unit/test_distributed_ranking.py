"""Distributed DLRM ranker training: 2-process torchrun jobs (TorchRec DMP, gloo on CPU) on the small
dataset's candidate pairs, checked against the same loop in one process.

Tolerances, and why: the 2-process job computes the single-process math (the same global batches, each
rank's mean BCE over an equal slice, gradients averaged over ranks), so only floating-point order differs
(all-to-all sums, fused vs plain Adagrad). Measured on the 2-core CPU machine with the pipeline's pairs:
losses within 6e-8, weights within 8e-6, re-ranking metrics identical. The bounds leave 100x room and more
for another machine's kernels: losses 1e-4, weights 1e-3, metrics 0.01 (a near-tie flipping in one held-out
user's top 10).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from recstack.models.artifact import load_card, load_weights
from recstack.models.inputs import FeatureTables
from recstack.ranking.scorer import FunnelRanker
from recstack.retrieval.two_tower import TwoTowerRetriever
from recstack.training.distributed_ranking import (
    CHECKPOINTS_DIR,
    MODEL_DIR,
    MONITOR,
    open_setup,
    read_result,
    save_setup,
    train_ranking_distributed,
)
from recstack.training.ranking import RankingPairs
from recstack.training.sharded_checkpoint import CheckpointMeta, consolidate, load_model
from recstack.training.train_ranking import prepare_ranking
from recstack.training.train_retrieval import MODEL_DIR as RETRIEVAL_MODEL
from tests.torchrun import assert_same_weights, torchrun

pytestmark = pytest.mark.distributed

MODULE = "recstack.training.distributed_ranking"
SHARDINGS = ("table_wise", "column_wise", "data_parallel")
# 3 short epochs, no early stop; 5 held-out users per scoring batch, so that the held-out users of the
# small data take several batches and the two ranks unequal numbers of them (the repeat path).
SETTINGS = {"epochs": 3, "steps": 12, "batch_size": 256, "seed": 0, "patience": 0, "valid_batch_users": 5}
LOSS_ATOL, WEIGHT_ATOL, METRIC_ATOL = 1e-4, 1e-3, 0.01


def _cli_args(features: Path, pairs: Path, out: Path, sharding: str) -> list[str]:
    args = ["--features", str(features), "--pairs", str(pairs), "--out", str(out), "--sharding", sharding]
    for key, value in SETTINGS.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args


@pytest.fixture(scope="module")
def pairs_dir(
    small_features: Path, small_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The stage's pairs of the small data (30 candidates), a third of the users held out."""
    setup = prepare_ranking(
        small_features, small_models["retrieval"], n_candidates=30, embedding_dim=8, holdout_users=0.33
    )
    shares = np.array_split(setup.valid_rows, 2)
    per_batch = SETTINGS["valid_batch_users"]
    # The ranks score unequal numbers of batches: one of them repeats a batch to keep the collectives paired.
    assert len({-(-len(s) // per_batch) for s in shares}) == 2, [len(s) for s in shares]
    return save_setup(
        tmp_path_factory.mktemp("pairs"), setup.pairs, setup.config, setup.train_rows, setup.valid_rows
    )


@pytest.fixture(scope="module")
def sharded_run(
    small_features: Path, pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Path]:
    """``sharded_run(sharding)``: the output directory of a 2-process job, run once per sharding."""
    done: dict[str, Path] = {}

    def run(sharding: str) -> Path:
        if sharding not in done:
            out = tmp_path_factory.mktemp(f"rank_{sharding}")
            torchrun(_cli_args(small_features, pairs_dir, out, sharding), module=MODULE)
            done[sharding] = out
        return done[sharding]

    return run


@pytest.fixture(scope="module")
def single_process(small_features: Path, pairs_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same loop in this process: no torchrun, no process group, the plain model."""
    out = tmp_path_factory.mktemp("rank_single")
    _in_this_process(features_dir=small_features, pairs_dir=pairs_dir, out_dir=out, **SETTINGS)
    return out


# --- in-process pieces ----------------------------------------------------------------------------------
def test_saved_pairs_are_memory_mapped_and_equal(pairs_dir: Path, small_features: Path) -> None:
    pairs, config, train_rows, valid_rows = open_setup(pairs_dir)
    assert isinstance(pairs.dense, np.memmap) and pairs.n_candidates == 30
    assert config.embedding_dim == 8
    assert not set(train_rows) & set(valid_rows)
    assert len(train_rows) + len(valid_rows) == len(pairs.users)
    with pytest.raises(FileNotFoundError, match="no saved ranking pairs"):
        RankingPairs.open(small_features)


# --- 2-process jobs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sharding", SHARDINGS)
def test_sharded_ranker_training_runs_and_its_loss_goes_down(
    sharding: str, sharded_run: Callable[[str], Path]
) -> None:
    out = sharded_run(sharding)
    result = read_result(out)
    losses = np.array(result.losses)
    assert len(losses) == SETTINGS["epochs"] * SETTINGS["steps"] and np.isfinite(losses).all()
    assert losses[-5:].mean() < 0.5 * losses[:5].mean(), losses
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.settings["world_size"] == 2
    assert result.plan and {p["sharding_type"] for p in result.plan.values()} == {sharding}
    assert {t for t in result.plan} >= {"rank_user_id", "rank_item_id"}
    # The best epoch and the last are kept; earlier ones removed as training went.
    kept = sorted(p.name for p in (out / CHECKPOINTS_DIR).iterdir())
    assert kept == sorted({f"epoch_{result.best_epoch:03d}", "epoch_003"})


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_two_process_ranker_matches_single_process_training(
    sharding: str, sharded_run: Callable[[str], Path], single_process: Path
) -> None:
    dmp, single = read_result(sharded_run(sharding)), read_result(single_process)
    np.testing.assert_allclose(dmp.losses, single.losses, atol=LOSS_ATOL, rtol=0)
    assert dmp.best_epoch == single.best_epoch
    for a, b in zip(dmp.history, single.history, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=METRIC_ATOL), (a["epoch"], key)
    assert_same_weights(sharded_run(sharding) / MODEL_DIR, single_process / MODEL_DIR, WEIGHT_ATOL)


def test_the_artifact_is_the_best_epoch_and_serving_loads_it(
    sharded_run: Callable[[str], Path], small_features: Path, small_models: dict[str, Path], tmp_path: Path
) -> None:
    out = sharded_run("column_wise")
    result = read_result(out)
    card = load_card(out / MODEL_DIR)
    assert card.kind == "dlrm" and card.training["best_epoch"] == result.best_epoch
    best = out / CHECKPOINTS_DIR / f"epoch_{result.best_epoch:03d}"
    assert CheckpointMeta.read(best).kind == "dlrm"
    # The checkpoint (column shards on two ranks) assembled in this process is the artifact, byte for byte.
    assert consolidate(best, small_features, tmp_path / "again").version == card.version
    model = load_model(best)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, load_weights(out / MODEL_DIR)[name], atol=0, rtol=0, msg=name)
    tables = FeatureTables.load(small_features)
    retriever = TwoTowerRetriever.load(small_models["retrieval"] / RETRIEVAL_MODEL, tables)
    funnel = FunnelRanker.load(
        out / MODEL_DIR, retriever, n_candidates=30
    )  # what evaluation and serving load
    assert funnel.ranker.config.embedding_dim == 8


def test_ranking_stage_switches_to_sharded_training_with_nproc(
    small_features: Path, small_models: dict[str, Path], tmp_path: Path
) -> None:
    """``train_ranking.nproc: 2`` (what ``dvc exp run -S train_ranking.nproc=2`` sets): the stage trains as a
    2-process torchrun job, early-stops on the held-out users, and leaves the artifact evaluation loads."""
    from recstack.training.train_ranking import MODEL_DIR as STAGE_MODEL
    from recstack.training.train_ranking import train_ranking

    result = train_ranking(
        small_features, small_models["retrieval"], tmp_path, n_candidates=30, embedding_dim=8,
        max_epochs=6, patience=1, batch_size=256, nproc=2, sharding="table_wise",
    )  # fmt: skip
    m = result.metrics
    assert m["nproc"] == 2 and m["sharding"] == "table_wise"
    assert 1 <= m["best_epoch"] <= m["epochs_run"] <= 6
    assert m["epochs_run"] == 6 or m["epochs_run"] == m["best_epoch"] + 1  # patience 1
    assert 0.0 <= m["valid_ndcg@10"] <= 1.0 and m["train_pairs"] > 0
    card = load_card(tmp_path / STAGE_MODEL)
    assert card.version == m["version"] and card.training["settings"]["world_size"] == 2
    assert card.training["n_candidates"] == 30 and card.training["retrieval_version"]
    assert [h["epoch"] for h in result.history] == list(range(1, m["epochs_run"] + 1))
    assert not (tmp_path / "distributed").exists()  # pairs and checkpoints removed once consolidated


def _in_this_process(**kwargs) -> None:
    """:func:`train_ranking_distributed` in this process, outside any torchrun environment."""
    with mock.patch.dict(os.environ):
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            os.environ.pop(key, None)
        train_ranking_distributed(**kwargs)


def test_an_interrupted_job_resumes_where_it_stopped_on_another_world_size(
    small_features: Path, pairs_dir: Path, single_process: Path, tmp_path: Path
) -> None:
    """A 2-process job stopped after epoch 2 (as if killed), resumed with ``--resume`` by a 1-process
    torchrun job: the third epoch's losses, the history that early stopping reads, the best epoch and the
    artifact are the uninterrupted run's (the parity tolerances: the epochs ran sharded, the reference not)."""
    args = ["--features", str(small_features), "--pairs", str(pairs_dir), "--out", str(tmp_path)]
    for key, value in {**SETTINGS, "sharding": "table_wise"}.items():
        if key != "epochs":
            args += ["--" + key.replace("_", "-"), str(value)]
    torchrun([*args, "--epochs", "2"], module=MODULE)
    torchrun([*args, "--epochs", str(SETTINGS["epochs"]), "--resume"], nproc=1, module=MODULE)
    resumed, whole = read_result(tmp_path), read_result(single_process)
    steps = SETTINGS["steps"]
    assert len(resumed.losses) == steps  # this run trained epoch 3 only
    np.testing.assert_allclose(resumed.losses, whole.losses[2 * steps :], atol=LOSS_ATOL, rtol=0)
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    for a, b in zip(resumed.history, whole.history, strict=True):
        assert a[MONITOR] == pytest.approx(b[MONITOR], abs=METRIC_ATOL), a["epoch"]
    assert resumed.best_epoch == whole.best_epoch
    assert resumed.settings["world_size"] == 1
    assert_same_weights(tmp_path / MODEL_DIR, single_process / MODEL_DIR, WEIGHT_ATOL)

    # What cannot continue is refused with the reason: settings the batch order depends on, a DMP
    # checkpoint's fused optimizer state in a plain process, a job with no checkpoint at all.
    run = {"features_dir": small_features, "pairs_dir": pairs_dir, "out_dir": tmp_path, "resume": True}
    with pytest.raises(ValueError, match="was written by a torchrun"):
        _in_this_process(**run, **SETTINGS)
    with pytest.raises(FileNotFoundError, match="no complete epoch checkpoint"):
        _in_this_process(**{**run, "out_dir": tmp_path / "new"}, **SETTINGS)
    plain = tmp_path / "plain"
    _in_this_process(**{**run, "out_dir": plain, "resume": False}, **{**SETTINGS, "epochs": 1})
    with pytest.raises(ValueError, match="batch_size=256, this run has batch_size=128"):
        _in_this_process(**{**run, "out_dir": plain}, **{**SETTINGS, "batch_size": 128})
