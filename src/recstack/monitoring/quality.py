"""Recommendation quality of served lists, scored by the offline evaluation's own metric code.

A served list is scored like an offline top-K list (:mod:`recstack.evaluation.metrics`, protocol P1): its
relevant items are what the user engaged with after it, namely the positive feedback tied to it (a click
with its ``request_id``) and the positive events they had outside it (``organic``: no request id), each
credited to the user's latest response before it, within ``horizon``. So precision / recall / NDCG online
mean what they mean offline. Beyond accuracy, on the same definitions: intra-list diversity over item
categories, novelty, average popularity, coverage; and popularity bias (the long tail's share of
impressions, the Gini coefficient of exposure) and personalization (1 - mean overlap of two users' lists).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scipy.sparse as sp

from recstack.data.split import TEST, TRAIN, VALID
from recstack.evaluation.metrics import intra_list_diversity, popularity_metrics, ranking_metrics
from recstack.evaluation.segments import long_tail_items
from recstack.features.encoders import Vocabulary
from recstack.models.inputs import FeatureTables

ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"


@dataclass
class CatalogStats:
    """The served snapshot's catalog: what served lists are compared with (index 0 = unknown item)."""

    items: Vocabulary  # raw item id -> index 1..n_items
    categories: sp.csr_matrix  # (n_items + 1, n_categories + 1) multi-hot
    category_of: np.ndarray  # (n_items + 1,) object: each item's first category name ("none" if none)
    item_count: np.ndarray  # (n_items + 1,) snapshot interactions per item
    n_users: int  # users with snapshot interactions
    tail: np.ndarray  # (n_items + 1,) bool: long-tail items (outside the head of the interactions)
    interactions: pl.DataFrame  # the snapshot's events: ``item_idx``, ``category`` (engagement reference)

    @property
    def n_items(self) -> int:
        return self.item_count.size - 1

    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | Path,
        splits: tuple[str, ...] = (TRAIN, VALID),
        head_interaction_share: float = 0.5,
    ) -> CatalogStats:
        """From a serving bundle's features, on the snapshot the service served (default train + valid)."""
        features = Path(bundle_dir) / "features"
        tables = FeatureTables.load(features)
        spec = tables.spec
        n_items = spec.item_id.size
        unknown = sorted(set(splits) - {TRAIN, VALID, TEST})
        if unknown:
            raise ValueError(f"unknown splits {unknown}")
        events = pl.read_parquet(
            features / INTERACTIONS_FILE, columns=["user_idx", "item_idx", "split"]
        ).filter(pl.col("split").is_in(list(splits)))
        count = np.bincount(events["item_idx"].to_numpy(), minlength=n_items + 1).astype(np.float64)
        names = pl.read_parquet(features / ITEMS_FILE, columns=["item_idx", "categories"])
        category_of = np.full(n_items + 1, "none", dtype=object)
        idx = names["item_idx"].to_numpy()
        category_of[idx] = [
            c[0] if c is not None and len(c) else "none" for c in names["categories"].to_list()
        ]
        return cls(
            items=spec.item_id,
            categories=tables.category_matrix(),
            category_of=category_of,
            item_count=count,
            n_users=int(events["user_idx"].n_unique()),
            tail=long_tail_items(count, head_interaction_share),
            interactions=events.select(
                "item_idx", pl.Series("category", category_of[events["item_idx"].to_numpy()], pl.String)
            ),
        )

    def index(self, item_ids: pl.Series) -> np.ndarray:
        """Item indices of raw (string) ids, 0 for items not in the catalog."""
        return self.items.lookup(item_ids)


def attributed_engagement(
    responses: pl.DataFrame, feedback: pl.DataFrame, positive: tuple[str, ...], horizon: str = "30m"
) -> pl.DataFrame:
    """``request_id`` and ``item_id`` of every positive event, credited to a response: the one it names,
    or (organic events) the user's latest response at most ``horizon`` before it. Unattributable events
    are dropped. ``responses`` from ``join.read_responses``, ``feedback`` from ``join.read_feedback``."""
    pos = feedback.filter(pl.col("event_type").is_in(list(positive)))
    tied = pos.filter(pl.col("request_id").is_not_null()).select("request_id", "item_id")
    organic = (
        pos.filter(pl.col("request_id").is_null()).select("user_id", "item_id", "timestamp").sort("timestamp")
    )
    served = responses.select("request_id", "user_id", pl.col("at").alias("timestamp")).sort("timestamp")
    credited = organic.join_asof(
        served,
        on="timestamp",
        by="user_id",
        strategy="backward",
        tolerance=horizon,
        check_sortedness=False,  # (sorted by time: within each user too)
    ).drop_nulls("request_id")
    return pl.concat([tied, credited.select("request_id", "item_id")]).unique()


def list_matrix(shown: pl.DataFrame, stats: CatalogStats, k: int) -> tuple[np.ndarray, pl.Series]:
    """``(n_responses, k)`` item indices of each response's list by position (-1 = empty slot), and the
    responses' ids in row order. ``shown``: impressions (``request_id``, ``position``, ``item_id``)."""
    rows = shown.select("request_id").unique(maintain_order=True)["request_id"]
    row_of = pl.DataFrame({"request_id": rows, "_row": np.arange(rows.len())})
    cells = shown.filter(pl.col("position") <= k).join(row_of, on="request_id")
    topk = np.full((rows.len(), k), -1, dtype=np.int64)
    idx = stats.index(cells["item_id"])
    idx = np.where(idx > 0, idx, -1)  # items unknown to the snapshot are scored as empty slots
    topk[cells["_row"].to_numpy(), cells["position"].to_numpy() - 1] = idx
    return topk, rows


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of ``counts`` (0: every item equally exposed; 1: one item gets everything)."""
    x = np.sort(np.asarray(counts, dtype=np.float64))
    n, total = x.size, x.sum()
    if n == 0 or total == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * total))


def personalization(topk: np.ndarray, users: np.ndarray, pairs: int, rng: np.random.Generator) -> float:
    """1 - mean Jaccard overlap of the lists of random pairs of distinct users (one list per user: their
    latest). 1 = no two users see the same items; 0 = everyone sees one list. NaN with fewer than 2 users."""
    _, last = np.unique(users[::-1], return_index=True)
    lists = topk[::-1][last]
    if len(lists) < 2:
        return float("nan")
    a = rng.integers(len(lists), size=pairs)
    b = (a + rng.integers(1, len(lists), size=pairs)) % len(lists)  # never the same user
    overlap = []
    for x, y in zip(lists[a], lists[b], strict=True):
        sx, sy = set(x[x >= 0].tolist()), set(y[y >= 0].tolist())
        union = len(sx | sy)
        overlap.append(len(sx & sy) / union if union else 0.0)
    return float(1.0 - np.mean(overlap))


def quality_metrics(
    shown: pl.DataFrame,
    engaged: pl.DataFrame,
    stats: CatalogStats,
    k: int = 10,
    sample: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """Quality of one group of served lists (e.g. a window).

    Args:
        shown: impressions (``join.impressions``) of the group: ``request_id``, ``user_id``, ``position``,
            ``item_id``.
        engaged: :func:`attributed_engagement` (any superset: only the group's requests are used).
        k: the cut-off.
        sample: lists scored for diversity and user pairs for personalization (pairwise work; a sample
            keeps a day of traffic cheap; every list counts for the other metrics).

    Returns:
        ``precision@k``, ``recall@k``, ``ndcg@k``, ``hit_rate@k``, ``mrr@k`` (over lists followed by
        engagement, ``engaged_lists`` of them), ``diversity@k``, ``novelty@k``, ``avg_popularity@k``,
        ``coverage@k``, ``tail_share``, ``exposure_gini``, ``personalization``, ``lists``.
    """
    if shown.is_empty():
        raise ValueError("no impressions: nothing to score")
    rng = np.random.default_rng(seed)
    topk, rows = list_matrix(shown, stats, k)
    n = topk.shape[0]
    rel = engaged.join(pl.DataFrame({"request_id": rows, "_row": np.arange(n)}), on="request_id")
    cols = stats.index(rel["item_id"])
    relevant = sp.csr_matrix(
        (np.ones(rel.height, dtype=np.float32), (rel["_row"].to_numpy(), cols)), shape=(n, stats.n_items + 1)
    )
    relevant.data[:] = 1.0
    relevant.eliminate_zeros()
    out: dict[str, float] = {"lists": float(n)}
    acc = ranking_metrics(topk, relevant, (k,), n_items=stats.n_items) if relevant.nnz else None
    for name in ("precision", "recall", "ndcg", "hit_rate", "mrr"):
        out[f"{name}@{k}"] = acc[f"{name}@{k}"] if acc else float("nan")
    out["engaged_lists"] = float(acc["users"]) if acc else 0.0
    pick = topk if n <= sample else topk[rng.choice(n, size=sample, replace=False)]
    out[f"diversity@{k}"] = intra_list_diversity(pick, stats.categories)
    pop = popularity_metrics(topk, stats.item_count, stats.n_users)
    out[f"novelty@{k}"], out[f"avg_popularity@{k}"] = pop["novelty"], pop["avg_popularity"]
    served = topk[topk >= 0]
    exposure = np.bincount(served, minlength=stats.n_items + 1)[1:]
    out[f"coverage@{k}"] = float((exposure > 0).sum() / stats.n_items)
    out["tail_share"] = float(stats.tail[served].mean()) if served.size else float("nan")
    out["exposure_gini"] = gini(exposure)
    users = shown.select("request_id", "user_id").unique("request_id", keep="first")
    by_row = pl.DataFrame({"request_id": rows}).join(
        users, on="request_id", how="left", maintain_order="left"
    )
    out["personalization"] = personalization(topk, by_row["user_id"].to_numpy(), min(sample, 4 * n), rng)
    return out
