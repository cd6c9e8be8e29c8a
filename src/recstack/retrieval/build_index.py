"""The ``build_index`` stage: a FAISS index over the retrieval model's item embeddings, with its quality.

Writes ``artifacts/build_index/items.faiss`` and ``index.json``: the settings, the similarity and the
version of the two-tower model whose candidate tower produced the vectors (serving refuses a mismatch),
Recall@K against exact search measured with real queries (the evaluated users' query embeddings), and
query latency.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from recstack.data.split import FIT_SPLITS
from recstack.evaluation.topk import read_interactions
from recstack.models.inputs import FeatureTables, Sequences
from recstack.retrieval.index import IndexConfig, make_index, measure, save_index
from recstack.retrieval.two_tower import TwoTowerRetriever
from recstack.training.train_retrieval import MODEL_DIR


@dataclass
class BuildIndexResult:
    card: dict[str, Any]
    metrics: dict[str, Any]  # recall (deterministic) and latency (varies run to run)


def retriever_and_queries(
    features_dir: str | Path, retrieval_dir: str | Path, max_queries: int
) -> tuple[TwoTowerRetriever, np.ndarray]:
    """The trained retriever and the measurement queries ``(Q, D)``: the first ``max_queries`` users'
    query embeddings after their fit-period history."""
    tables = FeatureTables.load(features_dir)
    retriever = TwoTowerRetriever.load(Path(retrieval_dir) / MODEL_DIR, tables)
    n_users = tables.spec.user_id.size
    users = np.arange(1, min(n_users, max_queries) + 1)
    # Only these users' fit rows: the whole log (every column) was 14 GB at 50M interactions.
    fit = read_interactions(features_dir, FIT_SPLITS, max_user=len(users))
    seq = Sequences.from_interactions(fit, n_users)
    return retriever, retriever.user_vectors(seq, users)


def build_index(
    features_dir: str | Path,
    retrieval_dir: str | Path,
    out_dir: str | Path,
    config: IndexConfig | None = None,
    *,
    recall_k: int = 100,
    max_queries: int = 2000,
) -> BuildIndexResult:
    """Embed the catalog with ``retrieval_dir/model``, index it, measure recall and latency, save.

    Args:
        features_dir / retrieval_dir: outputs of ``features`` and ``train_retrieval``.
        out_dir: ``artifacts/build_index``.
        config: FAISS settings (default HNSW).
        recall_k: K of the recall against exact search.
        max_queries: users whose query embeddings are the measurement queries (the first ones by index).
    """
    cfg = config or IndexConfig()
    retriever, queries = retriever_and_queries(features_dir, retrieval_dir, max_queries)
    start = time.perf_counter()
    index = make_index(retriever.item_vectors, retriever.card.similarity or "cosine", cfg)
    build_seconds = time.perf_counter() - start
    quality = measure(index, retriever.item_vectors, queries, recall_k)
    card = {
        "config": cfg.model_dump(),
        "similarity": retriever.card.similarity,
        "retrieval_version": retriever.card.version,
        "data_fingerprint": retriever.card.data_fingerprint,
        "n_items": int(index.ntotal),
        "dim": int(retriever.item_vectors.shape[1]),
        f"recall@{quality.k}": quality.recall,
    }
    save_index(index, out_dir, card)
    metrics = {
        **{k: v for k, v in asdict(quality).items()},
        "n_items": int(index.ntotal),
        "build_seconds": build_seconds,
        "kind": cfg.kind,
    }
    return BuildIndexResult(card=card, metrics=metrics)
