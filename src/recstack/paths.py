"""Project paths in one place: every stage, notebook, test and CLI resolves files through here.

The layout follows "one name per stage": ``notebooks/<stage>.ipynb`` <-> ``params.yaml: <stage>`` <->
``dvc.yaml: stages.<stage>`` <-> ``artifacts/<stage>/`` <-> ``metrics/<stage>.json`` <-> ``reports/<stage>.ipynb``.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The project root: ``$RECSTACK_ROOT`` if set, else the nearest parent holding ``dvc.yaml``.

    Falls back to the current directory, so library code also works outside a checkout.
    """
    env = os.environ.get("RECSTACK_ROOT")
    if env:
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if (candidate / "dvc.yaml").is_file():
            return candidate
    return here


ARTIFACTS_DIR = "artifacts"
METRICS_DIR = "metrics"
REPORTS_DIR = "reports"
PLOTS_DIR = "plots"
NOTEBOOKS_DIR = "notebooks"
RAW_DATA_DIR = "data/raw"
# The embedded default dataset: generated deterministically by `recstack data default`, tracked by data.dvc.
DEFAULT_DATASET_DIR = "data/raw/synthetic"


def stage_dir(stage: str, root: Path | None = None) -> Path:
    """``artifacts/<stage>/``: where a stage writes its outputs."""
    return (root or project_root()) / ARTIFACTS_DIR / stage


def metrics_file(stage: str, root: Path | None = None) -> Path:
    """``metrics/<stage>.json``: the file `dvc metrics show` reads for a stage."""
    return (root or project_root()) / METRICS_DIR / f"{stage}.json"
