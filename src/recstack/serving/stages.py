"""The funnel's model stages, batched: retrieval (query tower + FAISS) and ranking (DLRM).

One request or many go through the same code: :class:`Stages` computes a *batch* of jobs with one query
tower forward, one FAISS search per request (each excluding its own seen items) and one DLRM forward; a
single request is a batch of one. :class:`StageLanes` runs them for the online service on a thread that
batches whatever requests are waiting when it becomes free ("natural" batching: under load a batch forms
while the previous one computes; an idle service adds no wait). The batch stage calls :class:`Stages`
directly.

A job's result does not depend on which other jobs share its batch: every row of the query tower, the
search and the ranker is computed independently. (Batched float32 matrix products can round differently in
the last bit, ~1e-7, which could only swap two candidates whose scores tie to that precision.)
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field

import faiss
import numpy as np
import scipy.sparse as sp
import torch

from recstack.online.store import distinct, snapshot_history
from recstack.ranking.features import ItemActivity
from recstack.ranking.scorer import HistoryBatch, append_items, latest_time
from recstack.retrieval.index import search, searched_index
from recstack.serving.bundle import Bundle
from recstack.serving.config import ServingConfig
from recstack.serving.telemetry import metrics

log = logging.getLogger(__name__)


@dataclass
class Candidates:
    """A retrieved list in retrieval order: items ``(N,)``, their retrieval scores ``(N,)`` and which
    retriever found each (``from_neighbours``: the current item's neighbours, else the query tower)."""

    items: np.ndarray
    scores: np.ndarray
    from_neighbours: np.ndarray  # (N,) bool


@dataclass
class Job:
    """One request's model work.

    Attributes:
        user: user index (0 = unknown; only with a current item).
        current: the current item's index (0 = none).
        drop: sorted item indices never to retrieve (the user's seen items and the current one).
        n: candidates wanted; item_weight: the current item's neighbours' share of the blended score.
        rank: whether the ranker scores the candidates after retrieval.
        as_of: request time (us) for the ranker's time features; None = the user's latest interaction.
        history: the user's events as the service read them from its online state (so feedback counts
            at once); None = the bundle's snapshot (the batch stage).
    """

    user: int
    current: int
    drop: np.ndarray
    n: int
    item_weight: float = 0.0
    rank: bool = True
    as_of: int | None = None
    history: tuple[np.ndarray, np.ndarray] | None = None  # (items, times) oldest first; None = the snapshot's
    features: np.ndarray | None = None  # (N, F) the ranker's dense features of the candidates, once ranked
    state: tuple | None = None  # HistoryBatch.row of the user's history, once read (retrieval and ranking)
    retrieved: Future = field(default_factory=Future)
    retrieved_at: float = 0.0  # time.perf_counter() when the lane settled ``retrieved`` (0: not yet)
    ranked: Future = field(default_factory=Future)
    abandoned: bool = False  # the request stopped waiting: skip what is left
    submitted: float = 0.0  # time.monotonic() when handed to the lanes
    gathering: bool = False  # a lane holds it in a batching window (StageLanes._gather_s)


class Stages:
    """Batched retrieval and ranking over a loaded :class:`Bundle`."""

    def __init__(
        self,
        bundle: Bundle,
        config: ServingConfig,
        item_activity: Callable[[np.ndarray], ItemActivity | None] | None = None,
    ) -> None:
        """``item_activity``: the online state's interactions with given items since the snapshot (None
        when it cannot say); without it (offline, the batch stage) the snapshot's item features serve."""
        self.bundle, self.config, self.item_activity = bundle, config, item_activity
        # Events after this time (us) are the session: accepted by the service, not in the snapshot.
        self._snapshot_end = int(bundle.sequences.times.max()) if len(bundle.sequences.times) else -1
        # What ANN searches go to, chosen (and a small HNSW index's exact twin built) once here, not per
        # request or in the first request's budget.
        self._searched = (
            searched_index(bundle.index, config.full_scan_max_items)
            if config.retrieval == "ann" and bundle.index is not None
            else bundle.index
        )
        self.full_scan = self._searched is not bundle.index

    def histories(self, jobs: Sequence[Job]) -> HistoryBatch:
        """The jobs' users' histories: each job's own (online state), else the bundle's snapshot. Each
        job's part is computed once, for retrieval, and reused by ranking."""
        length = self.bundle.retriever.config.history_length
        for j in jobs:
            if j.state is None:
                if j.history is None:
                    snap = snapshot_history(self.bundle.sequences, j.user)
                    j.state = HistoryBatch.row(snap.items, snap.times, length)
                else:
                    j.state = HistoryBatch.row(*j.history, length)
        return HistoryBatch.stack([j.state for j in jobs])

    # ------------------------------------------------------------------------------------- retrieval

    @torch.no_grad()
    def queries(self, jobs: Sequence[Job]) -> np.ndarray:
        """``(B, D)`` query vectors: each user's history with the current item appended as the newest."""
        r = self.bundle.retriever
        users = np.array([j.user for j in jobs], dtype=np.int64)
        state = self.histories(jobs)
        history = (state.values, state.lengths)
        currents = np.array([j.current for j in jobs], dtype=np.int64)
        if currents.any():
            history = append_items(history, currents)  # 0 = append nothing
        q = r.query_vectors(users, history)
        if self.config.online.session_weight > 0:
            for row, job in enumerate(jobs):
                if job.history is not None:
                    q[row] = self._with_session(q[row], *job.history)
        return q

    def _with_session(self, q: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        """``q`` ``(D,)`` blended with the user's session: the events newer than the snapshot.

        The query tower learned long-term taste (it leans on the user's id and long history), so a few
        fresh clicks barely move its vector: measured on the default data, 5 clicks on one category left
        cos(q_before, q_after) at 0.998 and the category's share of the top 10 unchanged. The session
        vector, a recency-weighted mean of the fresh items' own vectors, carries the short-term intent;
        with no fresh events (offline, the batch stage) nothing changes.
        """
        cfg, r = self.config.online, self.bundle.retriever
        fresh = items[times > self._snapshot_end][-r.config.history_length :]
        if not len(fresh):
            return q
        weights = r.config.history_decay ** np.arange(len(fresh) - 1, -1, -1, dtype=np.float64)
        session = (weights / weights.sum()) @ r.item_vectors[fresh].astype(np.float64)
        norm_q, norm_s = float(np.linalg.norm(q)), float(np.linalg.norm(session))
        if norm_s == 0 or norm_q == 0:
            return q
        # Blend directions at the query's own length (under cosine the index wants unit vectors anyway).
        blend = (1 - cfg.session_weight) * q / norm_q + cfg.session_weight * session / norm_s
        return (blend / np.linalg.norm(blend) * norm_q).astype(q.dtype)

    def search(
        self, queries: np.ndarray, ns: Sequence[int], drops: Sequence[np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Top ``ns[b]`` items for each query ``(B, D)`` without ``drops[b]``: ``(items, scores)`` per row.

        ANN skips the drops inside FAISS (so each list is ``n`` long when the catalog allows); exact search
        scores the whole catalog with the drops masked.
        """
        b = self.bundle
        if self.config.retrieval == "exact":
            rows = np.repeat(np.arange(len(drops)), [len(d) for d in drops])
            cols = np.concatenate(drops) if len(drops) else np.empty(0, np.int64)
            exclude = sp.csr_matrix(
                (np.ones(len(cols), np.float32), (rows, cols)), shape=(len(drops), b.tables.items.n_items)
            )
            items, scores = b.retriever.candidates(
                b.sequences, np.arange(len(drops)), exclude, max(ns), query=queries
            )
            return [(items[r][items[r] >= 0][:n], scores[r][items[r] >= 0][:n]) for r, n in enumerate(ns)]
        if b.index is None:
            raise RuntimeError("the ANN index is missing")
        # FAISS spreads a search over OpenMP threads (a per-thread setting), which makes a small search
        # ~200x slower here (8 ms against 0.04 ms) and starves concurrent requests: the service and the
        # batch stage already run side by side. Set in whichever thread searches (lanes, /similar, batch).
        faiss.omp_set_num_threads(1)
        out = []
        # One search per query: each excludes its own items inside FAISS (a selector), so it asks for
        # exactly n results instead of over-fetching n + |seen| (which, at ~900 of 1682 ML-100K items,
        # found only 89 % of the exact top-200) and does not depend on the batch it is in.
        for row, n, drop in zip(queries, ns, drops, strict=True):
            ids, sims = search(self._searched, row[None, :], min(n, b.index.ntotal), exclude=drop)
            keep = ids[0] > 0
            out.append((ids[0][keep], sims[0][keep]))
        return out

    def retrieve(self, jobs: Sequence[Job]) -> list[Candidates]:
        """Each job's ``n`` candidates; with a current item, blended with its nearest neighbours:
        ``score = (1 - w) * q . v + w * v_current . v`` over the union of both lists."""
        q = self.queries(jobs)
        lists = self.search(q, [j.n for j in jobs], [j.drop for j in jobs])
        anchored = [r for r, j in enumerate(jobs) if j.current > 0 and j.item_weight > 0]
        vectors = self.bundle.retriever.item_vectors
        near_lists = {}
        if anchored:
            anchors = vectors[[jobs[r].current for r in anchored]]
            found = self.search(
                anchors, [self.config.n_neighbours] * len(anchored), [jobs[r].drop for r in anchored]
            )
            near_lists = dict(zip(anchored, found, strict=True))
        out = []
        for r, (job, (items, scores)) in enumerate(zip(jobs, lists, strict=True)):
            if r not in near_lists:
                out.append(Candidates(items, scores.astype(np.float32), np.zeros(len(items), dtype=bool)))
                continue
            near = near_lists[r][0]
            anchor = vectors[job.current]
            union = np.concatenate([items, near[~np.isin(near, items)]])
            w = job.item_weight
            blended = (1 - w) * (vectors[union] @ q[r]) + w * (vectors[union] @ anchor)
            order = np.argsort(-blended, kind="stable")[: job.n]
            union = union[order]
            out.append(
                Candidates(
                    union, blended[order].astype(np.float32), np.isin(union, near) & ~np.isin(union, items)
                )
            )
        return out

    # ------------------------------------------------------------------------------------- ranking

    def rank(self, jobs: Sequence[Job], cands: Sequence[Candidates]) -> list[np.ndarray]:
        """DLRM logits ``(N_b,)`` of each job's candidates, with its request time and current item as
        context; the lists are padded to one ``(B, N)`` batch (empty slots are dropped again)."""
        b = self.bundle
        width = max(len(c.items) for c in cands)
        items = np.full((len(jobs), width), -1, dtype=np.int64)
        sims = np.zeros((len(jobs), width), dtype=np.float32)
        for r, c in enumerate(cands):
            items[r, : len(c.items)], sims[r, : len(c.items)] = c.items, c.scores
        users = np.array([j.user for j in jobs], dtype=np.int64)
        currents = np.array([j.current for j in jobs], dtype=np.int64)
        state = self.histories(jobs)
        as_of = None
        if any(j.as_of is not None for j in jobs):
            latest = latest_time(b.ranking_context)
            as_of = np.array(
                [
                    j.as_of if j.as_of is not None else (t if t >= 0 else latest)
                    for j, t in zip(jobs, state.last_time, strict=True)
                ]
            )
        activity = self.item_activity(distinct(items[items > 0])) if self.item_activity else None
        logits, dense = b.funnel.score_with_features(
            b.ranking_context,
            users,
            items,
            sims,
            as_of,
            currents if currents.any() else None,
            state,
            activity,
        )
        for r, (job, c) in enumerate(zip(jobs, cands, strict=True)):
            job.features = dense[r, : len(c.items)]  # for monitoring: the served items' rows are logged
        return [logits[r, : len(c.items)] for r, c in enumerate(cands)]


def _settle(future: Future, value: object = None, error: BaseException | None = None) -> None:
    """Complete ``future`` unless it already is (a late result for a request that stopped waiting)."""
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
    except InvalidStateError:
        pass


def run_retrieval(stages: Stages, batch: list[Job]) -> list[Job]:
    """Retrieve ``batch`` and settle each ``job.retrieved``; returns the jobs that go on to ranking.

    Jobs with nothing to rank get their ``ranked`` settled too (an empty list, or the retrieval error), so
    no waiter is left hanging.
    """
    for jobs, result in _isolated(batch, stages.retrieve):
        done_at = time.perf_counter()
        for job in jobs:
            job.retrieved_at = done_at
        if isinstance(result, BaseException):
            for job in jobs:
                _settle(job.retrieved, error=result)
                _settle(job.ranked, error=result)
        else:
            for job, value in zip(jobs, result, strict=True):
                _settle(job.retrieved, value)
    # Every future of the batch is settled now, so exception() / result() below do not block.
    to_rank = [j for j in batch if j.rank and not j.abandoned and j.retrieved.exception() is None]
    for job in to_rank:
        if not len(job.retrieved.result().items):
            _settle(job.ranked, np.empty(0, np.float32))
    return [j for j in to_rank if len(j.retrieved.result().items)]


def run_ranking(stages: Stages, batch: list[Job]) -> None:
    """Rank the retrieved candidates of ``batch`` and settle each ``job.ranked``."""

    def rank(jobs: list[Job]) -> list[np.ndarray]:
        return stages.rank(jobs, [j.retrieved.result() for j in jobs])

    for jobs, result in _isolated(batch, rank):
        if isinstance(result, BaseException):
            for job in jobs:
                _settle(job.ranked, error=result)
        else:
            for job, value in zip(jobs, result, strict=True):
                _settle(job.ranked, value)


def _isolated(batch: list[Job], fn: Callable[[list[Job]], list]) -> list[tuple[list[Job], object]]:
    """``fn`` on the whole batch; if it raises, on each job alone, so only the failing ones fail."""
    try:
        return [(batch, fn(batch))]
    except Exception as exc:  # noqa: BLE001 - handed to each request, which logs it and falls back
        if len(batch) == 1:
            return [(batch, exc)]
        log.warning("a batch of %d failed (%s); retrying one by one", len(batch), exc)
    out: list[tuple[list[Job], object]] = []
    for job in batch:
        try:
            out.append(([job], fn([job])))
        except Exception as exc:  # noqa: BLE001 - as above
            out.append(([job], exc))
    return out


@dataclass
class _Worker:
    """What one lane thread is doing: ``stage`` None = idle; ``batch_since`` / ``stage_since``: when its
    current batch / stage began (``time.monotonic()``)."""

    stage: str | None = None
    batch_since: float = 0.0
    stage_since: float = 0.0


class StageLanes:
    """Retrieval then ranking of each batch, back to back on one thread, batching the requests waiting.

    One thread runs both stages of a batch: two threads handing batches to each other contend for the GIL
    on every numpy, torch and FAISS call. Measured at 8 concurrent requests: 25 % more CPU per request and
    fewer requests/s than one thread doing both.

    Isolation comes from standby threads instead. A thread takes work only while fewer than ``threads``
    threads have been on their batch for less than ``stall_s``. So when the ranker hangs:
    - the stuck thread is written off after ``stall_s`` and a standby retrieves the next batches;
    - since the stuck thread is in ranking, the standby fails the rankings of its batches with a
      TimeoutError at once instead of joining it;
    - those requests keep the retrieval order without waiting out the ranking budget.
    A batch that fails is retried job by job, so one bad request fails alone.
    """

    def __init__(
        self,
        stages: Stages,
        threads: int,
        max_batch: int,
        stall_s: float = 0.05,
        standby: int = 1,
        window_s: float = 0.0,
        in_flight: Callable[[], int] | None = None,
        scheduling: str = "batch",
    ) -> None:
        """``window_s`` / ``in_flight``: the batching window, and how many requests the caller has in
        flight (see :meth:`_gather_s`). ``scheduling``: the threads' policy (:func:`schedule_thread`)."""
        self._scheduling = scheduling
        self.stages = stages
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # recent batch sizes
        self._metrics = metrics()
        self._threads_active, self._max_batch = threads, max_batch
        self._stall_s = stall_s
        self._window_s, self._in_flight = window_s, in_flight
        self._queue: deque[Job] = deque()
        self._ready = threading.Condition()
        self._closed = False
        self._workers = [_Worker() for _ in range(threads + standby)]
        self._threads = [
            threading.Thread(target=self._run, args=(w,), name=f"recstack-stages-{i}", daemon=True)
            for i, w in enumerate(self._workers)
        ]
        for t in self._threads:
            t.start()

    def submit(self, job: Job) -> Job:
        with self._ready:
            job.submitted = time.monotonic()
            self._queue.append(job)
            # A window that is open runs its course unless the batch fills (see _gather_s): the lane
            # holding it would wake only to wait again, taking the GIL and a context switch from the loop.
            gathering = self._queue[0].gathering and len(self._queue) < self._max_batch
            if not gathering and self._may_work(time.monotonic()) is None:
                self._ready.notify()
            # Else every thread is busy and none stalled: the busy one takes the queue when it is done,
            # and waiting threads look again when it could count as stalled (no wake-up per request).
        return job

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop taking work; wait up to ``timeout_s`` for batches in flight (a thread still computing at
        interpreter exit can abort the process inside torch)."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        deadline = time.monotonic() + timeout_s
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0))

    def _may_work(self, now: float) -> float | None:
        """None when a thread may take work now, else how long until a busy thread counts as stalled.

        Called with ``_ready`` held.
        """
        fresh = [w.batch_since + self._stall_s - now for w in self._workers if w.stage is not None]
        fresh = [t for t in fresh if t > 0]
        return None if len(fresh) < self._threads_active else min(fresh)

    def _gather_s(self, now: float) -> float | None:
        """None to take the waiting jobs now, else how long to let them wait for more (the batching
        window). Called with ``_ready`` held and jobs waiting.

        A batch's model work costs far less per request than a request alone (at 200 candidates on
        ML-100K: a batch of 2 ~27 % less, of 4 ~45 % less per request), so under load it pays to let the
        oldest job wait up to ``window_s`` for others. Only while the caller has more requests in flight
        than wait here (the others are being answered, so more are coming): a lone request never waits.
        """
        if self._window_s <= 0 or self._in_flight is None or len(self._queue) >= self._max_batch:
            return None
        oldest = self._queue[0]
        left = oldest.submitted + self._window_s - now
        if left <= 0:
            return None
        if not oldest.gathering:
            # Opened once, under load, a window runs its course: the requests it waits for are the
            # next ones, not yet in flight when it opened.
            if self._in_flight() <= len(self._queue):
                return None
            oldest.gathering = True
        return left

    def _stuck_ranking(self, w: _Worker, now: float) -> bool:
        return w.stage == "ranking" and now - w.batch_since > self._stall_s

    def _run(self, me: _Worker) -> None:
        schedule_thread(self._scheduling)
        while True:
            with self._ready:
                while True:
                    if self._closed:
                        return
                    now = time.monotonic()
                    wait_s = self._may_work(now)
                    if wait_s is None and self._queue:
                        wait_s = self._gather_s(now)
                        if wait_s is None:
                            break
                    self._ready.wait(wait_s)  # None: until work is submitted
                batch: list[Job] = []
                while self._queue and len(batch) < self._max_batch:
                    job = self._queue.popleft()
                    if not job.abandoned:
                        batch.append(job)
                me.stage, me.batch_since = "retrieval", time.monotonic()
                me.stage_since = me.batch_since
                if self._queue and self._may_work(me.batch_since) is None:
                    self._ready.notify()  # more than one batch waiting, and another thread may run
            try:
                if batch:
                    self._process(batch, me)
            except Exception as exc:
                # Never let a lane thread die: every later request would time out.
                log.exception("stage lane failed on a batch of %d", len(batch))
                for job in batch:
                    _settle(job.retrieved, error=exc)
                    _settle(job.ranked, error=exc)
            finally:
                with self._ready:
                    me.stage = None

    def _process(self, batch: list[Job], me: _Worker) -> None:
        self.batch_sizes.append(len(batch))
        self._metrics.batch_size.labels(stage="retrieval").observe(len(batch))
        to_rank = run_retrieval(self.stages, batch)
        if not to_rank:
            return
        with self._ready:
            now = time.monotonic()
            # A thread stuck in ranking (written off, which is why this one may run): do not join it.
            stalled = max(
                (now - w.stage_since for w in self._workers if w is not me and self._stuck_ranking(w, now)),
                default=None,
            )
            if stalled is None:
                me.stage, me.stage_since = "ranking", now
        if stalled is not None:
            error = TimeoutError(f"the ranker has been on an earlier batch for {stalled * 1000:.0f} ms")
            for job in to_rank:
                _settle(job.ranked, error=error)
            return
        self._metrics.batch_size.labels(stage="ranking").observe(len(to_rank))
        run_ranking(self.stages, to_rank)


def schedule_thread(policy: str) -> bool:
    """Put the calling thread under ``policy`` (``batch``: Linux's SCHED_BATCH; ``normal``: left as is).
    Returns whether the policy was applied.

    Why batch for lanes: a worker's event loop and lanes share one core (see
    :func:`recstack.serving.workers.pin_worker`). Under the default policy the lane that a request's
    submit wakes preempts the loop in the middle of its callback, and the loop gets the core back when the
    lane waits for the GIL or is done: a switch or two per request, each with the other thread's data in
    the caches. A SCHED_BATCH thread does not preempt on wake-up: the loop finishes what it is doing (a
    request it reads meanwhile joins the batch) and the lane runs when the loop waits. Only the
    lanes' own wake-ups change: the loop woken by a budget's timer or a socket is scheduled as before, and
    a lane keeps the same CPU share (same weight; a lower one, nice 5-10, measured a few % more requests/s
    but would yield the model work to every other process on the core, noisy neighbours included).
    Measured on ML-100K at concurrency 8, the same bento with ``lane_scheduling`` batch against normal
    (three same-run A/Bs, 4, 6 and 4 rounds, order alternating): CPU per request -6 %, -3.5 % and -0.7 %,
    requests/s +5 %, +2 % and +1 %: small, never negative (batches barely larger, mean 1.7 -> 1.7-1.9:
    the gain is mostly the switches). The whole worker under SCHED_BATCH (the loop too) was ~3 % worse
    than the lanes alone.

    Unprivileged threads may switch to SCHED_BATCH; where the OS has no such policy (not Linux) or refuses
    it, the thread keeps the OS default, with a warning for a refusal.
    """
    if policy not in ("batch", "normal"):
        raise ValueError(f"unknown lane scheduling {policy!r}: expected batch or normal")
    if policy == "normal" or not hasattr(os, "SCHED_BATCH"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # 0: the calling thread
    except OSError as exc:
        log.warning("stage lane keeps the default scheduling policy: SCHED_BATCH refused (%s)", exc)
        return False
    return True


def wait(future: Future, budget_s: float | None) -> object:
    """The future's result within ``budget_s`` (None: however long it takes): TimeoutError when over,
    its exception if it failed."""
    if budget_s is None:
        return future.result()
    if budget_s <= 0 and not future.done():
        raise TimeoutError("no time left in the request's budget")
    return future.result(timeout=max(budget_s, 0))


async def wait_async(future: Future, budget_s: float) -> object:
    """:func:`wait` for an event loop: awaits the lane's future without holding a thread.

    The future is never cancelled on a timeout (a lane may be computing it; the job is marked abandoned
    instead), so lanes only ever see futures that they settle themselves. One loop future, woken by the
    lane or by a timer: ``asyncio.wrap_future`` and ``asyncio.wait`` chained three futures, a task set
    and their callbacks per request (60 -> 37 us per await, timed alone).
    """
    if future.done():
        return future.result()
    if budget_s <= 0:
        raise TimeoutError("no time left in the request's budget")
    loop = asyncio.get_running_loop()
    woken = loop.create_future()
    future.add_done_callback(lambda _: _wake_from_thread(loop, woken))
    timer = loop.call_later(budget_s, _wake, woken)
    try:
        await woken
    finally:
        timer.cancel()
    if not future.done():
        raise TimeoutError(f"no result within {budget_s * 1000:.0f} ms")
    return future.result()


def _wake(woken: asyncio.Future) -> None:
    if not woken.done():  # already woken (by the timer or the lane), or its request was cancelled
        woken.set_result(None)


def _wake_from_thread(loop: asyncio.AbstractEventLoop, woken: asyncio.Future) -> None:
    """The lane's side: wake the request's loop (closed at shutdown: nobody waits any more)."""
    try:
        loop.call_soon_threadsafe(_wake, woken)
    except RuntimeError:  # the loop is closed
        pass
