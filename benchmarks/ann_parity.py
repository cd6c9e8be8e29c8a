"""How often the ANN index changes what a user is served: the service's lists with the FAISS index against
exact whole-catalog scoring, same models, policy and requests.

    python benchmarks/ann_parity.py [BUNDLE_DIR] [--users 1000] [--k 10]

BUNDLE_DIR is a packaged bundle (default: this project's ``artifacts/package/bundle``). Prints the share
of users whose final list is identical (items and order), the mean overlap of the two lists, and the
candidate recall of the index (the share of the exact top-``n_candidates`` that ANN retrieved).
A small HNSW index is served by a full scan (``serving.full_scan_max_items``), which is exact: the
figures then say so (``"search": "full_scan"``); ``--full-scan-max-items 0`` measures the graph itself.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recstack.serving.engine import Recommender
from recstack.serving.schemas import RecommendRequest
from recstack.serving.stages import Job

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", default=str(HERE.parent / "artifacts" / "package" / "bundle"))
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument(
        "--full-scan-max-items",
        type=int,
        default=None,
        help="override serving.full_scan_max_items (0: always walk the HNSW graph)",
    )
    args = ap.parse_args()
    no_cache = {"cache": {"enabled": False}}
    scan = {} if args.full_scan_max_items is None else {"full_scan_max_items": args.full_scan_max_items}
    ann = Recommender.load(args.bundle, overrides={**no_cache, **scan, "retrieval": "ann"})
    exact = Recommender.load(args.bundle, overrides={**no_cache, "retrieval": "exact"})
    try:
        users = ann.bundle.tables.spec.user_id.values.to_list()
        rng = np.random.default_rng(0)
        pick = rng.choice(len(users), size=min(args.users, len(users)), replace=False)
        reqs = [RecommendRequest(user_id=str(users[i]), k=args.k) for i in pick]
        same = overlap = 0.0
        recall = []
        for s in range(0, len(reqs), args.batch):
            batch = reqs[s : s + args.batch]
            a = ann.recommend_batch(batch)
            e = exact.recommend_batch(batch)
            for ra, re_ in zip(a, e, strict=True):
                la, le = [i.item_id for i in ra.items], [i.item_id for i in re_.items]
                same += la == le
                overlap += len(set(la) & set(le)) / max(len(le), 1)
            jobs = []
            for r in batch:
                user = ann.bundle.user_index(r.user_id)
                jobs.append(Job(user=user, current=0, drop=ann.bundle.seen(user), n=ann.config.n_candidates))
            for ca, ce in zip(ann.stages.retrieve(jobs), exact.stages.retrieve(jobs), strict=True):
                if len(ce.items):
                    recall.append(len(np.intersect1d(ca.items, ce.items)) / len(ce.items))
        n = len(reqs)
        print(
            json.dumps(
                {
                    "users": n,
                    "k": args.k,
                    "identical_lists": round(same / n, 4),
                    "mean_overlap_at_k": round(overlap / n, 4),
                    "candidate_recall": round(float(np.mean(recall)), 4),
                    "n_candidates": ann.config.n_candidates,
                    "index": (ann.bundle.card.get("index") or {}).get("config"),
                    "search": "full_scan" if ann.stages.full_scan else "index",
                },
                indent=1,
            )
        )
    finally:
        ann.close()
        exact.close()


if __name__ == "__main__":
    main()
