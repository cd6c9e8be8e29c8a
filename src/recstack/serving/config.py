"""Serving settings (``params.yaml: serving``), validated by pydantic and packaged with the models.

Every limit the HTTP schemas enforce and every budget the funnel keeps is here, in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from recstack.policy.schema import Policy
from recstack.settings import load_validated

SURFACES = ("homepage", "up_next", "related")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Limits(_Strict):
    """Bounds of request fields: anything outside gets a 4xx naming the field."""

    max_k: int = Field(100, ge=1, le=1000)
    max_id_length: int = Field(128, ge=8)
    max_exclude: int = Field(500, ge=0)
    max_text_length: int = Field(64, ge=8, description="device, region, surface and similar labels")
    max_future_seconds: float = Field(3600.0, ge=0, description="feedback timestamps tolerated ahead of now")
    max_event_age_days: float = Field(365.0, gt=0, description="older feedback timestamps are refused")


class Budgets(_Strict):
    """Time budgets in milliseconds. A stage that overruns is cut short and the next fallback serves."""

    retrieval_ms: float = Field(50.0, gt=0)
    ranking_ms: float = Field(80.0, gt=0)
    total_ms: float = Field(180.0, gt=0, description="the whole request; the users' target is p95 < 200 ms")


# Budgets for checks of correctness (smoke and parity tests): a stage cut short by a noisy neighbour, or a
# garbage-collection pause, would serve a fallback, and the check would flicker with the machine's load.
NO_BUDGETS: dict[str, float] = {"retrieval_ms": 60_000, "ranking_ms": 60_000, "total_ms": 120_000}


class Surface(_Strict):
    """How a surface builds its candidate list.

    ``item_weight`` blends the current item's nearest neighbours with the user's own candidates: 0 is pure
    personalization (homepage), 1 pure item-to-item.
    """

    item_weight: float = Field(0.0, ge=0.0, le=1.0)
    requires_current_item: bool = False


HISTORY_EVENTS = ("click", "watch", "like", "add_to_cart", "purchase", "share", "rating")
EVENT_TYPES = (*HISTORY_EVENTS, "impression", "dislike", "skip")


class OnlineConfig(_Strict):
    """Where users' online state lives: their events, which feedback updates as it is accepted."""

    backend: Literal["embedded", "redis"] = Field(
        "embedded",
        description="'embedded': the bundle's snapshot plus accepted events in process memory (nothing to "
        "install; replayed from the feedback log at start); 'redis': shared by every worker and replica",
    )
    redis_url: str | None = Field(
        None, max_length=512, description="redis://host:port/db; default the RECSTACK_REDIS_URL environment"
    )
    namespace: str = Field("recstack", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="prefix of every key")
    timeout_ms: float = Field(
        50.0, gt=0, le=10_000, description="per Redis call; past it the snapshot serves"
    )
    session_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="share of the session (events newer than the snapshot) in the query vector: 0 = the "
        "query tower alone, which hardly moves with a few clicks",
    )
    history_events: list[str] = Field(
        default_factory=lambda: list(HISTORY_EVENTS),
        description="event types that join the user's history (and leave their recommendations)",
    )

    @model_validator(mode="after")
    def _check_events(self) -> OnlineConfig:
        unknown = sorted(set(self.history_events) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event types {unknown} in history_events; known: {list(EVENT_TYPES)}")
        return self


def _default_surfaces() -> dict[str, Surface]:
    return {
        "homepage": Surface(item_weight=0.0),
        "up_next": Surface(item_weight=0.5),
        "related": Surface(item_weight=0.8, requires_current_item=True),
    }


class Cache(_Strict):
    """Per-(user, surface, k, context) result cache."""

    enabled: bool = True
    ttl_seconds: float = Field(60.0, gt=0)
    jitter: float = Field(
        0.2, ge=0.0, lt=1.0, description="TTL spread (+-fraction) so entries do not expire together"
    )
    max_entries: int = Field(100_000, ge=1)
    shared: bool = Field(
        True,
        description="with the Redis online state, a second tier in Redis shared by every worker and replica "
        "(the in-process one stays first)",
    )


class Variant(_Strict):
    """One arm of an experiment: a share of users, and what it changes."""

    name: str = Field(min_length=1, max_length=64)
    weight: float = Field(gt=0)
    model_version: str | None = Field(
        None, description="must equal a packaged model's version (checked at load)"
    )
    policy: Policy | None = Field(None, description="replaces the default policy for this arm")
    use_ranker: bool = True
    n_candidates: int | None = Field(None, ge=1)


class Experiment(_Strict):
    """A/B test: users are assigned by hashing (user id, experiment id) into the weighted variants."""

    id: str = Field(min_length=1, max_length=64)
    surfaces: list[str] = Field(default_factory=lambda: list(SURFACES))
    variants: list[Variant] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> Experiment:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"experiment {self.id!r} has duplicate variant names {names}")
        unknown = sorted(set(self.surfaces) - set(SURFACES))
        if unknown:
            raise ValueError(
                f"experiment {self.id!r} names unknown surfaces {unknown}; known: {list(SURFACES)}"
            )
        return self


class ServingConfig(_Strict):
    """Everything the service reads besides the models and the policy."""

    default_k: int = Field(10, ge=1)
    n_candidates: int = Field(200, ge=1, description="ANN candidates the ranker scores")
    n_neighbours: int = Field(100, ge=1, description="nearest items of the current item (up_next, related)")
    popular_items: int = Field(1000, ge=1, description="length of the popular lists of the fallbacks")
    clock: Literal["data", "wall"] = Field(
        "data",
        description="'data': requests are answered as of the user's latest observed event (a snapshot or a "
        "replay, and what offline evaluation does); 'wall': as of the request's wall-clock time (live data)",
    )
    retrieval: Literal["ann", "exact"] = Field(
        "ann",
        description="'ann': the FAISS index of build_index; 'exact': score the whole catalog (the "
        "offline funnel's retrieval, for parity checks and as the brute-force baseline of benchmarks)",
    )
    full_scan_max_items: int = Field(
        10_000,
        ge=0,
        description="with retrieval 'ann', an HNSW index of at most this many items is searched by scanning "
        "every item (the same vectors, similarity and exclusions, so exact): on a small catalog the graph "
        "visits about as many items as a scan, more slowly (recstack.retrieval.index.full_scan_twin); "
        "0 = always the graph",
    )
    limits: Limits = Field(default_factory=Limits)
    budgets: Budgets = Field(default_factory=Budgets)
    surfaces: dict[str, Surface] = Field(default_factory=_default_surfaces)
    cache: Cache = Field(default_factory=Cache)
    experiments: list[Experiment] = Field(default_factory=list)
    online: OnlineConfig = Field(default_factory=OnlineConfig)
    feature_log_rate: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="share of ranked responses whose served items' ranking features go to the responses log "
        "(drift monitoring compares them with training); drawn by user, surface and served time, so a "
        "replay on its simulated clock logs the same sample every run",
    )
    api_keys_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]{0,63}$",
        description="when set, /recommend, /similar and /feedback need an 'X-API-Key' header holding one of "
        "the comma-separated keys in this environment variable (401 without, 403 wrong)",
    )
    stage_threads: int = Field(
        1,
        ge=1,
        description="threads that compute batches (retrieval then ranking) at once, plus one standby that "
        "takes over from a thread stuck past the retrieval budget. One is fastest: concurrent batches "
        "fight over the GIL",
    )
    max_batch: int = Field(
        32,
        ge=1,
        le=4096,
        description="most requests one retrieval or ranking batch takes from those waiting",
    )
    batch_window_ms: float = Field(
        3.0,
        ge=0.0,
        le=50.0,
        description="under concurrent load (another recommend request held by this worker: being read, "
        "waiting or being answered), a lane lets the oldest waiting request wait up to this long for "
        "others to join its batch; a lone request never waits; 0 = take what waits",
    )
    lane_scheduling: Literal["batch", "normal"] = Field(
        "batch",
        description="Linux scheduling policy of the stage-lane threads. batch (SCHED_BATCH): a lane woken by "
        "a new request does not preempt the event loop on their shared core, so the core switches threads "
        "less (ML-100K, concurrency 8: 1-6 % less CPU per request, 1-5 % more requests/s); the loop's "
        "own wake-ups (budgets, sockets) are scheduled as before. normal: the OS default. Elsewhere than "
        "Linux both mean the OS default",
    )

    @model_validator(mode="after")
    def _check(self) -> ServingConfig:
        if self.default_k > self.limits.max_k:
            raise ValueError(f"default_k={self.default_k} exceeds limits.max_k={self.limits.max_k}")
        unknown = sorted(set(self.surfaces) - set(SURFACES))
        if unknown:
            raise ValueError(f"unknown surfaces {unknown}; known: {list(SURFACES)}")
        ids = [e.id for e in self.experiments]
        if len(set(ids)) != len(ids):
            raise ValueError(f"duplicate experiment ids {ids}")
        taken: dict[str, str] = {}
        for e in self.experiments:
            for s in e.surfaces:
                if s in taken:
                    raise ValueError(f"experiments {taken[s]!r} and {e.id!r} both run on surface {s!r}")
                taken[s] = e.id
        return self


class ServingConfigError(ValueError):
    """A serving configuration that does not validate; the message names the field."""


def load_serving_config(source: str | Path | dict[str, Any] | None) -> ServingConfig:
    """From a mapping (``params.yaml: serving``), a YAML file, or None (defaults)."""
    return load_validated(ServingConfig, source, "serving config", ServingConfigError)


def check_model_versions(config: ServingConfig, versions: dict[str, str]) -> None:
    """Every experiment variant that names a model version must name one of ``versions`` (role -> version).

    Raises:
        ServingConfigError: naming the experiment, the variant and the versions available.
    """
    for exp in config.experiments:
        for v in exp.variants:
            if v.model_version is not None and v.model_version not in versions.values():
                raise ServingConfigError(
                    f"experiment {exp.id!r} variant {v.name!r} names model version {v.model_version!r}, "
                    f"but the bundle holds {versions}"
                )
