"""How far a few clicks move a user's recommendations toward what they clicked.

    python benchmarks/session_shift.py [BUNDLE_DIR] [--users 10] [--clicks 5] [--k 10]

For each sampled user: the category least present in their top ``k`` (among categories with 30+ items)
gets ``--clicks`` clicks on its most popular unseen items, through ``Recommender.feedback`` (the embedded
online state, as the service applies it). Printed per user: cos(query before, query after) and the
category's share of the top ``k`` before and after; then the mean shift.
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from recstack.serving.engine import Recommender
from recstack.serving.schemas import FeedbackEvent, RecommendRequest
from recstack.serving.stages import Job


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "bundle", nargs="?", default=str(Path(__file__).resolve().parents[1] / "artifacts/package/bundle")
    )
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as logs:
        rec = Recommender.load(args.bundle, log_dir=logs)
        b = rec.bundle
        cats = b.catalog.categories.tocsc()
        sizes = np.diff(cats.indptr)

        def share(ids: list[str], c: int) -> float:
            return float(np.mean([cats[b.item_index(i), c] > 0 for i in ids]))

        def query(user: str) -> np.ndarray:
            h = rec.online.histories([user])[0]
            job = Job(
                user=b.user_index(user), current=0, drop=np.array([]), n=args.k, history=(h.items, h.times)
            )
            return rec.stages.queries([job])[0]

        shifts = []
        step = max(1, b.tables.spec.user_id.size // args.users)
        for ui in range(1, b.tables.spec.user_id.size, step)[: args.users]:
            user = str(b.tables.spec.user_id.values[ui])
            before = [i.item_id for i in rec.recommend(RecommendRequest(user_id=user, k=args.k)).items]
            seen = set(b.seen(b.user_index(user)).tolist())
            c = min(
                (c for c in range(1, cats.shape[1]) if sizes[c] >= 30),
                key=lambda c: (share(before, c), -sizes[c]),
            )
            members = [
                int(i) for i in cats.indices[cats.indptr[c] : cats.indptr[c + 1]] if int(i) not in seen
            ]
            members.sort(key=lambda i: -b.catalog.interactions[i])
            q0 = query(user)
            for n, item in enumerate(members[: args.clicks]):
                ts = datetime.now(UTC) - timedelta(minutes=args.clicks - n)
                rec.feedback(
                    FeedbackEvent(
                        user_id=user, item_id=str(b.catalog.item_ids[item]), event_type="click", timestamp=ts
                    )
                )
            q1 = query(user)
            after = [i.item_id for i in rec.recommend(RecommendRequest(user_id=user, k=args.k)).items]
            cos = float(q0 @ q1 / (np.linalg.norm(q0) * np.linalg.norm(q1)))
            shifts.append((share(before, c), share(after, c)))
            print(
                f"user {user}: category {c}, query cos {cos:.4f}, share {shifts[-1][0]:.2f} -> {shifts[-1][1]:.2f}"
            )
        rec.close()
    mean = np.mean(shifts, axis=0)
    print(f"mean share of the clicked category in the top {args.k}: {mean[0]:.3f} -> {mean[1]:.3f}")


if __name__ == "__main__":
    main()
