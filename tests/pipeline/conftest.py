"""Helpers for pipeline tests: a git copy of the tracked project, and running commands in it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(args: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command with the project's venv first on PATH; on failure, raise with its output."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("RECSTACK_ROOT", None)
    proc = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_project(dest: Path, keep_lock: bool = True) -> Path:
    """Copy the git-tracked files to ``dest`` and make it a fresh git repository (what a clone holds)."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    for rel in filter(None, files.split("\0")):
        if (rel == "dvc.lock" and not keep_lock) or not (ROOT / rel).is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest / rel)
    return dest


def git_commit_all(repo: Path) -> None:
    """``git init`` (if needed) and commit everything, so DVC sees a clean repository."""
    if not (repo / ".git").exists():
        run(["git", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "snapshot"], repo)


SYSTEMS = {"most_popular", "ease", "rp3beta", "two_tower", "funnel", "funnel_reranked"}
MODEL_DIRS = ("train_retrieval/model", "train_retrieval/valid_model", "train_ranking/model")


def assert_model_artifacts(project: Path) -> None:
    """Every trained model's directory carries what serving needs (weights, its feature spec, a card with
    the data fingerprint and version), and training logged its DVCLive curves."""
    for model_dir in MODEL_DIRS:
        d = project / "artifacts" / model_dir
        card = json.loads((d / "model.json").read_text())
        assert (d / "model.pt").is_file() and (d / "features" / "feature_spec.json").is_file(), model_dir
        assert card["data_fingerprint"] and len(card["version"]) == 12, model_dir
    dvclive = project / "artifacts" / "train_retrieval" / "dvclive" / "plots" / "metrics"
    assert (dvclive / "valid_recall@100.tsv").is_file()
