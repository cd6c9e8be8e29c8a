"""The embedded default dataset: generated (never downloaded) into ``data/raw/synthetic``, tracked by data.dvc.

A fresh clone has ``data.dvc`` but neither the data nor a DVC cache holding it. Because the generator is
deterministic, regenerating gives the exact bytes ``data.dvc`` records; committing them to the local DVC
cache then makes ``dvc status`` clean, as if the data had been pulled.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from recstack.data.schema import DataError
from recstack.data.synthetic import generate_default
from recstack.paths import DEFAULT_DATASET_DIR

DATA_DVC = "data.dvc"


def _tracked_md5(dvc_file: Path) -> str:
    return str(yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"])


def ensure_default_dataset(root: Path, force: bool = False) -> str:
    """Generate the embedded dataset if missing and put it in the DVC cache, checking it against data.dvc.

    Args:
        root: the project root (holding ``data.dvc``).
        force: regenerate even when the directory exists.

    Returns:
        A one-line description of what was done.

    Raises:
        DataError: the regenerated data differs from what data.dvc records (data.dvc is left untouched).
    """
    out = root / DEFAULT_DATASET_DIR
    did = "present"
    if force or not (out / "dataset.json").exists():
        generate_default(out)
        did = "generated"
    dvc_file = root / DATA_DVC
    if not dvc_file.is_file():
        return f"embedded dataset {did} at {out} (no {DATA_DVC}: not tracked)"
    original = dvc_file.read_text()
    expected = _tracked_md5(dvc_file)
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", "commit", "--force", "--quiet", DATA_DVC],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,  # the return code is reported below with DVC's own message
    )
    actual = _tracked_md5(dvc_file)
    dvc_file.write_text(original)  # data.dvc is the record; this function never rewrites it
    if proc.returncode != 0:
        raise DataError(f"dvc commit {DATA_DVC} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    if actual != expected:
        raise DataError(
            f"the regenerated embedded dataset ({actual}) differs from what {DATA_DVC} records ({expected}). "
            "The generator's output depends on the pinned numpy / pyarrow versions: run `make setup` so the "
            "environment matches uv.lock, then `recstack data default --force`."
        )
    return f"embedded dataset {did} at {out}, matches {DATA_DVC} ({expected}) and is in the DVC cache"
