"""The real `dvc repro` (ingest + features through Papermill) in a temporary copy of the project."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.pipeline.conftest import SYSTEMS, assert_model_artifacts, copy_project, git_commit_all, run

pytestmark = pytest.mark.pipeline


def _write_log(
    path: Path, n_users: int = 60, n_items: int = 40, per_user: int = 12, bad_rows: int = 0
) -> None:
    """A small generic event log (CSV) with an item table; `bad_rows` rows get an unparseable timestamp."""
    rng = np.random.default_rng(0)
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    lines = ["uid,sku,ts,event"]
    for u in range(n_users):
        for k, i in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            ts = (t0 + timedelta(hours=int(u * 7 + k * 13))).isoformat()
            lines.append(f"u{u},i{i},{ts},click")
    for b in range(bad_rows):
        lines[1 + b] = f"u{b},i0,not-a-time,click"
    path.write_text("\n".join(lines) + "\n")
    items = ["sku,name,genre"] + [
        f"i{i},Item {i} {['jazz', 'rock', 'pop'][i % 3]},{['jazz', 'rock', 'pop'][i % 3]}"
        for i in range(n_items)
    ]
    (path.parent / "items.csv").write_text("\n".join(items) + "\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git copy of the tracked project files, configured to read a tiny event log."""
    # The real lock file describes the default dataset; this copy starts without one.
    dest = copy_project(tmp_path_factory.mktemp("project"), keep_lock=False)
    data = dest / "tiny"
    data.mkdir()
    _write_log(data / "events.csv")
    params = yaml.safe_load((dest / "params.yaml").read_text())
    params["data"] = {
        "source": "events",
        "path": "tiny/events.csv",
        "options": {
            "columns": {"user_id": "uid", "item_id": "sku", "timestamp": "ts", "event_type": "event"},
            "items_path": "tiny/items.csv",
            "item_columns": {"item_id": "sku", "title": "name", "categories": "genre"},
        },
    }
    # Smoke-run sizes: the point here is the mechanism, not the model quality.
    params["train_retrieval"].update(max_epochs=3, patience=1, embedding_dim=16, tower_dims=[32, 16])
    params["train_ranking"].update(max_epochs=2, patience=1, n_candidates=20, n_random_negatives=5)
    params["batch_topn"].update(k=5, chunk_users=64)  # 40 items; several parts
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git_commit_all(dest)
    return dest


def test_repro_runs_both_stages_and_writes_outputs(project: Path) -> None:
    out = run(["dvc", "repro", "features"], project).stdout
    assert "Running stage 'ingest'" in out and "Running stage 'features'" in out
    ingest = json.loads((project / "metrics" / "ingest.json").read_text())
    assert ingest["interactions"] == 60 * 12 and ingest["bad_rows"] == 0
    features = json.loads((project / "metrics" / "features.json").read_text())
    # 12 interactions per user -> P1: floor(2.4 + .5) = 2 test each; train part 10 -> 2 valid each
    assert features["test_interactions"] == 120 and features["valid_interactions"] == 120
    assert features["evaluated_users"] == 60 and features["categories"] == 3
    for stage in ("ingest", "features"):
        report = project / "reports" / f"{stage}.ipynb"
        assert report.is_file() and '"output_type"' in report.read_text()
    assert (project / "artifacts" / "features" / "feature_spec.json").is_file()
    assert (project / "plots" / "features" / "item_popularity.csv").is_file()
    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    assert "test_interactions" in shown


def test_second_repro_is_a_noop_and_status_clean(project: Path) -> None:
    out = run(["dvc", "repro", "features"], project).stdout
    assert "Running stage" not in out
    status = run(["dvc", "status", "features"], project).stdout
    assert "up to date" in status


def test_changing_one_parameter_reruns_only_what_depends_on_it(project: Path) -> None:
    params_path = project / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["features"]["history_length"] = 5
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "repro", "features"], project).stdout
    assert "Running stage 'features'" in out and "Running stage 'ingest'" not in out
    spec = json.loads((project / "artifacts" / "features" / "feature_spec.json").read_text())
    assert spec["history_length"] == 5


def _model_metrics(project: Path) -> dict[str, dict]:
    return {
        stage: json.loads((project / "metrics" / f"{stage}.json").read_text())
        for stage in ("train_retrieval", "train_ranking", "evaluate", "evaluate_segments")
    }


# The whole pipeline on this event-log source: slow (minutes of fixed per-stage costs). The default run
# covers every stage through test_default_dataset.py's one `dvc repro` of the embedded dataset.
@pytest.mark.slow
def test_full_pipeline_trains_both_models_and_evaluates_every_system(project: Path) -> None:
    out = run(["dvc", "repro"], project).stdout
    for stage in ("train_retrieval", "train_ranking", "evaluate", "build_index", "package", "batch_topn"):
        assert f"Running stage '{stage}'" in out
    topn = json.loads((project / "metrics" / "batch_topn.json").read_text())
    assert topn["short_lists"] == 0 and topn["rows"] == topn["users"] * 5 and topn["funnel_share"] == 1.0
    package = json.loads((project / "metrics" / "package.json").read_text())
    assert package["smoke_requests"] == 60 and package["smoke_fallback_rate"] == 0.0
    assert (project / "artifacts" / "package" / "recstack.bento").stat().st_size > 0
    assert (project / "bentos" / "store" / "models" / "recstack-funnel" / package["version"]).is_dir()
    index = json.loads((project / "metrics" / "build_index.json").read_text())
    assert index["n_items"] == 40 and index["recall"] >= 0.95  # 40 items: HNSW is all but exact
    metrics = _model_metrics(project)
    evaluate = metrics["evaluate"]
    assert set(evaluate) == SYSTEMS
    for system, values in evaluate.items():
        assert 0.0 <= values["ndcg@10"] <= 1.0 and 0.0 <= values["recall@100"] <= 1.0, system
        assert values["users"] == 60
    assert set(metrics["evaluate_segments"]["funnel"]) == {
        "short_history_users",
        "long_tail_items",
        "new_items",
    }
    assert_model_artifacts(project)
    assert (
        json.loads((project / "artifacts/train_retrieval/model/model.json").read_text())["similarity"]
        == "cosine"
    )
    assert (project / "plots" / "evaluate" / "ndcg_at_k.csv").is_file()
    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    assert "two_tower" in shown and "funnel" in shown
    assert "up to date" in run(["dvc", "status", "evaluate"], project).stdout


# Slow: it trains both models twice. Training's determinism is also in tests/unit/test_models.py.
@pytest.mark.slow
def test_forced_repro_gives_identical_metrics(project: Path) -> None:
    run(["dvc", "repro", "evaluate"], project)  # a no-op after the whole-pipeline test
    before = _model_metrics(project)
    run(["dvc", "repro", "--force", "train_retrieval", "train_ranking", "evaluate"], project)
    assert _model_metrics(project) == before


def test_failing_stage_names_stage_cell_and_problem(project: Path) -> None:
    _write_log(project / "tiny" / "events.csv", bad_rows=100)
    proc = run(["dvc", "repro", "features"], project, check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "stage 'ingest' failed in cell" in text
    assert "IngestError" in text and "bad_timestamp=100" in text
    assert "reports/ingest.ipynb" in text
    quarantine = project / "artifacts" / "ingest" / "quarantine" / "interactions.parquet"
    assert quarantine.is_file()
