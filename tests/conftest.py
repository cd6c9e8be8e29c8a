"""Shared fixtures: paths to the project and to MovieLens-100K (read in place, never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ML100K = PROJECT_ROOT.parent / "shared" / "data" / "ml-100k"


@pytest.fixture(scope="session")
def project_root() -> Path:
    return PROJECT_ROOT


@pytest.fixture(scope="session")
def ml100k_path() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.skip(f"MovieLens-100K not found at {ML100K}")
    return ML100K
