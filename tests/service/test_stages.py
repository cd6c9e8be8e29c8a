"""Batched model stages: a job's result does not depend on its batch; lanes batch and isolate failures."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from recstack.serving.config import NO_BUDGETS, Budgets
from recstack.serving.engine import Recommender
from recstack.serving.schemas import RecommendRequest
from recstack.serving.stages import Job, StageLanes, Stages


def jobs_for(rec: Recommender, n: int = 12) -> list[Job]:
    """Known users; every third one on a current item (the up_next blend), as the service builds them."""
    b = rec.bundle
    out = []
    for r, uid in enumerate(b.tables.spec.user_id.values.head(n).to_list()):
        user = b.user_index(str(uid))
        seen = b.seen(user)
        current = int(seen[0]) if r % 3 == 0 and len(seen) else 0
        out.append(
            Job(
                user=user,
                current=current,
                drop=np.union1d(seen, [current]) if current else seen,
                n=rec.config.n_candidates,
                item_weight=0.5 if current else 0.0,
            )
        )
    return out


@pytest.mark.parametrize(
    "settings",
    [{"retrieval": "ann"}, {"retrieval": "ann", "full_scan_max_items": 0}, {"retrieval": "exact"}],
    ids=["ann-scan", "ann-graph", "exact"],
)
def test_a_batch_gives_each_job_what_it_gets_alone(recommender: Recommender, settings: dict) -> None:
    stages = Stages(recommender.bundle, recommender.config.model_copy(update=settings))
    jobs = jobs_for(recommender)
    together = stages.retrieve(jobs)
    alone = [stages.retrieve([j])[0] for j in jobs]
    for t, a in zip(together, alone, strict=True):
        np.testing.assert_array_equal(t.items, a.items)
        np.testing.assert_allclose(t.scores, a.scores, atol=1e-6)  # float32 GEMM rounding
        np.testing.assert_array_equal(t.from_neighbours, a.from_neighbours)
    assert any(c.from_neighbours.any() for c in together)  # the up_next blend was exercised
    ranked = stages.rank(jobs, together)
    for job, cands, logits in zip(jobs, together, ranked, strict=True):
        single = stages.rank([job], [cands])[0]
        assert logits.shape == (len(cands.items),)
        np.testing.assert_allclose(logits, single, rtol=1e-5, atol=1e-5)


def test_ann_retrieval_scans_a_small_catalog_exactly(recommender: Recommender) -> None:
    """An HNSW index within ``full_scan_max_items`` is scanned: the candidates (items, order, scores) are
    exact retrieval's; at 0 the graph walks as before."""
    b = recommender.bundle
    assert b.index is not None and b.index.ntotal <= recommender.config.full_scan_max_items
    scanning = Stages(b, recommender.config.model_copy(update={"retrieval": "ann"}))
    graph = Stages(b, recommender.config.model_copy(update={"retrieval": "ann", "full_scan_max_items": 0}))
    exact = Stages(b, recommender.config.model_copy(update={"retrieval": "exact"}))
    assert scanning.full_scan and not graph.full_scan and not exact.full_scan
    assert recommender.health()["index"]["search"] == "full_scan"
    jobs = [j for j in jobs_for(recommender) if not j.current]  # the blend is the same code on both
    for s, e, g in zip(scanning.retrieve(jobs), exact.retrieve(jobs), graph.retrieve(jobs), strict=True):
        np.testing.assert_array_equal(s.items, e.items)
        np.testing.assert_allclose(s.scores, e.scores, rtol=1e-5, atol=1e-6)
        assert len(np.intersect1d(g.items, e.items)) >= 0.9 * len(e.items)  # the graph: approximate


def test_lanes_batch_concurrent_requests_without_changing_answers(recommender: Recommender, tmp_path) -> None:
    # Without budgets: on a busy machine 16 threads at once overran them, and the fallbacks' lists differed
    # (what this test checks is batching, not budgets).
    config = recommender.config.model_copy(update={"budgets": Budgets(**NO_BUDGETS)})
    rec = Recommender(recommender.bundle, config=config, log_dir=tmp_path / "no_budgets")
    try:
        users = [str(u) for u in rec.bundle.tables.spec.user_id.values.head(64).to_list()]
        requests = [RecommendRequest(user_id=u, k=10, seed=1) for u in users]
        sequential = [[i.item_id for i in rec.recommend(q).items] for q in requests]
        rec.cache = None  # every request runs the funnel
        rec.lanes.batch_sizes.clear()
        with ThreadPoolExecutor(16) as pool:
            answered = list(pool.map(rec.recommend, requests))
        assert {r.served_by for r in answered} == {"funnel"}, [r.fallbacks for r in answered if r.fallbacks]
        assert [[i.item_id for i in r.items] for r in answered] == sequential
        assert max(rec.lanes.batch_sizes) > 1  # requests really shared batches
    finally:
        rec.close()


def test_a_failing_job_fails_alone(recommender: Recommender) -> None:
    stages = Stages(recommender.bundle, recommender.config)
    jobs = jobs_for(recommender, 6)
    bad = jobs[2].user
    real = stages.retrieve
    gate = threading.Event()

    def retrieve(batch: list[Job]):
        gate.wait(5)  # hold the first batch until all jobs are queued, so they share one
        if any(j.user == bad for j in batch):
            raise RuntimeError("corrupt row")
        return real(batch)

    stages.retrieve = retrieve  # type: ignore[method-assign]
    lanes = StageLanes(stages, threads=1, max_batch=32)
    try:
        for j in jobs:
            lanes.submit(j)
        gate.set()
        for j in jobs:
            if j.user == bad:
                with pytest.raises(RuntimeError, match="corrupt row"):
                    j.retrieved.result(timeout=30)
                with pytest.raises(RuntimeError, match="corrupt row"):
                    j.ranked.result(timeout=30)
            else:
                assert len(j.retrieved.result(timeout=30).items) > 0
                assert np.isfinite(j.ranked.result(timeout=30)).all()
    finally:
        lanes.close()


def test_under_load_the_batching_window_gathers_jobs_and_a_lone_job_does_not_wait(
    recommender: Recommender,
) -> None:
    """With other requests in flight, a lane lets the oldest job wait up to the window for more, so jobs
    submitted a few ms apart share one batch; with none in flight (``in_flight`` at most the jobs
    waiting) it takes a job at once."""
    stages = Stages(recommender.bundle, recommender.config)
    in_flight = [0]
    lanes = StageLanes(stages, threads=1, max_batch=32, window_s=0.2, in_flight=lambda: in_flight[0])
    try:
        lone = jobs_for(recommender, 1)[0]
        in_flight[0] = 1  # the lone job's own request only
        lanes.submit(lone)
        lone.ranked.result(timeout=30)
        assert list(lanes.batch_sizes) == [1]
        assert lanes.batch_sizes and lone.retrieved.done()

        jobs = jobs_for(recommender, 4)
        in_flight[0] = 4  # four requests on their way: the first waits for the others
        for j in jobs:
            lanes.submit(j)
            threading.Event().wait(0.01)
        for j in jobs:
            j.ranked.result(timeout=30)
        assert list(lanes.batch_sizes)[1:] == [4]
        # A full batch is taken at once, whatever the window.
        lanes._max_batch = 2
        more = jobs_for(recommender, 2)
        in_flight[0] = 10
        start = time.monotonic()
        for j in more:
            lanes.submit(j)
        more[-1].ranked.result(timeout=30)
        assert time.monotonic() - start < 0.2 and list(lanes.batch_sizes)[-1] == 2
    finally:
        lanes.close()


def test_the_batching_window_is_short_by_default_and_bounded(recommender: Recommender) -> None:
    from recstack.serving.config import ServingConfig, ServingConfigError, load_serving_config

    assert ServingConfig().batch_window_ms == 3.0
    with pytest.raises(ServingConfigError, match="batch_window_ms"):
        load_serving_config({**recommender.config.model_dump(by_alias=True), "batch_window_ms": 500})


def _lane_policies(lanes: StageLanes, expected: int) -> set[int]:
    """The scheduling policy of each of the lanes' threads (Linux: read per thread id), once they all
    show ``expected`` or after 10 s: each thread sets its own when it starts running, and the standby
    thread may not have run yet when the first answers."""
    deadline = time.monotonic() + 10
    while True:
        policies = {os.sched_getscheduler(t.native_id) for t in lanes._threads}
        if policies == {expected} or time.monotonic() > deadline:
            return policies
        time.sleep(0.01)


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_lane_threads_run_under_sched_batch_by_default_and_normal_on_request(
    recommender: Recommender,
) -> None:
    """Lanes woken by a submit must not preempt the event loop (see schedule_thread); the rest of the
    process keeps the OS default, and ``normal`` leaves the lanes at it too. Either way they answer."""
    from recstack.serving.config import ServingConfig
    from recstack.serving.stages import schedule_thread

    assert ServingConfig().lane_scheduling == "batch"
    probe: list[bool] = []
    t = threading.Thread(target=lambda: probe.append(schedule_thread("batch")))
    t.start()
    t.join()
    if not probe[0]:  # a sandbox that refuses the policy (that path: the test below)
        pytest.skip("this machine refuses SCHED_BATCH")
    main_policy = os.sched_getscheduler(0)
    for policy, expected in (("batch", os.SCHED_BATCH), ("normal", main_policy)):
        lanes = StageLanes(
            Stages(recommender.bundle, recommender.config), threads=1, max_batch=8, scheduling=policy
        )
        try:
            job = jobs_for(recommender, 1)[0]
            lanes.submit(job)
            assert len(job.retrieved.result(timeout=30).items) > 0
            assert np.isfinite(job.ranked.result(timeout=30)).all()
            assert _lane_policies(lanes, expected) == {expected}, policy
        finally:
            lanes.close()
    assert os.sched_getscheduler(0) == main_policy  # the caller's thread is left as it was


def test_schedule_thread_refuses_an_unknown_policy_and_leaves_normal_alone() -> None:
    from recstack.serving.stages import schedule_thread

    got: dict[str, object] = {}

    def run() -> None:
        got["normal"] = schedule_thread("normal")
        got["policy"] = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
        try:
            schedule_thread("fifo")
        except ValueError as exc:
            got["error"] = str(exc)

    before = os.sched_getscheduler(0) if hasattr(os, "sched_getscheduler") else None
    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert got["normal"] is False and got["policy"] == before
    assert "unknown lane scheduling 'fifo'" in str(got["error"])


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux's")
def test_a_refused_sched_batch_leaves_the_lane_at_the_default_with_a_warning(monkeypatch, caplog) -> None:
    from recstack.serving import stages

    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(stages.os, "sched_setscheduler", refuse)
    with caplog.at_level("WARNING", logger="recstack.serving.stages"):
        assert stages.schedule_thread("batch") is False
    assert "SCHED_BATCH refused" in caplog.text and "Operation not permitted" in caplog.text


def test_lane_scheduling_is_validated_by_the_serving_config(recommender: Recommender) -> None:
    from recstack.serving.config import ServingConfigError, load_serving_config

    with pytest.raises(ServingConfigError, match="lane_scheduling"):
        load_serving_config({**recommender.config.model_dump(by_alias=True), "lane_scheduling": "realtime"})


def test_wait_async_returns_raises_times_out_and_never_cancels_the_lane_future(caplog) -> None:
    """The event loop's wait for a lane: the result or the lane's error, settled from another thread;
    TimeoutError past the budget with the future left to the lane; a request cancelled while waiting,
    or a loop gone before the lane settles, leaves nothing broken behind."""
    import asyncio
    from concurrent.futures import Future

    from recstack.serving.stages import wait_async

    def settle_later(fn, *args, delay: float = 0.01) -> None:
        threading.Timer(delay, fn, args).start()

    async def scenarios() -> None:
        done: Future = Future()
        done.set_result(1)
        assert await wait_async(done, 0.0) == 1  # settled already: no budget needed
        ok: Future = Future()
        settle_later(ok.set_result, "ranked")
        assert await wait_async(ok, 5.0) == "ranked"
        failed: Future = Future()
        settle_later(failed.set_exception, ValueError("ranker broke"))
        with pytest.raises(ValueError, match="ranker broke"):
            await wait_async(failed, 5.0)
        slow: Future = Future()
        start = time.perf_counter()
        with pytest.raises(TimeoutError, match="no result within 50 ms"):
            await wait_async(slow, 0.05)
        assert 0.04 < time.perf_counter() - start < 2.0
        assert not slow.cancelled() and not slow.done()  # still the lane's to settle
        slow.set_result("late")  # nobody waits: no error
        with pytest.raises(TimeoutError, match="no time left"):
            await wait_async(Future(), 0.0)
        # A request cancelled mid-wait (the client went away): the lane settles later, harmlessly.
        abandoned: Future = Future()
        task = asyncio.ensure_future(wait_async(abandoned, 5.0))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        abandoned.set_result("late")
        await asyncio.sleep(0.01)

    asyncio.run(scenarios())
    # Settled after its loop is closed (a lane finishing at shutdown): no error reaches the lane.
    orphan: Future = Future()

    async def start_waiting() -> None:
        asyncio.ensure_future(wait_async(orphan, 5.0))
        await asyncio.sleep(0.01)

    loop = asyncio.new_event_loop()
    loop.run_until_complete(start_waiting())
    loop.close()
    orphan.set_result("late")
    # concurrent.futures logs (does not raise) an error from a done-callback: none may be logged.
    assert not [r for r in caplog.records if "callback" in r.getMessage()]
