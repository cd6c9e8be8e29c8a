"""The recommender behind the service: ANN retrieval -> DLRM ranking -> policy re-ranking, under budgets.

:class:`Recommender` is plain Python (no BentoML), so the in-process tests, the benchmarks' floor, the
batch stage and the BentoML service run the same code. Each model stage that can hang runs on its own
thread (a stage lane) and is waited for at most its budget, by a blocked thread (:meth:`recommend`) or by a
coroutine (:meth:`recommend_async`, the service's); when it fails or overruns, the next fallback serves and
the response says which path served it and why:

* ranker failed / over budget -> the retrieval order (``served_by: retrieval``);
* index failed / missing / over budget -> popular items (``popular_segment`` or ``popular_global``);
* unknown user without a current item -> the cold-start chain: popular in the user's context segment
  (e.g. region), then global popular.

Retrieval and ranking run on :class:`~recstack.serving.stages.StageLanes`, which batch the requests
waiting for them (one query-tower forward and one DLRM forward per batch). Every path ends
in the same policy re-ranker, so filters and business rules hold whatever served.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from recstack.online.store import (
    AcceptedEvent,
    EmbeddedStore,
    OnlineStateUnavailable,
    RedisStore,
    UserHistory,
    snapshot_history,
)
from recstack.policy.rerank import Placed, Request, rerank, stable_hash
from recstack.policy.schema import Policy
from recstack.ranking.features import ItemActivity
from recstack.serving.bundle import Bundle, load_bundle
from recstack.serving.cache import ResultCache, SharedResultCache
from recstack.serving.config import ServingConfig, Variant, check_model_versions, load_serving_config
from recstack.serving.eventlog import (
    ADMIN_LOG,
    DELETION_LIST,
    DELETION_LIST_ENV,
    FEEDBACK_LOG,
    RESPONSES_LOG,
    EventLog,
    Tailer,
)
from recstack.serving.experiments import active, assign
from recstack.serving.online import Relay, apply_record, event_time_us, materialize, open_store
from recstack.serving.schemas import (
    Assignment,
    Explanation,
    FeedbackAck,
    FeedbackEvent,
    RecommendedItem,
    RecommendRequest,
    RecommendResponse,
    SimilarItem,
    SimilarRequest,
    SimilarResponse,
)
from recstack.serving.stages import (
    Candidates,
    Job,
    StageLanes,
    Stages,
    run_ranking,
    run_retrieval,
    wait,
    wait_async,
)
from recstack.serving.telemetry import metrics

log = logging.getLogger(__name__)


def new_id() -> str:
    """A random 128-bit id as 32 hex digits (requests, feedback events, admin operations): uuid4's
    randomness without building a UUID object (a third of the cost, per request)."""
    return os.urandom(16).hex()


class RequestError(ValueError):
    """Input the service refuses: ``status`` is the HTTP status (4xx), ``field`` the offending field."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.status = field, status


@dataclass
class _Plan:
    """What one request needs besides the models' answers; fallbacks and timings accumulate here."""

    req: RecommendRequest
    experiment: str | None
    variant: Variant | None
    seed: int
    policy: Policy
    user: int
    current: int
    history: UserHistory  # the user's events as the online state holds them now
    seen: np.ndarray
    context: dict[str, str | None]
    n: int
    use_ranker: bool
    deadline: float
    warnings: list[str]
    fallbacks: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    candidates: np.ndarray | None = None  # (N,) the ranked candidates, aligned with ``features``
    features: np.ndarray | None = None  # (N, F) their ranking features (monitoring)


@dataclass
class _Started:
    """A request after :meth:`Recommender._start`: answered from the cache (``response``), or planned
    (``plan``) with its model work (``job``, None when no model stage applies) already submitted."""

    req: RecommendRequest
    t0: float
    key: tuple
    response: RecommendResponse | None = None
    plan: _Plan | None = None
    job: Job | None = None
    marker: tuple = ()  # the user's state the answer is computed at (see Recommender._start)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: ``over`` wins; nested mappings merge key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


class Recommender:
    """Serves recommend / similar / feedback requests from a loaded :class:`Bundle`."""

    def __init__(
        self,
        bundle: Bundle,
        config: ServingConfig | None = None,
        policy: Policy | None = None,
        log_dir: str | Path | None = None,
    ) -> None:
        self.bundle = bundle
        self.config = config or bundle.config
        self.policy = policy or bundle.policy
        self.stages = Stages(bundle, self.config, item_activity=self._item_activity)
        # recommend requests between their start and their response (the lanes' load signal). Counted on
        # the event loop only (recommend_async), the service's path: one thread, no lock needed.
        self._in_flight = 0
        # The HTTP server's own count of recommend requests held (recstack.serving.middleware.InFlight),
        # set by the service: it also sees the requests still being read and parsed.
        self.requests_in_flight: Callable[[], int] | None = None
        self.lanes = StageLanes(
            self.stages,
            self.config.stage_threads,
            self.config.max_batch,
            # Queued requests run out of retrieval budget by then: past it, a busy thread counts as stuck.
            stall_s=self.config.budgets.retrieval_ms / 1000,
            window_s=self.config.batch_window_ms / 1000,
            in_flight=self._requests_held,
            scheduling=self.config.lane_scheduling,
        )
        c = self.config.cache
        self.cache = ResultCache(c.ttl_seconds, c.jitter, c.max_entries) if c.enabled else None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.feedback_log = EventLog(self.log_dir / FEEDBACK_LOG) if self.log_dir else None
        self.online = open_store(self.config.online, bundle)
        # A thread keeps the state in step with the shared log: Redis catches up with events it missed;
        # the embedded store replays the log at start (acknowledged events survive a restart), then takes
        # the events other workers accept (every 0.1 s).
        self.relay: Relay | Tailer | None = None
        self._feedback_lock = threading.Lock()  # a feedback event's logging and acceptance, for _follow
        if self.log_dir is not None:
            if isinstance(self.online, RedisStore):
                self.relay = Relay(self.online, bundle, self.config.online, self.log_dir / FEEDBACK_LOG)
            else:
                self.relay = Tailer(self.log_dir / FEEDBACK_LOG, self._follow, name="recstack-log-follower")
        self.shared_cache = (
            SharedResultCache(
                self.online.client,
                self.online.ns,
                c.ttl_seconds,
                c.jitter,
                RecommendResponse.model_validate_json,
                skip=self.online.circuit_open,
            )
            if c.enabled and c.shared and isinstance(self.online, RedisStore)
            else None
        )
        self.responses_log = EventLog(self.log_dir / RESPONSES_LOG, durable=False) if self.log_dir else None
        # The time responses and feedback are stamped and checked with: the wall clock, or a replay's
        # simulated one (monitoring.replay drives a day of traffic in minutes).
        self.clock: Callable[[], datetime] = _utc_now
        self.started_at = time.time()
        self.reload_requested = False  # an admin reload (from any worker): the service swaps engines
        self.admin_log = EventLog(self.log_dir / ADMIN_LOG) if self.log_dir else None
        deletions = os.environ.get(DELETION_LIST_ENV) or (
            self.log_dir / DELETION_LIST if self.log_dir else None
        )
        self.deletions = EventLog(deletions) if deletions else None
        self.forgotten: set[str] = set()
        self._applied_admin: set[str] = set()  # ids of operations this worker applied when accepting them
        # Every worker applies the operations any of them accepted (and, at start, the forgotten users).
        self._tailers = (
            [
                Tailer(self.deletions.path, self._follow_admin, name="recstack-deletions"),
                Tailer(self.log_dir / ADMIN_LOG, self._follow_admin, name="recstack-admin"),
            ]
            if self.log_dir and self.deletions
            else []
        )
        self.metrics = metrics()
        check_model_versions(self.config, self.bundle.card.get("models", {}))

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        log_dir: str | Path | None = None,
        overrides: dict[str, Any] | None = None,
        splits: tuple[str, ...] | None = None,
    ) -> Recommender:
        """Load ``bundle_dir``; ``overrides`` are merged over its serving settings (then validated),
        ``splits`` restricts the interaction snapshot (see :func:`~recstack.serving.bundle.load_bundle`)."""
        bundle = load_bundle(bundle_dir, splits=splits)
        config = None
        if overrides:
            config = load_serving_config(_merge(bundle.config.model_dump(by_alias=True), overrides))
        return cls(bundle, config=config, log_dir=log_dir)

    def close(self) -> None:
        self.lanes.close()
        for t in self._tailers:
            t.stop()
        if self.relay is not None:
            self.relay.stop()
        self.online.close()
        for lg in (self.feedback_log, self.responses_log):
            if lg is not None:
                lg.close()

    # ----------------------------------------------------------------------------------------- recommend

    def _check(self, req: RecommendRequest) -> None:
        """Refuse input outside the configured limits (:class:`RequestError` naming the field)."""
        cfg = self.config
        if req.k > cfg.limits.max_k:
            raise RequestError("k", f"k={req.k} is above this service's maximum of {cfg.limits.max_k}")
        if len(req.exclude_item_ids) > cfg.limits.max_exclude:
            raise RequestError(
                "exclude_item_ids", f"{len(req.exclude_item_ids)} items; at most {cfg.limits.max_exclude}"
            )
        surface = cfg.surfaces.get(req.surface)
        if surface is None:
            raise RequestError("surface", f"surface {req.surface!r} is not enabled on this service")
        if surface.requires_current_item and req.current_item_id is None:
            raise RequestError("current_item_id", f"surface {req.surface!r} needs current_item_id")

    def _assign(self, req: RecommendRequest) -> tuple[str | None, Variant | None, int]:
        """The request's experiment, variant and seed (the request's, else a stable hash of user and
        surface, so the same request gets the same exploration everywhere)."""
        experiment = active(self.config.experiments, req.surface)
        variant = assign(experiment, req.user_id) if experiment else None
        seed = req.seed if req.seed is not None else stable_hash(req.user_id, req.surface) >> 1
        return (experiment.id if experiment else None), variant, seed

    def _requests_held(self) -> int:
        """recommend requests this worker holds: the engine's own count, or the HTTP server's (which also
        counts those not yet parsed) when the service gave it."""
        held = self.requests_in_flight() if self.requests_in_flight is not None else 0
        return max(self._in_flight, held)

    def recommend(self, req: RecommendRequest) -> RecommendResponse:
        """Answer one request, blocking the calling thread while the model stages run. Raises
        :class:`RequestError` for input outside the configured limits; any failure inside a stage is
        absorbed by that stage's fallback."""
        started = self._start(req)
        if started.plan is not None:
            started.response = self._finish(started.plan, *self._collect(started.plan, started.job))
        return self._done(started)

    async def recommend_async(self, req: RecommendRequest) -> RecommendResponse:
        """:meth:`recommend` for an event loop: the same request, awaiting the model stages instead of
        holding a thread (the service's endpoint: a blocked thread per waiting request cost ~1 ms of CPU
        per request in thread hand-offs at concurrency 8)."""
        self._in_flight += 1
        try:
            started = self._start(req)
            if started.plan is not None:
                cands, scores = await self._collect_async(started.plan, started.job)
                started.response = self._finish(started.plan, cands, scores)
            return self._done(started)
        finally:
            self._in_flight -= 1

    def _start(self, req: RecommendRequest) -> _Started:
        """Check the request, then answer it from the cache, or plan it and submit its model work."""
        t0 = time.perf_counter()
        self._check(req)
        experiment, variant, seed = self._assign(req)
        warnings: list[str] = []
        key = (
            req.surface,
            req.k,
            req.current_item_id,
            req.region,
            req.device,
            tuple(sorted(req.exclude_item_ids)),
            req.explain,
            seed,
            variant.name if variant else None,
        )
        # The user's state, read with the shared cache's entry in the same round trip.
        shared = self.shared_cache.key(req.user_id, key) if self.shared_cache is not None else None
        history, shared_raw = self._history(req.user_id, self._user_index(req.user_id), warnings, shared)
        # With it in the key, an answer computed before the user's latest event is never served again,
        # by any worker or replica, whatever its TTL (feedback also drops this worker's entries at once).
        # An answer from the snapshot (online state down) is not kept for later.
        marker = (len(history), history.last_time(), bool(warnings))
        key = (*key, *marker)
        if self.cache is not None:
            cached = self.cache.get(req.user_id, key)
            if cached is None and self.shared_cache is not None:
                cached = self.shared_cache.decode(shared_raw, marker)
                if cached is not None:
                    self.cache.put(req.user_id, key, cached)
            self.metrics.cache.labels(result="hit" if cached is not None else "miss").inc()
            self.metrics.cache_hit_ratio.set(self.cache.hit_ratio())
            if cached is not None:
                response = cached.model_copy(
                    update={"request_id": new_id(), "cached": True, "timings_ms": {}}
                )
                return _Started(req, t0, key, response=response)
        plan = self._plan(req, experiment, variant, seed, t0, history, warnings)
        job = self._job(plan)
        if job is not None:
            self.lanes.submit(job)
        return _Started(req, t0, key, plan=plan, job=job, marker=marker)

    def _done(self, started: _Started) -> RecommendResponse:
        """Cache a fresh response, then time, count and log it."""
        req, response = started.req, started.response
        if response is None:
            raise RuntimeError("a request finished without a response")  # a bug, never input
        if started.plan is not None and self.cache is not None:
            self.cache.put(req.user_id, started.key, response)
            if self.shared_cache is not None:
                self.shared_cache.put(
                    req.user_id, started.key[: -len(started.marker)], response, started.marker
                )
        total = time.perf_counter() - started.t0
        response.timings_ms["total"] = round(total * 1000, 3)
        self.metrics.stage_seconds.labels(stage="total").observe(total)
        self.metrics.served.labels(surface=req.surface, path=response.served_by).inc()
        if self.responses_log is not None:
            self._log_response(req, response, started.plan)
        return response

    def recommend_batch(self, requests: list[RecommendRequest]) -> list[RecommendResponse]:
        """Answer many requests at once, offline: one retrieval and one ranking batch for all of them, then
        the same policy and fallbacks as :meth:`recommend`, without budgets, cache or logs (the
        batch stage). Raises :class:`RequestError` for the first request outside the limits."""
        for req in requests:
            self._check(req)
        t0 = time.perf_counter()
        plans = []
        for req in requests:
            warnings: list[str] = []
            history, _ = self._history(req.user_id, self._user_index(req.user_id), warnings)
            plans.append(self._plan(req, *self._assign(req), t0, history, warnings))
        jobs = [self._job(p) for p in plans]
        batch = [j for j in jobs if j is not None]
        if batch:
            to_rank = run_retrieval(self.stages, batch)
            if to_rank:
                run_ranking(self.stages, to_rank)
        return [
            self._finish(p, *self._collect(p, j, budgets=False)) for p, j in zip(plans, jobs, strict=True)
        ]

    def emergency(self, req: RecommendRequest) -> RecommendResponse:
        """Last resort after an unexpected error: global popular items the user has not seen, no policy."""
        user = self._user_index(req.user_id)
        seen = self.bundle.seen(user)
        items = self.bundle.popular.global_items
        items = items[~np.isin(items, seen)][: min(req.k, self.config.limits.max_k)]
        self.metrics.fallbacks.labels(reason="internal_error").inc()
        ids = self.bundle.catalog.item_ids
        return RecommendResponse(
            request_id=new_id(),
            user_id=str(req.user_id),
            surface=str(req.surface),
            items=[RecommendedItem(item_id=str(ids[i])) for i in items],
            served_by="popular_global",
            fallbacks=["internal_error"],
            seed=0,
        )

    def _plan(
        self,
        req: RecommendRequest,
        experiment: str | None,
        variant: Variant | None,
        seed: int,
        t0: float,
        history: UserHistory,
        warnings: list[str],
    ) -> _Plan:
        b, cfg = self.bundle, self.config
        user = self._user_index(req.user_id)
        current = 0
        if req.current_item_id is not None:
            current = b.item_index(req.current_item_id)
            if current == 0:
                warnings.append(f"current_item_id {req.current_item_id!r} is unknown: ignored")
        n = (variant.n_candidates if variant and variant.n_candidates else None) or cfg.n_candidates
        return _Plan(
            req=req,
            experiment=experiment,
            variant=variant,
            seed=seed,
            policy=variant.policy if variant is not None and variant.policy is not None else self.policy,
            user=user,
            current=current,
            history=history,
            seen=history.seen(),
            context=self._context(req, user),
            n=min(n, b.tables.items.n_items - 1),
            use_ranker=variant.use_ranker if variant else True,
            deadline=t0 + cfg.budgets.total_ms / 1000,
            warnings=warnings,
        )

    def _follow(self, record: dict[str, Any]) -> None:
        """A logged feedback record, met by the embedded store's log follower: applied unless this worker
        applied it when accepting it (never between this worker's logging and accepting it: one lock)."""
        with self._feedback_lock:
            if not (
                isinstance(self.online, EmbeddedStore)
                and self.online.forget_applied(str(record.get("event_id")))
            ):
                apply_record(self.online, self.bundle, self.config.online, record)

    def _item_activity(self, items: np.ndarray) -> ItemActivity | None:
        """Interactions with ``items`` since the snapshot, for the ranker; None when the online state
        cannot be read (the snapshot's item features serve, and the user-side fallback reports it)."""
        try:
            return self.online.item_activity(items)
        except OnlineStateUnavailable:
            return None

    def _user_index(self, user_id: str) -> int:
        """The user's index in the models; 0 (unknown) once forgotten: their id embedding was learned
        from the events they asked to delete, so it is not used until the models are retrained."""
        return 0 if user_id in self.forgotten else self.bundle.user_index(user_id)

    def _history(
        self, user_id: str, user: int, warnings: list[str], shared_key: str | None = None
    ) -> tuple[UserHistory, bytes | None]:
        """The user's events from the online state, and the shared cache's ``shared_key`` read in the same
        round trip. When the state cannot be read: the bundle's snapshot (the response says so, and a
        metric counts it), no cache entry."""
        try:
            if shared_key is not None and isinstance(self.online, RedisStore):
                (history,), (raw,) = self.online.read([user_id], also_get=[shared_key])
                return history, raw
            return self.online.histories([user_id])[0], None
        except OnlineStateUnavailable as exc:
            self.metrics.fallbacks.labels(reason="online_state_unavailable").inc()
            warnings.append(
                f"online state unavailable, answered from the snapshot without recent events: {exc}"
            )
            return snapshot_history(self.bundle.sequences, user), None

    def _job(self, plan: _Plan) -> Job | None:
        """The request's model work, or None (with the reason in ``plan.fallbacks``) when there is none."""
        b, cfg = self.bundle, self.config
        if plan.user == 0 and plan.current == 0 and not len(plan.history):
            # (An unknown user with events since the snapshot has a history: the query tower reads it.)
            plan.fallbacks.append("cold_start_user")
            return None
        if b.index is None and cfg.retrieval == "ann":
            plan.fallbacks.append("index_missing")
            return None
        return Job(
            user=plan.user,
            current=plan.current,
            drop=np.union1d(plan.seen, [plan.current]) if plan.current > 0 else plan.seen,
            n=plan.n,
            item_weight=cfg.surfaces[plan.req.surface].item_weight,
            rank=plan.use_ranker and b.funnel is not None,
            history=(plan.history.items, plan.history.times),
            as_of=int(self.clock().timestamp() * 1_000_000) if cfg.clock == "wall" else None,
        )

    def _collect(
        self, plan: _Plan, job: Job | None, budgets: bool = True
    ) -> tuple[Candidates | None, np.ndarray | None]:
        """The job's candidates and ranker scores, each None when its stage failed or ran out of budget
        (the reason goes to ``plan.fallbacks``). ``budgets=False``: wait as long as it takes (offline)."""
        cands = scores = None
        if job is None:
            return cands, scores
        with self._stage(plan, job, "retrieval"):
            cands = wait(job.retrieved, self._budget_s(plan, "retrieval") if budgets else None)
        if cands is not None and job.rank:
            with self._stage(plan, job, "ranking"):
                scores = wait(job.ranked, self._budget_s(plan, "ranking") if budgets else None)
                plan.candidates, plan.features = cands.items, job.features
        return cands, scores

    async def _collect_async(
        self, plan: _Plan, job: Job | None
    ) -> tuple[Candidates | None, np.ndarray | None]:
        """:meth:`_collect` (the same budgets and fallbacks), awaiting the stages.

        One wake-up of the event loop where both stages finish in time: the request awaits the ranking
        (which the lane settles after the retrieval, or with the retrieval's error) within the retrieval's
        budget, then reads both. Only when that wait runs out with the retrieval done does it wait again,
        for what is left of the ranking's budget, counted from the retrieval's end. Awaiting each stage
        in turn woke the loop twice per request, and the first wake-up took the GIL from the lane in the
        middle of its ranking.
        """
        cands = scores = None
        if job is None:
            return cands, scores
        start = time.perf_counter()
        with suppress(Exception):  # each stage's own outcome is read below
            await wait_async(job.ranked if job.rank else job.retrieved, self._budget_s(plan, "retrieval"))
        with self._stage(plan, job, "retrieval", start):
            cands = wait(job.retrieved, 0)  # settled by now, or out of budget (TimeoutError)
        if cands is not None and job.rank:
            with self._stage(plan, job, "ranking", job.retrieved_at):
                scores = await wait_async(job.ranked, self._budget_s(plan, "ranking", job.retrieved_at))
                plan.candidates, plan.features = cands.items, job.features
        return cands, scores

    def _budget_s(self, plan: _Plan, stage: str, since: float | None = None) -> float:
        """Seconds the request may still wait for ``stage``: its budget (counted from ``since``, default
        now), capped by the request's deadline."""
        b = self.config.budgets
        budget_ms = b.retrieval_ms if stage == "retrieval" else b.ranking_ms
        now = time.perf_counter()
        return min(budget_ms / 1000 - (now - since if since is not None else 0.0), plan.deadline - now)

    @contextmanager
    def _stage(self, plan: _Plan, job: Job, stage: str, start: float | None = None) -> Iterator[None]:
        """Around the wait for one stage: a timeout or a failure becomes that stage's fallback reason (its
        result stays None), and the stage is timed from ``start`` (default: now) to the end of the wait,
        or to the lane's end of the retrieval when that came first."""
        reason = {"retrieval": "retrieval", "ranking": "ranker"}[stage]
        start = time.perf_counter() if start is None else start
        try:
            yield
        except TimeoutError:
            job.abandoned = True
            plan.fallbacks.append(f"{reason}_timeout")
        except Exception:
            log.exception("%s failed for user %s", stage, plan.req.user_id)
            plan.fallbacks.append(f"{reason}_error")
        finally:
            end = job.retrieved_at if stage == "retrieval" and job.retrieved_at > start else None
            plan.timings[stage] = self._observe(stage, start, end)

    def _finish(self, plan: _Plan, cands: Candidates | None, scores: np.ndarray | None) -> RecommendResponse:
        """From the model stages' results (None = the stage did not deliver; the reason is already in
        ``plan.fallbacks``) to the response: fallback lists, the policy, popular top-up, explanations."""
        b = self.bundle
        req, policy, seen, current = plan.req, plan.policy, plan.seen, plan.current
        fallbacks, timings = plan.fallbacks, plan.timings
        retrieved: dict[int, tuple[int, float]] = {}  # item -> (retrieval rank, score), for explain only
        path = "funnel"
        if cands is None:
            items, scores, path = self._popular(policy, plan.context, seen, current)
            found_by = np.zeros(len(items), dtype=bool)
        else:
            items, found_by = cands.items, cands.from_neighbours
            if req.explain:
                retrieved = {
                    int(it): (r + 1, float(sc))
                    for r, (it, sc) in enumerate(zip(items, cands.scores, strict=True))
                }
            if scores is None:
                if plan.use_ranker and b.funnel is None:
                    fallbacks.append("ranker_missing")
                path, scores = "retrieval", cands.scores
            # The policy sees the list best first, as offline evaluation gives it.
            order = np.argsort(-scores, kind="stable")
            items, scores, found_by = items[order], scores[order], found_by[order]
        start = time.perf_counter()
        placed = self._apply_policy(policy, req, seen, current, items, scores, plan.seed, path, fallbacks)
        if len(placed) < req.k:
            placed = self._fill(placed, policy, req, seen, current, plan.context, fallbacks)
        timings["policy"] = self._observe("policy", start)
        for reason in fallbacks:
            self.metrics.fallbacks.labels(reason=reason).inc()
        neighbour_items = set(items[found_by].tolist())
        out = []
        for p in placed:
            source = "neighbours" if p.source == "retrieval" and p.item in neighbour_items else p.source
            expl = None
            if req.explain:
                rank, sim = retrieved.get(p.item, (None, float("nan")))
                expl = Explanation(
                    source=source,
                    retrieval_rank=rank,
                    retrieval_score=_finite(sim),
                    ranker_score=_finite(p.score) if path == "funnel" and rank is not None else None,
                    relevance=_finite(p.relevance),
                    actions=p.actions,
                )
            out.append(RecommendedItem(item_id=p.item_id, score=_finite(p.score), explanation=expl))
        versions = b.card.get("models", {})
        return RecommendResponse(
            request_id=new_id(),
            user_id=req.user_id,
            surface=req.surface,
            items=out,
            served_by=path,
            fallbacks=fallbacks,
            experiments=[Assignment(experiment=plan.experiment, variant=plan.variant.name)]
            if plan.variant
            else [],
            model_version=versions.get("retrieval"),
            ranker_version=versions.get("ranking") if path == "funnel" else None,
            policy=policy.name,
            seed=plan.seed,
            timings_ms=timings,
            warnings=plan.warnings,
        )

    def _observe(self, stage: str, start: float, end: float | None = None) -> float:
        elapsed = (time.perf_counter() if end is None else end) - start
        self.metrics.stage_seconds.labels(stage=stage).observe(elapsed)
        return round(elapsed * 1000, 3)

    def _context(self, req: RecommendRequest, user: int) -> dict[str, str | None]:
        """Segment attributes of the request: what the request says, else the user's profile."""
        ctx: dict[str, str | None] = {
            a: v[user] if user > 0 else None for a, v in self.bundle.user_attributes.items()
        }
        if req.region is not None:
            ctx["region"] = req.region
        if req.device is not None:
            ctx["device"] = req.device
        return ctx

    def _popular(
        self, policy: Policy, context: dict[str, str | None], seen: np.ndarray, current: int
    ) -> tuple[np.ndarray, np.ndarray, str]:
        """Popular items of the context's segment (``policy.cold_start``), then the global list's others:
        best first with decreasing scores, the user's seen items and ``current`` left out.

        The global list follows even when the context has a segment: a small segment's list can be all
        seen (a region with one user holds just that user's items), and a fallback then served nothing.
        The path is ``popular_segment`` when the segment's own list has unseen items, else
        ``popular_global``.
        """
        items, segment = self.bundle.popular.for_context(context, policy.cold_start.segment_by)
        unseen = items[~np.isin(items, seen) & (items != current)]
        path = "popular_segment" if segment and len(unseen) else "popular_global"
        if segment:
            others = self.bundle.popular.global_items
            others = others[~np.isin(others, items) & ~np.isin(others, seen) & (others != current)]
            unseen = np.concatenate([unseen, others])
        scores = np.linspace(1.0, 0.0, num=len(unseen), endpoint=False, dtype=np.float64)
        return unseen, scores, path

    def _apply_policy(
        self,
        policy: Policy,
        req: RecommendRequest,
        seen: np.ndarray,
        current: int,
        items: np.ndarray,
        scores: np.ndarray,
        seed: int,
        path: str,
        fallbacks: list[str],
    ) -> list[Placed]:
        source = "popular" if path.startswith("popular") else "retrieval"
        request = Request(
            k=req.k,
            seen=frozenset(seen.tolist()) | ({current} if current else frozenset()),
            exclude_item_ids=tuple(req.exclude_item_ids),
            region=req.region,
            seed=seed,
        )
        try:
            return rerank(policy, self.bundle.catalog, request, items, scores, source=source).items
        except Exception:
            log.exception("policy %s failed", policy.name)
            fallbacks.append("policy_error")
            skip = set(request.seen) | {self.bundle.item_index(i) for i in req.exclude_item_ids}
            keep = [int(i) for i in items if int(i) > 0 and int(i) not in skip][: req.k]
            ids = self.bundle.catalog.item_ids
            return [
                Placed(i, str(ids[i]), float(s), float(s), source) for i, s in zip(keep, scores, strict=False)
            ]

    def _fill(
        self,
        placed: list[Placed],
        policy: Policy,
        req: RecommendRequest,
        seen: np.ndarray,
        current: int,
        context: dict[str, str | None],
        fallbacks: list[str],
    ) -> list[Placed]:
        """Top up a list the policy left short with popular items that pass the same filters."""
        items, _, _ = self._popular(policy, context, seen, current)
        have = {p.item for p in placed}
        items = np.array([i for i in items if int(i) not in have], dtype=np.int64)
        if not len(items):
            return placed
        extra = self._apply_policy(
            policy.model_copy(update={"pins": [], "sponsored": [], "exploration": None}),
            req.model_copy(update={"k": req.k - len(placed)}),
            seen,
            current,
            items,
            np.linspace(1.0, 0.0, num=len(items), endpoint=False),
            0,
            "popular",
            fallbacks,
        )
        if extra:
            fallbacks.append("filled_with_popular")
        return placed + [Placed(p.item, p.item_id, p.score, p.relevance, "popular", p.actions) for p in extra]

    # ----------------------------------------------------------------------------------------- similar

    def similar(self, req: SimilarRequest) -> SimilarResponse:
        """Items like ``req.item_id``: two-tower neighbours, co-occurrence, or both (rank-blended)."""
        b = self.bundle
        if req.k > self.config.limits.max_k:
            raise RequestError(
                "k", f"k={req.k} is above this service's maximum of {self.config.limits.max_k}"
            )
        item = b.item_index(req.item_id)
        if item == 0:
            raise RequestError("item_id", f"item {req.item_id!r} is not in the catalog", status=404)
        drop = np.array(
            sorted({item, *(b.item_index(i) for i in req.exclude_item_ids)} - {0}), dtype=np.int64
        )
        fallbacks: list[str] = []
        lists: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if req.method in ("embedding", "blend"):
            try:
                if b.index is None and self.config.retrieval == "ann":
                    raise RuntimeError("no index")
                lists["embedding"] = self.stages.search(
                    b.retriever.item_vectors[item][None, :], [req.k], [drop]
                )[0]
            except Exception:
                if b.index is not None:
                    log.exception("similar-items search failed for item %s", req.item_id)
                fallbacks.append("index_missing" if b.index is None else "index_error")
        if (req.method in ("cooccurrence", "blend") or not lists) and b.cooccurrence is not None:
            near, sc = b.cooccurrence.neighbours[item], b.cooccurrence.scores[item]
            keep = (near > 0) & ~np.isin(near, drop)
            lists["cooccurrence"] = (near[keep][: req.k], sc[keep][: req.k])
        if len(lists) > 1:
            # Reciprocal-rank fusion: the two scores live on different scales.
            fused: dict[int, float] = {}
            for its, _ in lists.values():
                for r, it in enumerate(its):
                    fused[int(it)] = fused.get(int(it), 0.0) + 1.0 / (60 + r + 1)
            top = sorted(fused, key=lambda i: -fused[i])[: req.k]
            found = [(i, fused[i], "blend") for i in top]
        else:
            name, (its, sc) = next(iter(lists.items())) if lists else ("none", (np.empty(0), np.empty(0)))
            found = [(int(i), float(s), name) for i, s in zip(its, sc, strict=True)]
        ids = b.catalog.item_ids
        return SimilarResponse(
            item_id=req.item_id,
            method=req.method,
            items=[SimilarItem(item_id=str(ids[i]), score=float(s), source=src) for i, s, src in found],
            fallbacks=fallbacks,
        )

    # ----------------------------------------------------------------------------------------- feedback

    def feedback(self, event: FeedbackEvent) -> FeedbackAck:
        """Validate, append durably, invalidate the user's cached results, then acknowledge."""
        limits = self.config.limits
        now = self.clock()
        ts = event.timestamp if event.timestamp.tzinfo else event.timestamp.replace(tzinfo=UTC)
        if ts > now + timedelta(seconds=limits.max_future_seconds):
            raise RequestError(
                "timestamp", f"timestamp {ts.isoformat()} is in the future (now {now.isoformat()})"
            )
        if ts < now - timedelta(days=limits.max_event_age_days):
            raise RequestError(
                "timestamp", f"timestamp {ts.isoformat()} is older than {limits.max_event_age_days:g} days"
            )
        item = self.bundle.item_index(event.item_id)
        if item == 0:
            raise RequestError("item_id", f"item {event.item_id!r} is not in the catalog")
        if self.feedback_log is None:
            raise RuntimeError("this recommender has no log directory: feedback cannot be stored")
        ack = FeedbackAck(event_id=new_id(), received_at=now.isoformat())
        record = {
            "event_id": ack.event_id,
            "received_at": ack.received_at,
            **event.model_dump(mode="json"),
            "timestamp": ts.isoformat(),
        }
        joins = event.event_type in self.config.online.history_events
        accepted = AcceptedEvent(
            ack.event_id, event.user_id, item if joins else 0, event_time_us(ts), json.dumps(record)
        )
        # Logged and applied as one step for this worker's log follower (see _follow): meeting the line in
        # between, it took the event for another worker's and applied it, then so did accept, twice.
        with self._feedback_lock:
            self.feedback_log.append(record)  # fsynced: only now may the event be acknowledged
            if joins or self.online.streams:
                try:
                    self.online.accept(accepted)
                    ack.state_updated = joins
                except OnlineStateUnavailable as exc:
                    # Logged durably all the same: the relay applies it when the backend is back.
                    log.warning(
                        "feedback %s logged but not applied to the online state: %s", ack.event_id, exc
                    )
                    self.metrics.fallbacks.labels(reason="online_state_unavailable").inc()
        if self.cache is not None:
            self.cache.invalidate_user(event.user_id)
        self.metrics.feedback.labels(event_type=event.event_type).inc()
        return ack

    # ------------------------------------------------------------------------------------------ admin

    def forget_user(self, user_id: str) -> dict[str, Any]:
        """Remove the user's online state and cached results now, in every worker, and put them on the
        deletion list that the next ingest honours (their events leave the training data)."""
        if self.deletions is None:
            raise RuntimeError("this recommender has no log directory: a deletion cannot be recorded")
        record = {"op": "forget", "user_id": user_id, "at": datetime.now(UTC).isoformat()}
        record["id"] = self._own_admin_id()
        self.deletions.append(record)  # durable first: a crash now still forgets them at the next start
        if isinstance(self.online, RedisStore):
            self.online.forget(user_id)
        removed = self._apply_admin(record)
        if self.shared_cache is not None:
            removed += self.shared_cache.invalidate_user(user_id)
        return {"user_id": user_id, "forgotten": True, "cache_entries_removed": removed}

    def flush_cache(self) -> dict[str, Any]:
        """Empty the result caches of every worker (and the shared tier)."""
        n = self._admin({"op": "flush_cache"})
        if self.shared_cache is not None:
            n += self.shared_cache.clear()
        return {"flushed": True, "entries_removed": n}

    def request_reload(self) -> dict[str, Any]:
        """Ask every worker to reload its models from the model store (the service swaps engines)."""
        self._admin({"op": "reload"})
        return {"reload_requested": True}

    def rematerialize(self) -> dict[str, Any]:
        """Rebuild the online state from the bundle's snapshot and the feedback log: a new Redis version
        behind its pointer, or (embedded) a fresh store in this worker."""
        log_path = self.log_dir / FEEDBACK_LOG if self.log_dir else None
        if isinstance(self.online, RedisStore):
            return materialize(self.bundle, self.online.url, self.online.ns, feedback_log=log_path)
        start = time.perf_counter()
        self.online = open_store(self.config.online, self.bundle)
        # The fresh store replays the log, then the deletion list (forgotten users stay forgotten), this
        # worker's own operations included.
        self._applied_admin.clear()
        for t in (self.relay, *self._tailers[:1]):
            if t is not None:
                t.offset = 0
                t.run_once()
        return {"backend": "embedded", "seconds": round(time.perf_counter() - start, 3)}

    def _admin(self, record: dict[str, Any]) -> int:
        record = {**record, "at": datetime.now(UTC).isoformat(), "id": self._own_admin_id()}
        if self.admin_log is not None:
            self.admin_log.append(record)
        return self._apply_admin(record)

    def _own_admin_id(self) -> str:
        """A new operation id, remembered so this worker's log followers skip it (it applies it at once)."""
        op_id = new_id()
        self._applied_admin.add(op_id)
        return op_id

    def _follow_admin(self, record: dict[str, Any]) -> int:
        """An operation met in the shared logs: applied unless this worker applied it when accepting it.
        Applied twice, a cache flush would also drop the answers cached since (up to the followers'
        0.1 s later)."""
        op_id = record.get("id")
        if op_id is not None and op_id in self._applied_admin:
            self._applied_admin.discard(op_id)
            return 0
        return self._apply_admin(record)

    def _apply_admin(self, record: dict[str, Any]) -> int:
        """Apply an admin record here (every worker tails the logs); returns cache entries removed."""
        op = record.get("op")
        if op == "forget":
            user = str(record["user_id"])
            self.forgotten.add(user)
            if isinstance(self.online, EmbeddedStore):  # Redis forgets once, for all (forget_user)
                self.online.forget(user)
            return self.cache.invalidate_user(user) if self.cache is not None else 0
        if op == "flush_cache" and self.cache is not None:
            n = len(self.cache)
            self.cache.clear()
            return n
        if op == "reload" and datetime.fromisoformat(record["at"]).timestamp() > self.started_at:
            self.reload_requested = True
        return 0

    # ----------------------------------------------------------------------------------------- health

    def health(self) -> dict[str, Any]:
        b = self.bundle
        problems = list(b.warnings)
        return {
            "status": "degraded" if problems else "ok",
            "models": b.card.get("models", {}),
            "index": None
            if b.index is None
            else {
                "kind": (b.card.get("index") or {}).get("config", {}).get("kind"),
                "items": b.index.ntotal,
                "search": "full_scan" if self.stages.full_scan else "index",
            },
            "retrieval": self.config.retrieval,
            "policy": self.policy.name,
            "experiments": [e.id for e in self.config.experiments],
            "users": int(b.tables.spec.user_id.size),
            "items": int(b.tables.spec.item_id.size),
            "online_state": self.online.health(),
            "cache_entries": len(self.cache) if self.cache else 0,
            "cache_hit_ratio": round(self.cache.hit_ratio(), 4) if self.cache else None,
            "warnings": problems,
        }

    def _served_features(
        self, req: RecommendRequest, resp: RecommendResponse, plan: _Plan | None, at: str
    ) -> list | None:
        """The ranking features of the served items (``DENSE_FEATURES`` order; None for an item the ranker
        did not score, e.g. an exploration pick) for a ``feature_log_rate`` share of ranked responses.

        The share is drawn by the request's user, surface and time ``at``, not its random id: live, the
        clock's microseconds make it a fresh draw per request; a replay's simulated clock draws the same
        sample every run, so the drift checks that read it give the same verdicts.
        """
        rate = self.config.feature_log_rate
        if plan is None or plan.features is None or plan.candidates is None or rate <= 0:
            return None
        if stable_hash("features", req.user_id, req.surface, at) % 10_000 >= rate * 10_000:
            return None
        row = {int(it): r for r, it in enumerate(plan.candidates.tolist())}
        out = []
        for item in resp.items:
            r = row.get(self.bundle.item_index(item.item_id))
            out.append(None if r is None else [round(float(v), 6) for v in plan.features[r]])
        return out

    def _log_response(
        self, req: RecommendRequest, resp: RecommendResponse, plan: _Plan | None = None
    ) -> None:
        at = self.clock().isoformat()
        try:
            self.responses_log.append(
                {
                    "request_id": resp.request_id,
                    "at": at,
                    "user_id": req.user_id,
                    "surface": req.surface,
                    "k": req.k,
                    "current_item_id": req.current_item_id,
                    "device": req.device,
                    "region": req.region,
                    "items": [i.item_id for i in resp.items],
                    "scores": [i.score for i in resp.items],
                    "served_by": resp.served_by,
                    "fallbacks": resp.fallbacks,
                    "experiments": [a.model_dump() for a in resp.experiments],
                    "model_version": resp.model_version,
                    "ranker_version": resp.ranker_version,
                    "policy": resp.policy,
                    "cached": resp.cached,
                    "latency_ms": resp.timings_ms.get("total"),
                    "features": self._served_features(req, resp, plan, at),
                }
            )
        except OSError:
            # A full disk must not fail the request: the response is still right, only unlogged.
            log.exception("could not log response %s", resp.request_id)
