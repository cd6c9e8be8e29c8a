"""Service fixtures: a serving bundle built from the small trained models, the engine, the BentoML app."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

SERVING = {"n_candidates": 30, "n_neighbours": 20, "popular_items": 100, "cache": {"ttl_seconds": 60}}
POLICY = {"name": "test", "diversity": {"method": "mmr", "lambda": 0.9, "window": 30}}


@pytest.fixture(scope="session")
def index_dir(
    small_features: Path, small_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from recstack.retrieval.build_index import build_index
    from recstack.retrieval.index import IndexConfig

    out = tmp_path_factory.mktemp("index")
    build_index(small_features, small_models["retrieval"], out, IndexConfig(kind="hnsw"), max_queries=50)
    return out


@pytest.fixture(scope="session")
def bundle_dir(
    small_features: Path,
    small_models: dict[str, Path],
    index_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Path:
    from recstack.serving.bundle import build_bundle

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    build_bundle(
        small_features,
        small_models["retrieval"] / "model",
        small_models["ranking"] / "model",
        index_dir,
        out,
        policy=POLICY,
        serving=SERVING,
    )
    return out


@pytest.fixture(scope="session")
def loaded_bundle(bundle_dir: Path):
    from recstack.serving.bundle import load_bundle

    return load_bundle(bundle_dir)


@pytest.fixture
def recommender(loaded_bundle, tmp_path: Path) -> Iterator:
    """A fresh engine (own cache and logs) over the shared loaded bundle."""
    from recstack.serving.engine import Recommender

    rec = Recommender(loaded_bundle, log_dir=tmp_path / "logs")
    yield rec
    rec.close()


@pytest.fixture(scope="session")
def bento_store(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle imported into a BentoML model store of its own (BentoML's home is per process)."""
    from recstack.serving.package import import_bundle, use_store

    home = use_store(tmp_path_factory.mktemp("bentoml_home"))
    import_bundle(bundle_dir, "test")
    return home


@pytest.fixture(scope="session")
def service_client(bento_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    """The BentoML service in-process behind Starlette's test client (ASGI)."""
    import os

    from starlette.testclient import TestClient

    os.environ["RECSTACK_LOG_DIR"] = str(tmp_path_factory.mktemp("service_logs"))
    sys.path.insert(0, str(PROJECT_ROOT / "bentos"))
    from service import Recstack

    with TestClient(Recstack.to_asgi(), raise_server_exceptions=False) as client:
        client.log_dir = Path(os.environ["RECSTACK_LOG_DIR"])
        yield client
