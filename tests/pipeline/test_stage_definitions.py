"""dvc.yaml, params.yaml and the notebooks agree: one name per stage, every parameter declared."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import yaml
from pipelines.run_notebook import lookup
from pipelines.stages import dvc_stage_parameters, notebook_parameter_names

ROOT = Path(__file__).resolve().parents[2]
STAGES = dvc_stage_parameters(ROOT / "dvc.yaml")


def test_notebook_stages_are_found() -> None:
    assert {"ingest", "features", "train_retrieval", "train_ranking", "evaluate"} <= set(STAGES)


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_passed_parameter_exists_in_the_parameters_cell(stage: str) -> None:
    declared = set(notebook_parameter_names(ROOT / "notebooks" / f"{stage}.ipynb"))
    passed = set(STAGES[stage])
    assert passed <= declared, (
        f"{stage}: dvc.yaml passes {sorted(passed - declared)} not in the parameters cell"
    )


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_param_from_keys_exist_in_params_yaml(stage: str) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cmd = " ".join(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"].split())
    words = cmd.split()
    for i, w in enumerate(words):
        if w == "-P":
            lookup(params, words[i + 2])  # raises KeyError naming the key if absent


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_one_name_per_stage(stage: str) -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stage_def = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    assert stage in params, f"params.yaml has no section {stage!r}"
    assert f"notebooks/{stage}.ipynb" in stage_def["deps"]
    assert f"artifacts/{stage}" in stage_def["outs"]
    declared = [next(iter(m)) for m in stage_def["metrics"]]
    assert declared[0] == f"metrics/{stage}.json"
    assert all(m.startswith(f"metrics/{stage}") for m in declared)


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_committed_without_outputs_and_with_project_kernel(notebook: Path) -> None:
    nb = nbformat.read(notebook, as_version=4)
    assert nb.metadata["kernelspec"]["name"] == "recstack"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{notebook.name} has outputs"
            assert "def " not in cell.source and "class " not in cell.source, "functions belong in src/"


def test_parameter_cell_parser_reads_annotated_and_plain_names(tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("a: int = 1  # x\nb = 'y'\nc, d = 1, 2\ne: str | None = None")
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    path = tmp_path / "n.ipynb"
    nbformat.write(nb, path)
    # `e` is valid Python but invisible to Papermill (it would warn "unknown parameter" and ignore it).
    assert notebook_parameter_names(path) == ["a", "b"]
