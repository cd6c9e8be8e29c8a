"""The ``evaluate`` stage: every system ranked the same way and scored by the same code (protocol P1).

Systems: the baselines (tuned on valid, refit on train + valid), the two-tower alone (plus its candidate
Recall@100/200/500) and the funnel (two-tower candidates re-scored by the DLRM ranker). Each gets the P1
accuracy metrics at every K, beyond-accuracy metrics of its top 10 (intra-list diversity over categories,
novelty, average popularity) and segment slices (short-history users, long-tail items, new items).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from recstack.baselines.ease import EASE
from recstack.baselines.most_popular import MostPopular
from recstack.baselines.rp3beta import RP3beta
from recstack.baselines.tuning import DEFAULT_GRIDS, tune
from recstack.data.split import FIT_SPLITS, SPLIT
from recstack.evaluation.metrics import DEFAULT_KS, intra_list_diversity, popularity_metrics, ranking_metrics
from recstack.evaluation.segments import segment_metrics
from recstack.evaluation.topk import p1_matrices, p1_valid_matrices, read_interactions, topk
from recstack.models.inputs import FeatureTables, Sequences
from recstack.policy.catalog import policy_catalog
from recstack.policy.rerank import Request, rerank
from recstack.policy.schema import Policy, load_policy
from recstack.ranking.features import RankingContext
from recstack.ranking.scorer import FunnelRanker
from recstack.retrieval.two_tower import TwoTowerRetriever
from recstack.training.train_ranking import MODEL_DIR as RANKING_MODEL_DIR
from recstack.training.train_retrieval import MODEL_DIR as RETRIEVAL_MODEL_DIR

BASELINES = {"most_popular": MostPopular, "ease": EASE, "rp3beta": RP3beta}
CANDIDATE_KS = (100, 200, 500)
BEYOND_K = 10  # beyond-accuracy metrics describe what a user sees: the first page
CURVE_KS = (1, 5, 10, 20, 50, 100)


@dataclass
class EvaluateResult:
    """Metrics per system (``metrics/evaluate.json``), segment slices per system
    (``metrics/evaluate_segments.json``), the recall / NDCG curves, tuning tables, timings."""

    metrics: dict[str, dict[str, Any]]
    segments: dict[str, dict[str, dict[str, float]]]
    curves: pl.DataFrame
    tuning: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class _Eval:
    """The shared ingredients of every system's evaluation."""

    users: np.ndarray
    fit: sp.csr_matrix
    test: sp.csr_matrix
    item_count: np.ndarray
    categories: sp.csr_matrix
    n_items: int
    ks: tuple[int, ...]
    short_history_max: int
    head_interaction_share: float

    def score(self, ranked: np.ndarray) -> dict[str, Any]:
        relevant = self.test[self.users]
        out: dict[str, Any] = ranking_metrics(ranked, relevant, self.ks, n_items=self.n_items)
        first = ranked[:, :BEYOND_K]
        out[f"diversity@{BEYOND_K}"] = intra_list_diversity(first, self.categories)
        pop = popularity_metrics(first, self.item_count, int((np.diff(self.fit.indptr) > 0).sum()))
        out[f"novelty@{BEYOND_K}"] = pop["novelty"]
        out[f"avg_popularity@{BEYOND_K}"] = pop["avg_popularity"]
        out["segments"] = segment_metrics(
            ranked,
            relevant,
            self.fit[self.users],
            self.item_count,
            self.ks,
            short_history_max=self.short_history_max,
            head_interaction_share=self.head_interaction_share,
        )
        return out


def evaluate(
    features_dir: str | Path,
    retrieval_dir: str | Path | None,
    ranking_dir: str | Path | None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    baselines: Sequence[str] = ("most_popular", "ease", "rp3beta"),
    tune_baselines: bool = True,
    tuning_metric: str = "ndcg@10",
    short_history_max: int = 20,
    head_interaction_share: float = 0.5,
    policy: Policy | dict | None = None,
    max_users: int | None = None,
    seed: int = 0,
) -> EvaluateResult:
    """Evaluate baselines, the two-tower and the funnel on the test split under protocol P1.

    Args:
        features_dir: the ``features`` stage's output.
        retrieval_dir / ranking_dir: outputs of ``train_retrieval`` / ``train_ranking`` (None skips
            the learned systems).
        ks: cut-offs of the accuracy metrics.
        baselines: names from :data:`BASELINES`.
        tune_baselines: grid-search each baseline on valid (``DEFAULT_GRIDS``) before the refit.
        tuning_metric: the valid metric tuning maximizes.
        short_history_max / head_interaction_share: segment definitions.
        policy: the re-ranking policy (``params.yaml: policy``); when given, ``funnel_reranked`` is the
            funnel's full candidate list re-ranked by it, the same code the service runs.
        max_users: score a seeded sample of at most this many test users, the same for every system
            (None: all, as protocol P1 asks; a sample is for logs of millions of users).
        seed: the sample's seed.
    """
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {sorted(BASELINES)}")
    ks = tuple(sorted(set(ks)))
    tables = FeatureTables.load(features_dir)
    spec = tables.spec
    n_users, n_items = spec.user_id.size, spec.item_id.size
    for name in baselines:  # fail before any work, not after the first hour
        BASELINES[name].check_catalog(n_items + 1)
    if max_users is not None and max_users < 1:
        raise ValueError(f"max_users must be at least 1 (or None for every test user), got {max_users}")
    interactions = read_interactions(features_dir)
    fit, test = p1_matrices(interactions, n_users, n_items)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    if len(users) == 0:
        raise ValueError(f"{features_dir} has no test interactions of known users: nothing to evaluate")
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    ev = _Eval(
        users=users,
        fit=fit,
        test=test,
        item_count=np.asarray(fit.sum(axis=0)).ravel(),
        categories=tables.category_matrix(),
        n_items=n_items,
        ks=ks,
        short_history_max=short_history_max,
        head_interaction_share=head_interaction_share,
    )
    k_max = max(ks)
    metrics: dict[str, dict[str, Any]] = {}
    rankings: dict[str, np.ndarray] = {}
    tuning: dict[str, list[dict[str, Any]]] = {}
    seconds: dict[str, float] = {}
    train_sub, valid = p1_valid_matrices(interactions, n_users, n_items)
    for name in baselines:
        start = time.perf_counter()
        params: dict[str, Any] = {}
        grid = DEFAULT_GRIDS.get(name, {})
        if tune_baselines and grid and valid.nnz:
            result = tune(BASELINES[name], grid, train_sub, valid, metric=tuning_metric)
            params, tuning[name] = result.best_params, result.rows
        model = BASELINES[name](**params).fit(fit)
        rankings[name] = topk(model.score, users, fit, k_max)
        metrics[name] = {**ev.score(rankings[name]), "params": params}
        seconds[name] = time.perf_counter() - start

    if retrieval_dir is not None:
        start = time.perf_counter()
        fit_seq = Sequences.from_interactions(interactions.filter(pl.col(SPLIT).is_in(FIT_SPLITS)), n_users)
        retriever = TwoTowerRetriever.load(Path(retrieval_dir) / RETRIEVAL_MODEL_DIR, tables)
        cands, _ = retriever.candidates(fit_seq, users, fit, max(*CANDIDATE_KS, k_max))
        rankings["two_tower"] = cands[:, :k_max]
        metrics["two_tower"] = ev.score(cands[:, :k_max])
        cand_metrics = ranking_metrics(cands, test[users], CANDIDATE_KS, n_items=n_items)
        for k in CANDIDATE_KS:
            metrics["two_tower"][f"candidate_recall@{k}"] = cand_metrics[f"recall@{k}"]
        metrics["two_tower"]["version"] = retriever.card.version
        seconds["two_tower"] = time.perf_counter() - start
        if ranking_dir is not None:
            start = time.perf_counter()
            funnel = FunnelRanker.load(Path(ranking_dir) / RANKING_MODEL_DIR, retriever)
            funnel.n_candidates = min(funnel.n_candidates, n_items)
            ctx = RankingContext.build(tables, fit_seq, retriever.item_vectors)
            ranked, logits = funnel.rank(ctx, users, fit, funnel.n_candidates)
            rankings["funnel"] = ranked[:, :k_max]
            metrics["funnel"] = {
                **ev.score(_pad(ranked[:, :k_max], k_max)),
                "n_candidates": funnel.n_candidates,
                "version": funnel.card.version,
            }
            seconds["funnel"] = time.perf_counter() - start
            if policy is not None:
                start = time.perf_counter()
                rules = policy if isinstance(policy, Policy) else load_policy(policy)
                reranked = _apply_policy(
                    rules, policy_catalog(tables, features_dir), users, fit, ranked, logits, k_max
                )
                rankings["funnel_reranked"] = reranked
                metrics["funnel_reranked"] = {**ev.score(reranked), "policy": rules.name}
                seconds["funnel_reranked"] = time.perf_counter() - start
    # Segments go to their own file: nested in the main one they would drown `dvc metrics show`.
    segments = {name: m.pop("segments") for name, m in metrics.items()}
    return EvaluateResult(
        metrics=metrics, segments=segments, curves=_curves(rankings, ev), tuning=tuning, seconds=seconds
    )


def _apply_policy(
    policy: Policy,
    catalog,
    users: np.ndarray,
    seen: sp.csr_matrix,
    ranked: np.ndarray,
    logits: np.ndarray,
    k: int,
) -> np.ndarray:
    """Each user's funnel list re-ranked by the policy, as the service would: ``(B, k)``, -1 = empty."""
    out = np.full((len(users), k), -1, dtype=np.int64)
    for r, u in enumerate(users):
        request = Request(k=k, seen=frozenset(seen[u].indices.tolist()), seed=int(u))
        result = rerank(policy, catalog, request, ranked[r], logits[r])
        items = [p.item for p in result.items]
        out[r, : len(items)] = items
    return out


def _pad(ranked: np.ndarray, k: int) -> np.ndarray:
    """Right-pad with -1 (empty slots) to ``k`` columns: a catalog smaller than K still scores."""
    if ranked.shape[1] >= k:
        return ranked
    return np.pad(ranked, ((0, 0), (0, k - ranked.shape[1])), constant_values=-1)


def _curves(rankings: dict[str, np.ndarray], ev: _Eval) -> pl.DataFrame:
    """Recall@K and NDCG@K for K in :data:`CURVE_KS`, one row per (K, system)."""
    ks = [k for k in CURVE_KS if k <= max(ev.ks)]
    rows = []
    for name, ranked in rankings.items():
        m = ranking_metrics(_pad(ranked, max(ks)), ev.test[ev.users], ks, n_items=ev.n_items)
        rows += [{"system": name, "k": k, "recall": m[f"recall@{k}"], "ndcg": m[f"ndcg@{k}"]} for k in ks]
    return pl.DataFrame(rows)


def summary_table(metrics: dict[str, dict[str, Any]], keys: Sequence[str]) -> pl.DataFrame:
    """One row per system with the chosen metric columns (for the notebook and the closing report)."""
    return pl.DataFrame([{"system": s, **{k: m.get(k) for k in keys}} for s, m in metrics.items()])
