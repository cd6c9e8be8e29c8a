"""Deterministic A/B assignment: hash (experiment id, user id) into an experiment's weighted variants."""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

from recstack.policy.rerank import stable_hash
from recstack.serving.config import Experiment, Variant


def bucket(experiment_id: str, user_id: str) -> float:
    """A uniform number in [0, 1) fixed for the pair: the same user always lands in the same variant, and
    different experiments split users independently."""
    return stable_hash(experiment_id, user_id) / 2**64


def assign(experiment: Experiment, user_id: str) -> Variant:
    """The variant of ``user_id`` in ``experiment`` (weights need not sum to 1)."""
    weights = [v.weight for v in experiment.variants]
    edges = list(accumulate(w / sum(weights) for w in weights))
    return experiment.variants[min(bisect_right(edges, bucket(experiment.id, user_id)), len(edges) - 1)]


def active(experiments: list[Experiment], surface: str) -> Experiment | None:
    """The experiment running on ``surface`` (the config allows at most one per surface)."""
    for e in experiments:
        if surface in e.surfaces:
            return e
    return None
