"""Apply a :class:`~recstack.policy.schema.Policy` to a ranked candidate list, recording every action.

Offline evaluation (``funnel_reranked``) and the service call :func:`rerank` with the same catalog view,
so the policy measured offline is the policy served.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from recstack.kernels import mmr_picks
from recstack.models.inputs import gather_ranges
from recstack.policy.schema import AttributeMatch, Policy

CATEGORY_ATTRIBUTE = "category"
# Catalogs whose unit category matrix fits in this many bytes dense keep it dense for MMR (a row gather per
# request instead of a CSR walk, ~40 us less); larger ones (many items x many categories) stay sparse.
DENSE_UNIT_MAX_BYTES = 64 * 2**20


@dataclass
class PolicyCatalog:
    """What rules need to know about items, indexed by item index (row 0 = unknown item).

    Attributes:
        item_ids: ``(n_items + 1,)`` raw item ids as strings ("" for row 0).
        categories: ``(n_items + 1, n_categories)`` multi-hot CSR; ``category_names`` its columns.
        attributes: item column -> ``(n_items + 1,)`` string values (e.g. brand).
        age_days: ``(n_items + 1,)`` days since creation / first interaction at reference time (NaN unknown).
        interactions: ``(n_items + 1,)`` observed interaction counts (uncertainty for exploration).
    """

    item_ids: np.ndarray
    categories: sp.csr_matrix
    category_names: list[str]
    attributes: dict[str, np.ndarray]
    age_days: np.ndarray
    interactions: np.ndarray
    _index: dict[str, int] = field(default_factory=dict, repr=False)
    _unit: sp.csr_matrix | None = field(default=None, repr=False)
    _unit_dense: np.ndarray | None = field(default=None, repr=False)

    def unit_categories(self, items: np.ndarray | list[int]) -> np.ndarray:
        """Dense ``(len(items), n_categories)`` float64 category vectors scaled to unit length (zero rows
        for items without a category): MMR's similarity is their dot product, the category cosine."""
        if self._unit is None:
            v = self.categories.astype(np.float64)
            norms = np.sqrt(np.asarray(v.multiply(v).sum(axis=1)).ravel())
            norms[norms == 0] = 1.0
            self._unit = (sp.diags(1 / norms) @ v).tocsr()
            if self._unit.shape[0] * self._unit.shape[1] * 8 <= DENSE_UNIT_MAX_BYTES:
                self._unit_dense = self._unit.toarray()
        items = np.asarray(items, dtype=np.int64)
        if self._unit_dense is not None:  # one gather: the same values as the CSR rows written out
            return self._unit_dense[items]
        # Rows gathered straight from the CSR arrays: scipy's fancy row indexing costs ~0.3 ms a call.
        u = self._unit
        starts, lengths = u.indptr[items], u.indptr[items + 1] - u.indptr[items]
        out = np.zeros((len(items), u.shape[1]), dtype=np.float64)
        rows = np.repeat(np.arange(len(items)), lengths)
        out[rows, gather_ranges(u.indices, starts, lengths)] = gather_ranges(u.data, starts, lengths)
        return out

    def index_of(self, item_id: str) -> int:
        """Item index of a raw id (0 = unknown)."""
        if not self._index:
            self._index = {str(v): i for i, v in enumerate(self.item_ids) if i > 0}
        return self._index.get(str(item_id), 0)

    def matches(self, rule: AttributeMatch, items: np.ndarray) -> np.ndarray:
        """Boolean ``(len(items),)``: items whose attribute takes one of the rule's values."""
        wanted = set(rule.values)
        if rule.attribute == CATEGORY_ATTRIBUTE:
            cols = [j for j, name in enumerate(self.category_names) if name in wanted]
            if not cols:
                return np.zeros(len(items), dtype=bool)
            return np.asarray(self.categories[items][:, cols].sum(axis=1)).ravel() > 0
        if rule.attribute not in self.attributes:
            raise ValueError(
                f"policy rule on unknown item attribute {rule.attribute!r}; known: "
                f"{sorted([CATEGORY_ATTRIBUTE, *self.attributes])}"
            )
        return np.isin(self.attributes[rule.attribute][items], list(wanted))


@dataclass
class Request:
    """Per-request context the rules read."""

    k: int
    seen: frozenset[int] = frozenset()
    exclude_item_ids: tuple[str, ...] = ()
    region: str | None = None
    seed: int = 0  # with the user and surface, makes exploration reproducible


@dataclass
class Placed:
    """One recommended item and the story of how it got there."""

    item: int
    item_id: str
    score: float  # the ranker's (or retriever's) score
    relevance: float  # after boosts / freshness, what ordering used
    source: str  # which stage found it: retrieval, exploration, pin, sponsored, fallback...
    actions: list[str] = field(default_factory=list)


@dataclass
class Reranked:
    items: list[Placed]
    filtered: dict[int, str]  # item -> why it was removed


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process and on every machine (unlike hash())."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def _filter(policy: Policy, cat: PolicyCatalog, req: Request, items: np.ndarray) -> dict[int, str]:
    out: dict[int, str] = {}
    excluded = {cat.index_of(i) for i in (*policy.exclude_item_ids, *req.exclude_item_ids)}
    for rule in policy.exclude:
        for it in items[cat.matches(rule, items)]:
            out.setdefault(int(it), f"excluded: {rule.attribute} in {rule.values}")
    # Per item the first reason that applies: seen, then excluded, then region (earlier rules' stay).
    # Each check is its own pass over the few that can match (a request's 200 candidates went through all
    # three checks one by one: ~0.1 ms).
    seen = req.seen if policy.filter_seen else frozenset()
    listed = items.tolist()
    if seen:
        for i in listed:
            if i in seen:
                out.setdefault(i, "already seen")
    if excluded:
        for i in listed:
            if i in excluded and i not in seen:
                out.setdefault(i, "excluded item")
    if req.region is not None and policy.available_regions:
        for i in listed:
            if i in seen or i in excluded:
                continue
            regions = policy.available_regions.get(str(cat.item_ids[i]))
            if regions is not None and req.region not in regions:
                out.setdefault(i, f"not available in region {req.region}")
    return out


def _mmr(
    order: list[int], rel: dict[int, float], cat: PolicyCatalog, lam: float, window: int, k: int
) -> list[int]:
    """Maximal marginal relevance over the first ``window`` items; similarity = category cosine.

    Each step picks ``argmax lam * rel - (1 - lam) * max_sim_to_chosen`` (the first of equal gains: the
    better-ranked item); the running max similarity is updated incrementally, so a step costs O(window).
    The steps run compiled (:func:`~recstack.kernels.mmr_picks`): as numpy calls they were ten
    small passes per step, half of MMR's time per request.
    """
    pool = order[:window]
    unit = cat.unit_categories(pool)  # (W, C); dense: a 50 x 50 product is cheaper than sparse bookkeeping
    sim = unit @ unit.T
    relevance = np.array([rel[i] for i in pool], dtype=np.float64)
    # The parts of each step's gain that do not change.
    weighted, penalty = lam * relevance, 1 - lam
    chosen = mmr_picks(weighted, float(penalty), np.ascontiguousarray(sim, dtype=np.float64), k).tolist()
    picked = [pool[j] for j in chosen]
    taken = set(picked)
    return picked + [i for i in order if i not in taken]


def rerank(
    policy: Policy,
    catalog: PolicyCatalog,
    request: Request,
    items: np.ndarray,
    scores: np.ndarray,
    source: str = "retrieval",
    extra_candidates: np.ndarray | None = None,
) -> Reranked:
    """Apply ``policy`` to ``items`` ``(N,)`` ranked by ``scores`` ``(N,)`` (higher = better).

    Args:
        extra_candidates: items exploration may draw from besides the tail of the list (e.g. new items).
    """
    valid = items > 0
    items, scores = items[valid].astype(np.int64), scores[valid].astype(np.float64)
    filtered = _filter(policy, catalog, request, items)
    if filtered:
        keep = ~np.isin(items, np.fromiter(filtered, dtype=np.int64, count=len(filtered)))
        items, scores = items[keep], scores[keep]
    # Rules multiply a relevance in (0, 1]: scores (logits, similarities) are min-max scaled per list first,
    # so a boost means the same thing whatever the scale of the model's scores.
    span = float(scores.max() - scores.min()) if len(scores) else 0.0
    rel = 0.05 + 0.95 * (scores - scores.min()) / span if span > 0 else np.ones(len(scores))
    actions: dict[int, list[str]] = {}  # item -> what rules did to it (only items they touched)
    for b in policy.boosts:
        hit = catalog.matches(b, items)
        rel[hit] *= b.factor
        for i in items[hit]:
            actions.setdefault(int(i), []).append(
                f"{'boost' if b.factor >= 1 else 'bury'} x{b.factor} ({b.attribute})"
            )
    if policy.freshness is not None:
        fresh = catalog.age_days[items] < policy.freshness.max_age_days
        rel[fresh] *= policy.freshness.factor
        for i in items[fresh]:
            actions.setdefault(int(i), []).append(
                f"fresh (< {policy.freshness.max_age_days:g} days) x{policy.freshness.factor}"
            )
    # .tolist() gives Python ints and floats in one C call (a comprehension over numpy scalars is 5x slower).
    listed = items.tolist()
    relevance = dict(zip(listed, rel.tolist(), strict=True))
    base_score = dict(zip(listed, scores.tolist(), strict=True))
    order = items[np.argsort(-rel, kind="stable")].tolist()
    before = dict(zip(order, range(len(order))))  # item -> position before diversity
    d = policy.diversity
    if d is not None and d.method == "mmr" and order:
        order = _mmr(order, relevance, catalog, d.lambda_, d.window, request.k)
    if d is not None and (d.max_per_category is not None or d.method == "category_cap"):
        cap = d.max_per_category or 2
        counts: dict[int, int] = {}
        capped, overflow = [], []
        for i in order:
            cats = catalog.categories[i].indices.tolist()
            if cats and any(counts.get(c, 0) >= cap for c in cats):
                overflow.append(i)
                actions.setdefault(i, []).append(f"category cap {cap}: moved down")
                continue
            for c in cats:
                counts[c] = counts.get(c, 0) + 1
            capped.append(i)
        order = capped + overflow
    if d is not None and d.method == "mmr":
        for p, i in enumerate(order[: request.k]):
            if p != before[i]:
                actions.setdefault(i, []).append(f"mmr: {before[i] + 1} -> {p + 1}")
    sources: dict[int, str] = {}  # items found other than by ``source`` (exploration, pins, sponsored)
    top = order[: request.k]
    e = policy.exploration
    if e is not None and e.fraction > 0 and request.k >= e.start_position:
        n_slots = round(e.fraction * (request.k - e.start_position + 1))
        pool = [i for i in order[request.k :] if catalog.interactions[i] <= e.max_item_interactions]
        if extra_candidates is not None:
            pool += [
                int(i)
                for i in extra_candidates
                if int(i) > 0
                and int(i) not in filtered
                and int(i) not in relevance
                and int(i) not in request.seen
                and catalog.interactions[int(i)] <= e.max_item_interactions
            ]
        rng = np.random.default_rng(stable_hash(request.seed, request.k, len(order)))
        picks = [pool[j] for j in rng.permutation(len(pool))[:n_slots]] if pool else []
        slots = sorted(rng.choice(np.arange(e.start_position - 1, request.k), size=len(picks), replace=False))
        for slot, item in zip(slots, picks, strict=True):
            top.insert(int(slot), item)
            sources[item] = "exploration"
            actions.setdefault(item, []).append(f"exploration slot {int(slot) + 1}")
            relevance.setdefault(item, 0.0)
            base_score.setdefault(item, float("nan"))
        top = top[: request.k]
    for slot_rule, kind in [(p, "pin") for p in policy.pins] + [(s, "sponsored") for s in policy.sponsored]:
        ids = [slot_rule.item_id] if kind == "pin" else slot_rule.item_ids
        options = [catalog.index_of(x) for x in ids]
        options = [i for i in options if i > 0 and i not in filtered and i not in request.seen]
        if not options:
            continue
        # Sponsored: the best-ranked eligible item; pins: the named one.
        item = min(options, key=lambda i: before.get(i, len(before))) if kind == "sponsored" else options[0]
        if item in top:
            top.remove(item)
        top.insert(min(slot_rule.position, len(top) + 1) - 1, item)
        sources[item] = kind
        actions.setdefault(item, []).append(f"{kind} at position {slot_rule.position}")
        relevance.setdefault(item, 0.0)
        base_score.setdefault(item, float("nan"))
        top = top[: request.k]
    placed = [
        Placed(
            item=i,
            item_id=str(catalog.item_ids[i]),
            score=base_score.get(i, float("nan")),
            relevance=relevance.get(i, 0.0),
            source=sources.get(i, source),
            actions=actions.get(i, []),
        )
        for i in top
    ]
    return Reranked(items=placed, filtered=filtered)
