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


@pytest.fixture(scope="session")
def small_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A featurized small synthetic dataset (200 users, 120 items): fast enough to train models on."""
    from recstack.data.ingest import ingest
    from recstack.data.synthetic import SyntheticConfig, generate_synthetic
    from recstack.features.build import build_features

    root = tmp_path_factory.mktemp("small")
    generate_synthetic(
        root / "raw", SyntheticConfig(n_users=200, n_items=120, n_interactions=6_000, n_clusters=4)
    )
    ingest("canonical", root / "raw", root / "ingest")
    build_features(root / "ingest", root / "features", history_length=20)
    return root / "features"


SMALL_MODEL = {"embedding_dim": 16, "tower_dims": (32, 16), "batch_size": 256}


@pytest.fixture(scope="session")
def small_models(small_features: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-tower (3 epochs) and a DLRM ranker (30 candidates) trained on ``small_features``."""
    from recstack.training.train_ranking import train_ranking
    from recstack.training.train_retrieval import train_retrieval

    out = tmp_path_factory.mktemp("models")
    train_retrieval(small_features, out / "retrieval", max_epochs=3, patience=1, **SMALL_MODEL)
    train_ranking(
        small_features, out / "retrieval", out / "ranking", n_candidates=30, max_epochs=2, embedding_dim=8
    )
    return {"retrieval": out / "retrieval", "ranking": out / "ranking"}
