"""Distributed two-tower training: 2-process torchrun jobs (TorchRec DMP, gloo on CPU) on the small dataset,
checked against the same training in one process.

Tolerances of the parity checks, and why: with ``dropout=0`` the 2-process job computes the single-process
math (same global batches and negatives, candidates all-gathered, gradients averaged over ranks), so only
floating-point order differs (all-to-all sums, fused vs plain Adagrad). Measured on the 2-core CPU machine:
losses within 1e-6, weights within 2e-5, metrics identical. The bounds below leave 100x room for another
machine's kernels: losses 1e-4; weights 1e-3 (Adagrad divides by the root of accumulated squared gradients,
which magnifies tiny differences in rarely seen rows); metrics 0.01 (a near-tie flipping in one valid user's
top-10 moves recall@10 by about 1 / the number of valid users).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch

from recstack.models.artifact import load_card, load_weights
from recstack.models.inputs import FeatureTables
from recstack.models.two_tower import TwoTower, TwoTowerConfig
from recstack.retrieval.two_tower import TwoTowerRetriever
from recstack.training.common import sharded_engine
from recstack.training.distributed import (
    CHECKPOINTS_DIR,
    MODEL_DIR,
    PROBE_FILE,
    RESULT_FILE,
    TrainTowers,
    load_retrieval_data,
    train_distributed,
)
from recstack.training.retrieval import sampled_softmax_loss
from recstack.training.sharded_checkpoint import consolidate, load_two_tower
from recstack.training.sharding import sharding_constraints
from recstack.training.streaming import build_sequences, open_sequences
from tests.torchrun import assert_same_weights, torchrun

pytestmark = pytest.mark.distributed

SHARDINGS = ("table_wise", "column_wise", "data_parallel")
STREAMED = "column_wise"  # this sharding's job serves its examples from disk (--sequences-dir)
# Tiny model, a few steps; dropout 0 so that the 2-process and 1-process runs are comparable step by step.
SETTINGS = {
    "steps": 20,
    "batch_size": 256,
    "seed": 0,
    "embedding_dim": 16,
    "tower_dims": (32, 16),
    "dropout": 0.0,
    "n_random_negatives": 16,
}
CHECKPOINT_EVERY = 10
LOSS_ATOL, WEIGHT_ATOL, METRIC_ATOL = 1e-4, 1e-3, 0.01


def _cli_args(features: Path, out: Path, sharding: str) -> list[str]:
    s = SETTINGS
    return [
        "--features", str(features), "--out", str(out), "--sharding", sharding,
        "--steps", str(s["steps"]), "--batch-size", str(s["batch_size"]), "--seed", str(s["seed"]),
        "--embedding-dim", str(s["embedding_dim"]), "--tower-dims", *map(str, s["tower_dims"]),
        "--dropout", str(s["dropout"]), "--n-random-negatives", str(s["n_random_negatives"]),
    ]  # fmt: skip


def _result(out: Path) -> dict:
    return json.loads((out / RESULT_FILE).read_text())


@pytest.fixture(scope="module")
def sharded_run(small_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``sharded_run(sharding)``: the output directory of a 2-process job, run once per sharding."""
    done: dict[str, Path] = {}

    def run(sharding: str) -> Path:
        if sharding not in done:
            out = tmp_path_factory.mktemp(f"dmp_{sharding}")
            args = [*_cli_args(small_features, out, sharding), "--checkpoint-every", str(CHECKPOINT_EVERY)]
            if sharding == STREAMED:  # examples from memory-mapped arrays: the parity tests cover it too
                args += ["--sequences-dir", str(out / "sequences")]
            torchrun(args)
            done[sharding] = out
        return done[sharding]

    return run


@pytest.fixture(scope="module")
def single_process(small_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same training in this process: no torchrun, no process group, the plain model."""
    out = tmp_path_factory.mktemp("single")
    with mock.patch.dict(os.environ):
        for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
            os.environ.pop(key, None)
        train_distributed(small_features, out, sharding="table_wise", **SETTINGS)
    return out


# --- in-process pieces ----------------------------------------------------------------------------------
def test_loss_split_over_ranks_with_gathered_candidates_equals_the_global_loss() -> None:
    torch.manual_seed(0)
    q, c = torch.randn(8, 4), torch.randn(8 + 3, 4)
    items = torch.tensor([5, 6, 5, 7, 8, 9, 10, 6, 1, 2, 5])  # repeats: accidental hits masked
    log_q = torch.randn(12)
    full = sampled_softmax_loss(q, c, items, log_q, 0.1)
    halves = [
        sampled_softmax_loss(q[r * 4 : (r + 1) * 4], c, items, log_q, 0.1, labels=torch.arange(4) + r * 4, reduction="sum")
        for r in range(2)
    ]  # fmt: skip
    torch.testing.assert_close(sum(halves) / 8, full)


def test_sharding_constraints_name_every_table_and_split_columns_evenly(small_features: Path) -> None:
    tables = FeatureTables.load(small_features)
    config = TwoTowerConfig(
        query_features=tables.query_cardinalities(),
        candidate_features=tables.items.cardinalities,
        embedding_dim=16,
    )
    module = TrainTowers(TwoTower(config))
    cw = sharding_constraints(module, "column_wise", world_size=2)
    assert set(cw) == {f"query_{f}" for f in config.query_features} | {
        f"cand_{f}" for f in config.candidate_features
    }
    assert {c.min_partition for c in cw.values()} == {8}
    assert all(
        c.sharding_types == ["table_wise"] for c in sharding_constraints(module, "table_wise", 2).values()
    )
    assert "row_wise" not in next(iter(sharding_constraints(module, "auto", 2).values())).sharding_types
    with pytest.raises(ValueError, match="sharding must be one of"):
        sharding_constraints(module, "row_wise", 2)  # type: ignore[arg-type]


def test_sequences_laid_out_on_disk_equal_the_in_memory_ones(small_features: Path, tmp_path: Path) -> None:
    """Built out of core in chunks of 500 rows (many user ranges), memory-mapped: the same arrays."""
    tables, data = load_retrieval_data(small_features)
    d = build_sequences(
        small_features / "interactions.parquet",
        ("train",),
        tables.spec.user_id.size,
        tmp_path,
        chunk_rows=500,
    )
    on_disk = open_sequences(d)
    assert isinstance(on_disk.items, np.memmap)
    for name in ("items", "times", "offsets"):
        np.testing.assert_array_equal(getattr(on_disk, name), getattr(data.sequences, name), err_msg=name)
    rows = np.array([0, 1, 57, len(on_disk.items) - 1])
    np.testing.assert_array_equal(on_disk.users_of(rows), data.sequences.example_users()[rows])
    assert (
        build_sequences(
            small_features / "interactions.parquet", ("train",), tables.spec.user_id.size, tmp_path
        )
        == d
    )  # the finished layout is reused


# --- 2-process jobs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sharding", SHARDINGS)
def test_sharded_training_runs_and_its_loss_goes_down(
    sharding: str, sharded_run: Callable[[str], Path]
) -> None:
    result = _result(sharded_run(sharding))
    losses = np.array(result["losses"])
    assert len(losses) == SETTINGS["steps"] and np.isfinite(losses).all()
    assert losses[-5:].mean() < losses[:5].mean() - 0.3, losses
    assert result["settings"]["world_size"] == 2
    plan = result["plan"]
    assert plan and {p["sharding_type"] for p in plan.values()} == {sharding}
    if sharding == "table_wise":  # whole tables, spread over both ranks
        assert all(len(p["ranks"]) == 1 for p in plan.values())
        assert set().union(*(p["ranks"] for p in plan.values())) == {0, 1}
    else:  # column shards on both ranks / a replica on each
        assert all(p["ranks"] == [0, 1] for p in plan.values())


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_consolidated_artifact_loads_and_scores_like_the_sharded_model(
    sharding: str, sharded_run: Callable[[str], Path], small_features: Path
) -> None:
    out = sharded_run(sharding)
    assert load_card(out / MODEL_DIR).kind == "two_tower"
    tables, data = load_retrieval_data(small_features)
    retriever = TwoTowerRetriever.load(out / MODEL_DIR, tables)  # the single-process loader evaluation uses
    probe = torch.load(
        out / PROBE_FILE, weights_only=True
    )  # the DMP model's embeddings, before consolidation
    items = probe["items"].numpy()
    assert len(items) == min(4096, retriever.item_vectors.shape[0])
    np.testing.assert_allclose(retriever.item_vectors[items], probe["candidate"].numpy(), atol=1e-5)
    users = probe["users"].numpy()
    np.testing.assert_allclose(
        retriever.user_vectors(data.sequences, users), probe["query"].numpy(), atol=1e-5
    )


@pytest.mark.parametrize("sharding", SHARDINGS)
def test_two_processes_match_single_process_training(
    sharding: str, sharded_run: Callable[[str], Path], single_process: Path
) -> None:
    dmp, single = _result(sharded_run(sharding)), _result(single_process)
    np.testing.assert_allclose(dmp["losses"], single["losses"], atol=LOSS_ATOL, rtol=0)
    assert_same_weights(sharded_run(sharding) / MODEL_DIR, single_process / MODEL_DIR, WEIGHT_ATOL)
    assert dmp["metrics"].keys() == single["metrics"].keys() and dmp["metrics"]
    for key, value in single["metrics"].items():
        assert dmp["metrics"][key] == pytest.approx(value, abs=METRIC_ATOL), key


def test_checkpoint_resumes_under_another_sharding(
    sharded_run: Callable[[str], Path], small_features: Path, tmp_path: Path
) -> None:
    """A table-wise checkpoint at step 10 continues column-wise (DCP reshards weights and Adagrad state)
    and ends where the uninterrupted table-wise run ended."""
    first = sharded_run("table_wise")
    checkpoint = first / CHECKPOINTS_DIR / f"step_{CHECKPOINT_EVERY:06d}"
    torchrun([*_cli_args(small_features, tmp_path, "column_wise"), "--resume-from", str(checkpoint)])
    resumed, uninterrupted = _result(tmp_path), _result(first)
    assert resumed["first_step"] == CHECKPOINT_EVERY
    np.testing.assert_allclose(
        resumed["losses"], uninterrupted["losses"][CHECKPOINT_EVERY:], atol=LOSS_ATOL, rtol=0
    )
    assert_same_weights(tmp_path / MODEL_DIR, first / MODEL_DIR, WEIGHT_ATOL)


def test_consolidate_turns_any_checkpoint_into_the_artifact_offline(
    sharded_run: Callable[[str], Path], small_features: Path, tmp_path: Path
) -> None:
    out = sharded_run("column_wise")
    final = out / CHECKPOINTS_DIR / f"step_{SETTINGS['steps']:06d}"
    card = consolidate(final, small_features, tmp_path / "model")  # this process: no process group
    assert card.version == load_card(out / MODEL_DIR).version  # the same weights, byte for byte
    middle = load_two_tower(out / CHECKPOINTS_DIR / f"step_{CHECKPOINT_EVERY:06d}")
    assert not torch.equal(
        middle.state_dict()["query_tower.mlp.0.weight"],
        load_weights(out / MODEL_DIR)["query_tower.mlp.0.weight"],
    )


def test_training_stage_switches_to_sharded_training_with_nproc(small_features: Path, tmp_path: Path) -> None:
    """``train_retrieval.nproc: 2`` (what ``dvc exp run -S train_retrieval.nproc=2`` sets): both phases run as
    2-process torchrun jobs and leave the artifacts the downstream stages load."""
    from recstack.training.train_retrieval import MODEL_DIR as STAGE_MODEL
    from recstack.training.train_retrieval import VALID_MODEL_DIR, train_retrieval

    result = train_retrieval(
        small_features, tmp_path, nproc=2, sharding="column_wise", max_epochs=1, max_valid_users=50,
        embedding_dim=16, tower_dims=(32, 16), batch_size=256, dropout=0.0,
    )  # fmt: skip
    assert result.metrics["nproc"] == 2 and result.metrics["sharding"] == "column_wise"
    assert 0.0 < result.metrics["valid_recall@100"] <= 1.0
    assert result.valid_card.training["settings"]["splits"] == ["train"]
    assert result.card.training["settings"]["splits"] == ["train", "valid"]  # P1's refit
    assert result.card.training["settings"]["world_size"] == 2
    tables = FeatureTables.load(small_features)
    for d in (VALID_MODEL_DIR, STAGE_MODEL):
        assert TwoTowerRetriever.load(tmp_path / d, tables).item_vectors.shape[1] == 16
    assert not list((tmp_path / "distributed").glob("*/checkpoints"))  # consolidated, then removed
    assert not list((tmp_path / "distributed").glob("sequences_*"))  # laid-out examples removed too


def test_engine_dmp_runs_the_sharded_job_in_one_process(small_features: Path, tmp_path: Path) -> None:
    """``train_retrieval.engine: dmp`` with ``nproc: 1``: a 1-process torchrun job (DMP's fused sparse
    optimizer on one machine), capped by ``max_steps``."""
    from recstack.training.train_retrieval import train_retrieval

    result = train_retrieval(
        small_features, tmp_path, engine="dmp", nproc=1, max_steps=3, refit=False, max_valid_users=50,
        embedding_dim=16, tower_dims=(32, 16), batch_size=256, dropout=0.0,
    )  # fmt: skip
    m = result.metrics
    assert m["engine"] == "dmp" and m["nproc"] == 1 and m["train_steps"] == 3
    assert result.card.training["settings"]["world_size"] == 1
    assert result.card.version == result.valid_card.version  # refit off: the phase-1 model is the model


@pytest.mark.parametrize(
    ("engine", "nproc", "expected"),
    [("auto", 1, False), ("auto", 2, True), ("dmp", 1, True), ("dmp", 4, True), ("lightning", 1, False)],
)
def test_sharded_engine_choice(engine: str, nproc: int, expected: bool) -> None:
    assert sharded_engine(engine, nproc) is expected


@pytest.mark.parametrize(
    ("engine", "nproc", "message"),
    [
        ("lightning", 2, "needs engine 'dmp' or 'auto'"),
        ("torchrun", 1, "engine must be one of"),
        ("dmp", 0, "at least 1"),
    ],
)
def test_bad_engine_settings_name_the_problem(engine: str, nproc: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sharded_engine(engine, nproc)
