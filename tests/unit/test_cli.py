"""The `recstack` CLI calls the same functions as notebooks and tests; check its wiring and errors."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from recstack.cli import main


def test_validate_ml100k_prints_report(ml100k_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", "movielens-100k", str(ml100k_path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows"]["interactions"] == 100_000 and report["passed"]


def test_generate_small_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "syn"
    args = ["data", "generate", str(out), "--n-users", "200", "--n-items", "100", "--n-interactions", "3000"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_users"] == 200
    assert pl.scan_parquet(out / "interactions.parquet" / "*.parquet").select(pl.len()).collect().item() > 0


def test_unknown_source_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", "movielens-9m", str(tmp_path)]) == 2
    assert "movielens-9m" in capsys.readouterr().err
