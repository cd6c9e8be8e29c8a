"""The main job on a fresh copy: the embedded dataset regenerates to exactly what data.dvc records,
and `dvc repro` leaves `dvc status` clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.pipeline.conftest import copy_project, git_commit_all, run

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
    # Every output, executed-notebook reports included, hashes exactly as in the committed dvc.lock.
    lock_diff = run(["git", "diff", "--stat", "dvc.lock"], project).stdout
    assert lock_diff == "", (
        f"dvc.lock differs from the committed one (run `dvc repro` and commit dvc.lock):\n{lock_diff}"
    )
    metrics = json.loads((project / "metrics" / "features.json").read_text())
    committed = json.loads((Path(__file__).resolve().parents[2] / "metrics" / "features.json").read_text())
    assert metrics == committed  # the same numbers as the committed run
