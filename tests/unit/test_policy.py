"""The declarative policy: schema errors, and each rule's effect on a small hand-made catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from recstack.policy.rerank import PolicyCatalog, Request, rerank
from recstack.policy.schema import Policy, PolicyError, load_policy

# Items 1..8: categories A (1-4) and B (5-8); item 8 is new (2 days old, 0 interactions).
CATS = sp.csr_matrix(np.array([[0, 0]] + [[1, 0]] * 4 + [[0, 1]] * 4, dtype=np.float32))
CATALOG = PolicyCatalog(
    item_ids=np.array(["", "a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4"]),
    categories=CATS,
    category_names=["A", "B"],
    attributes={"brand": np.array(["", "x", "x", "y", "y", "x", "y", "x", "y"])},
    age_days=np.array([np.nan, 900, 800, 700, 600, 500, 400, 300, 2.0]),
    interactions=np.array([0, 90, 80, 70, 60, 50, 40, 30, 0]),
)
ITEMS = np.arange(1, 9)
SCORES = np.linspace(8, 1, 8)  # ranked 1..8


def _ids(result) -> list[str]:
    return [p.item_id for p in result.items]


def test_empty_policy_keeps_the_order_and_filters_seen() -> None:
    r = rerank(Policy(), CATALOG, Request(k=5, seen=frozenset({2})), ITEMS, SCORES)
    assert _ids(r) == ["a1", "a3", "a4", "b1", "b2"]
    assert r.filtered == {2: "already seen"}


def test_exclusions_and_region_availability() -> None:
    policy = Policy(
        exclude_item_ids=["a1"],
        exclude=[{"attribute": "brand", "values": ["y"]}],
        available_regions={"b1": ["EU"]},
    )
    r = rerank(policy, CATALOG, Request(k=8, region="US", exclude_item_ids=("a2",)), ITEMS, SCORES)
    assert _ids(r) == ["b3"]
    assert r.filtered[5] == "not available in region US" and r.filtered[1] == "excluded item"


def test_boost_bury_and_freshness_record_their_actions() -> None:
    policy = Policy(
        boosts=[{"attribute": "category", "values": ["B"], "factor": 3.0}],
        freshness={"max_age_days": 7, "factor": 10},
    )
    r = rerank(policy, CATALOG, Request(k=3), ITEMS, SCORES)
    assert _ids(r)[0] == "b4"  # the new item: lowest score, but boosted x3 and fresh x10
    assert any("fresh" in a for a in r.items[0].actions) and any("boost x3" in a for a in r.items[0].actions)
    bury = rerank(
        Policy(boosts=[{"attribute": "brand", "values": ["x"], "factor": 0.1}]),
        CATALOG,
        Request(k=2),
        ITEMS,
        SCORES,
    )
    assert _ids(bury) == ["a3", "a4"]


def test_category_cap_and_mmr_diversify() -> None:
    cap = rerank(
        Policy(diversity={"method": "category_cap", "max_per_category": 2}),
        CATALOG,
        Request(k=4),
        ITEMS,
        SCORES,
    )
    assert _ids(cap) == ["a1", "a2", "b1", "b2"]
    mmr = rerank(Policy(diversity={"method": "mmr", "lambda": 0.3}), CATALOG, Request(k=4), ITEMS, SCORES)
    # After a1, every A item is fully similar to it: b1 (rank 5) wins slot 2. Then each candidate is fully
    # similar to something chosen, so relevance decides again (hand-computed with lambda 0.3).
    assert _ids(mmr) == ["a1", "b1", "a2", "a3"]
    assert any(a.startswith("mmr:") for p in mmr.items for a in p.actions)


def test_exploration_is_seeded_per_request() -> None:
    policy = Policy(exploration={"fraction": 0.5, "start_position": 2, "max_item_interactions": 5})
    a = rerank(policy, CATALOG, Request(k=4, seed=7), ITEMS[:7], SCORES[:7], extra_candidates=np.array([8]))
    b = rerank(policy, CATALOG, Request(k=4, seed=7), ITEMS[:7], SCORES[:7], extra_candidates=np.array([8]))
    assert _ids(a) == _ids(b) and "b4" in _ids(a)
    assert next(p for p in a.items if p.item_id == "b4").source == "exploration"
    assert _ids(a)[0] == "a1"  # slots before start_position are never explored


def test_pins_and_sponsored_slots() -> None:
    policy = Policy(
        pins=[{"item_id": "b4", "position": 1}], sponsored=[{"position": 3, "item_ids": ["b2", "b3"]}]
    )
    r = rerank(policy, CATALOG, Request(k=4), ITEMS, SCORES)
    assert _ids(r) == ["b4", "a1", "b2", "a2"]
    assert r.items[0].source == "pin" and r.items[2].source == "sponsored"
    seen = rerank(policy, CATALOG, Request(k=4, seen=frozenset({8})), ITEMS, SCORES)
    assert "b4" not in _ids(seen)  # a pin never shows what the user already had


def test_policy_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"boosts.0.factor: Input should be greater than 0"):
        load_policy({"boosts": [{"attribute": "brand", "values": ["x"], "factor": 0}]})
    with pytest.raises(PolicyError, match="same positions \\[2\\]"):
        load_policy(
            {"pins": [{"item_id": "a", "position": 2}], "sponsored": [{"position": 2, "item_ids": ["b"]}]}
        )
    with pytest.raises(PolicyError, match="diversty: Extra inputs are not permitted"):
        load_policy({"diversty": {}})
    with pytest.raises(PolicyError, match="does not exist"):
        load_policy(tmp_path / "nope.yaml")
    f = tmp_path / "p.yaml"
    f.write_text("diversity:\n  method: mmr\n  lambda: 0.5\n")
    assert load_policy(f).diversity.lambda_ == 0.5
    with pytest.raises(ValueError, match="unknown item attribute 'colour'"):
        rerank(
            Policy(exclude=[{"attribute": "colour", "values": ["red"]}]), CATALOG, Request(k=2), ITEMS, SCORES
        )


def _numpy_mmr(weighted: np.ndarray, penalty: float, sim: np.ndarray, k: int) -> list[int]:
    """MMR's steps as numpy calls: what the compiled kernel replaced."""
    max_sim = np.zeros(len(weighted))
    chosen: list[int] = []
    for _ in range(min(k, len(weighted))):
        gain = weighted - penalty * max_sim
        gain[chosen] = -np.inf
        best = int(gain.argmax())
        chosen.append(best)
        np.maximum(max_sim, sim[best], out=max_sim)
    return chosen


@pytest.mark.parametrize("seed", range(6))
def test_compiled_mmr_picks_what_the_numpy_steps_picked(seed: int) -> None:
    """Ties (coarse relevances, shared categories), NaN relevances, k above and below the pool."""
    from recstack.kernels import mmr_picks

    rng = np.random.default_rng(seed)
    w = [0, 1, 5, 50, 50, 50][seed]
    weighted = np.round(rng.random(w), 1) * 0.7
    if seed == 5:
        weighted[[3, 17]] = np.nan
    unit = rng.integers(0, 2, (w, 4)).astype(np.float64)
    unit /= np.maximum(np.linalg.norm(unit, axis=1, keepdims=True), 1)
    sim = unit @ unit.T
    for k in (1, 10, 60):
        assert mmr_picks(weighted, 0.3, sim, k).tolist() == _numpy_mmr(weighted, 0.3, sim, k)


def test_unit_categories_dense_and_sparse_give_the_same_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small catalog keeps its unit category matrix dense (one gather per request), a large one walks
    the CSR rows: the same float64 rows either way, so MMR picks the same items."""
    from dataclasses import replace

    import recstack.policy.rerank as rr

    rng = np.random.default_rng(0)
    cats = sp.random(300, 25, density=0.1, format="csr", dtype=np.float32, rng=rng)
    cats.data[:] = 1.0
    fresh = {"_unit": None, "_unit_dense": None}  # CATALOG may have cached its own already
    base = replace(CATALOG, categories=cats, category_names=[str(c) for c in range(25)], **fresh)
    items = rng.integers(0, 300, 60)
    dense_cat = replace(base, **fresh)
    dense = dense_cat.unit_categories(items)
    assert dense_cat._unit_dense is not None
    monkeypatch.setattr(rr, "DENSE_UNIT_MAX_BYTES", 0)
    sparse_cat = replace(base, **fresh)
    sparse = sparse_cat.unit_categories(items)
    assert sparse_cat._unit_dense is None
    np.testing.assert_array_equal(dense, sparse)
    norms = np.linalg.norm(dense, axis=1)
    np.testing.assert_allclose(norms[norms > 0], 1.0)
