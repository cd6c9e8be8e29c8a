"""Introspection of dvc.yaml and notebooks (used by tests and tooling to keep them consistent)."""

from __future__ import annotations

import ast
import shlex
from pathlib import Path

import nbformat
import yaml


def dvc_stage_parameters(dvc_yaml: Path) -> dict[str, list[str]]:
    """For each stage run through ``pipelines.run_notebook``, the parameter names its command passes."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    out: dict[str, list[str]] = {}
    for name, stage in stages.items():
        words = shlex.split(" ".join(str(stage["cmd"]).split()))
        if "pipelines.run_notebook" not in words:
            continue
        out[name] = [
            words[i + 1] for i, w in enumerate(words) if w in ("-p", "--param", "-P", "--param-from")
        ]
    return out


def notebook_parameter_names(notebook: Path) -> list[str]:
    """Names assigned in the notebook's cell tagged ``parameters`` that Papermill also recognises.

    Papermill parses the cell with its own regular expressions (it only warns about a name it cannot
    see, e.g. one annotated ``str | None``), so a name counts only if both Python and Papermill find it.

    Raises:
        ValueError: the notebook has no, or several, cells tagged ``parameters``.
    """
    from papermill.translators import PythonTranslator

    nb = nbformat.read(notebook, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{notebook} must have exactly one cell tagged 'parameters', found {len(cells)}")
    python_names = []
    for node in ast.parse(cells[0].source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            python_names.append(node.target.id)
        elif isinstance(node, ast.Assign):
            python_names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    papermill_names = {p.name for p in PythonTranslator.inspect(cells[0])}
    return [n for n in python_names if n in papermill_names]
