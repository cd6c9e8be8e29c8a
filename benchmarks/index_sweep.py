"""Pick FAISS settings by measurement: recall@K against exact search and single-query latency of several
index settings over one project's trained item embeddings.

    python benchmarks/index_sweep.py [PROJECT_DIR] [--k 100] [--queries 500]

PROJECT_DIR is a project whose ``train_retrieval`` stage has run (default: this one;
``large_catalog_pipeline.sh`` leaves a 1M-item one), with the ``build_index`` stage's queries (the first
users). Each setting is built with the same
``make_index`` / ``measure`` as the ``build_index`` stage; the table shows build time, recall and the p50 /
p95 of one query on one thread (how the service searches). Copy the chosen row into ``params.yaml:
build_index``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recstack.retrieval.build_index import retriever_and_queries
from recstack.retrieval.index import IndexConfig, make_index, measure

HERE = Path(__file__).resolve().parent
# Each entry: the settings that differ from IndexConfig's defaults.
SETTINGS: list[dict] = [
    {"kind": "hnsw", "hnsw_m": 32, "ef_construction": 200, "ef_search": 128},
    {"kind": "hnsw", "hnsw_m": 16, "ef_construction": 100, "ef_search": 128},
    {"kind": "ivf_flat", "nlist": 4096, "nprobe": 8},
    {"kind": "ivf_flat", "nlist": 4096, "nprobe": 16},
    {"kind": "ivf_flat", "nlist": 4096, "nprobe": 32},
    {"kind": "ivf_flat", "nlist": 4096, "nprobe": 64},
    {"kind": "ivf_pq", "nlist": 4096, "nprobe": 32, "pq_m": 16, "pq_bits": 8},
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("project", nargs="?", default=str(HERE.parent))
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--only", nargs="*", type=int, help="indices into SETTINGS to run (default: all)")
    args = ap.parse_args()
    project = Path(args.project) / "artifacts"
    retriever, queries = retriever_and_queries(
        project / "features", project / "train_retrieval", args.queries
    )
    similarity = retriever.card.similarity or "cosine"
    print(f"{retriever.item_vectors.shape[0] - 1} items, {len(queries)} queries, recall@{args.k}")
    print(f"{'setting':58s} {'build s':>8s} {'recall':>7s} {'p50 ms':>7s} {'p95 ms':>7s}")
    rows = []
    for i, over in enumerate(SETTINGS):
        if args.only and i not in args.only:
            continue
        cfg = IndexConfig(**over)
        start = time.perf_counter()
        index = make_index(retriever.item_vectors, similarity, cfg)
        build_s = time.perf_counter() - start
        q = measure(index, retriever.item_vectors, queries, args.k)
        label = ", ".join(f"{k}={v}" for k, v in over.items())
        print(f"{label:58s} {build_s:8.1f} {q.recall:7.4f} {q.p50_ms:7.3f} {q.p95_ms:7.3f}", flush=True)
        rows.append({**over, "build_s": build_s, "recall": q.recall, "p50_ms": q.p50_ms, "p95_ms": q.p95_ms})
        del index
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
