"""The main job on a fresh copy: the embedded dataset regenerates to exactly what data.dvc records,
and `dvc repro` leaves `dvc status` clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.pipeline.conftest import ROOT, copy_project, git_commit_all, run

DATA_STAGES = ("ingest", "features")

pytestmark = pytest.mark.pipeline


def test_fresh_copy_regenerates_tracked_data_and_repro_is_clean(tmp_path: Path) -> None:
    project = copy_project(tmp_path)
    git_commit_all(project)
    assert not (project / "data" / "raw").exists()  # a clone has only data.dvc, no data
    run(["recstack", "data", "default"], project)
    # Byte-identical regeneration: DVC finds the directory hash that data.dvc records.
    status = run(["dvc", "status", "data.dvc"], project).stdout
    assert "up to date" in status, status
    run(["dvc", "repro"], project)
    assert "up to date" in run(["dvc", "status"], project).stdout
    # Every output of the data stages, executed-notebook reports included, hashes exactly as in the
    # committed dvc.lock. Trained weights are compared through their metrics instead: float results of
    # training may differ in the last bits between CPU models, which would change every hash downstream.
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    committed_lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    for stage in DATA_STAGES:
        assert lock[stage] == committed_lock[stage], (
            f"dvc.lock entry of {stage!r} differs from the committed one (run `dvc repro` and commit dvc.lock)"
        )
    metrics = json.loads((project / "metrics" / "features.json").read_text())
    committed = json.loads((ROOT / "metrics" / "features.json").read_text())
    assert metrics == committed  # the same numbers as the committed run
    evaluate = json.loads((project / "metrics" / "evaluate.json").read_text())
    committed_eval = json.loads((ROOT / "metrics" / "evaluate.json").read_text())
    for system, values in committed_eval.items():
        assert evaluate[system]["ndcg@10"] == pytest.approx(values["ndcg@10"], abs=0.01), system
