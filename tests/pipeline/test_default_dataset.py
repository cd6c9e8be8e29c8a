"""The main job on a fresh copy, as the README gives it: the embedded dataset regenerates to exactly what
data.dvc records, `dvc repro` runs every stage and leaves `dvc status` clean, and every stage's outputs are
there and agree with the committed run.

This is the default test run's one whole `dvc repro` (the tiny event-log project in test_dvc_repro.py runs
its data stages; its own whole repro is a slow test): one run, several tests reading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.pipeline.conftest import ROOT, SYSTEMS, assert_model_artifacts, copy_project, git_commit_all, run

DATA_STAGES = ("ingest", "features")

pytestmark = pytest.mark.pipeline


@dataclass(frozen=True)
class FreshRun:
    project: Path
    data_status: str  # `dvc status data.dvc` after `recstack data default`, before the repro
    repro: str  # what `dvc repro` printed


def _json(root: Path, rel: str) -> dict:
    return json.loads((root / rel).read_text())


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> FreshRun:
    """A copy of the tracked files (what a clone holds: data.dvc, no data), the data regenerated, then
    the README's main job."""
    project = copy_project(tmp_path_factory.mktemp("fresh"))
    git_commit_all(project)
    assert not (project / "data" / "raw").exists()  # a clone has only data.dvc, no data
    run(["recstack", "data", "default"], project)
    status = run(["dvc", "status", "data.dvc"], project).stdout
    return FreshRun(project, status, run(["dvc", "repro"], project).stdout)


def test_embedded_dataset_regenerates_to_what_data_dvc_records(fresh: FreshRun) -> None:
    # Byte-identical regeneration: DVC finds the directory hash that data.dvc records.
    assert "up to date" in fresh.data_status, fresh.data_status


def test_repro_runs_every_stage_and_leaves_status_clean(fresh: FreshRun) -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in stages:
        assert f"Running stage '{stage}'" in fresh.repro, stage
    assert "up to date" in run(["dvc", "status"], fresh.project).stdout


def test_data_stages_hash_as_committed(fresh: FreshRun) -> None:
    # Every output of the data stages, executed-notebook reports included, hashes exactly as in the
    # committed dvc.lock. Trained weights are compared through their metrics instead: float results of
    # training may differ in the last bits between CPU models, which would change every hash downstream.
    lock = yaml.safe_load((fresh.project / "dvc.lock").read_text())["stages"]
    committed_lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    for stage in DATA_STAGES:
        assert lock[stage] == committed_lock[stage], (
            f"dvc.lock entry of {stage!r} differs from the committed one (run `dvc repro` and commit dvc.lock)"
        )
    assert _json(fresh.project, "metrics/features.json") == _json(ROOT, "metrics/features.json")


def test_every_system_evaluates_as_committed(fresh: FreshRun) -> None:
    evaluate = _json(fresh.project, "metrics/evaluate.json")
    committed = _json(ROOT, "metrics/evaluate.json")
    assert set(evaluate) == set(committed) == SYSTEMS
    for system, values in committed.items():
        assert evaluate[system]["ndcg@10"] == pytest.approx(values["ndcg@10"], abs=0.01), system
        assert evaluate[system]["users"] == values["users"], system
    segments = _json(fresh.project, "metrics/evaluate_segments.json")
    assert set(segments["funnel"]) == {"short_history_users", "long_tail_items", "new_items"}
    assert (fresh.project / "plots" / "evaluate" / "ndcg_at_k.csv").is_file()
    shown = run(["dvc", "metrics", "show", "--json"], fresh.project).stdout
    assert "two_tower" in shown and "funnel" in shown


def test_every_model_artifact_carries_what_serving_needs(fresh: FreshRun) -> None:
    assert_model_artifacts(fresh.project)
    similarity = yaml.safe_load((ROOT / "params.yaml").read_text())["train_retrieval"]["similarity"]
    assert _json(fresh.project, "artifacts/train_retrieval/model/model.json")["similarity"] == similarity


def test_index_package_and_batch_outputs(fresh: FreshRun) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    index = _json(fresh.project, "metrics/build_index.json")
    assert index["n_items"] == _json(ROOT, "metrics/build_index.json")["n_items"]
    assert index["recall"] >= 0.95
    package = _json(fresh.project, "metrics/package.json")
    assert package["smoke_requests"] == params["package"]["smoke_users"]
    assert package["smoke_fallback_rate"] == 0.0
    assert (fresh.project / "artifacts" / "package" / "recstack.bento").stat().st_size > 0
    store = fresh.project / "bentos" / "store" / "models" / "recstack-funnel" / package["version"]
    assert store.is_dir()
    topn = _json(fresh.project, "metrics/batch_topn.json")
    assert topn["short_lists"] == 0 and topn["funnel_share"] == 1.0
    assert topn["rows"] == topn["users"] * params["batch_topn"]["k"]
    # The replay serves every held-out event; what users click depends on the lists (trained weights).
    replay, committed = _json(fresh.project, "metrics/replay.json"), _json(ROOT, "metrics/replay.json")
    assert replay["requests"] == committed["requests"]
    assert replay["ctr"] == pytest.approx(committed["ctr"], abs=0.02)
    monitor = _json(fresh.project, "metrics/monitor.json")
    assert monitor["requests"] == replay["requests"]
    assert monitor["windows"] == _json(ROOT, "metrics/monitor.json")["windows"]
    assert len(list((fresh.project / "monitoring" / "reports").iterdir())) == monitor["windows"] > 1
