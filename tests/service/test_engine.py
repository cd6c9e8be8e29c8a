"""The serving engine in-process: funnel, surfaces, cold start, fallbacks, cache, experiments, feedback."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recstack.data.io import INTERACTIONS_FILE
from recstack.data.split import FIT_SPLITS
from recstack.evaluation.evaluate import _apply_policy
from recstack.evaluation.topk import p1_matrices
from recstack.serving.bundle import load_bundle
from recstack.serving.config import (
    NO_BUDGETS,
    Budgets,
    ServingConfig,
    ServingConfigError,
    load_serving_config,
)
from recstack.serving.engine import Recommender, RequestError
from recstack.serving.eventlog import FEEDBACK_LOG, RESPONSES_LOG, read_events
from recstack.serving.schemas import FeedbackEvent, RecommendRequest, SimilarRequest

NOW = "2026-01-01T00:00:00Z"


def known_users(rec: Recommender, n: int = 20) -> list[str]:
    return [str(v) for v in rec.bundle.tables.spec.user_id.values.head(n).to_list()]


def ids_to_idx(rec: Recommender, ids: list[str]) -> list[int]:
    return [rec.bundle.item_index(i) for i in ids]


def test_known_user_gets_a_full_funnel_list_without_seen_items(recommender: Recommender) -> None:
    for uid in known_users(recommender):
        resp = recommender.recommend(RecommendRequest(user_id=uid, k=10, explain=True))
        items = ids_to_idx(recommender, [i.item_id for i in resp.items])
        assert resp.served_by == "funnel" and resp.fallbacks == []
        assert len(items) == 10 == len(set(items)) and 0 not in items
        seen = set(recommender.bundle.seen(recommender.bundle.user_index(uid)).tolist())
        assert not seen & set(items)
        assert all(
            i.explanation.retrieval_rank >= 1 and i.explanation.ranker_score is not None for i in resp.items
        )
        assert (
            resp.model_version
            and resp.ranker_version
            and set(resp.timings_ms) >= {"retrieval", "ranking", "total"}
        )


def test_service_equals_the_offline_funnel_with_the_same_models_and_policy(
    bundle_dir: Path, small_features: Path
) -> None:
    """Parity: exact retrieval over the train + valid snapshot reproduces evaluate's funnel_reranked."""
    bundle = load_bundle(bundle_dir, splits=FIT_SPLITS)
    # Budgets lifted: a stage cut short by a pause on a busy machine serves a fallback (correctly), which
    # is not what this test compares.
    config = bundle.config.model_copy(update={"retrieval": "exact", "budgets": Budgets(**NO_BUDGETS)})
    rec = Recommender(bundle, config=config)
    try:
        interactions = pl.read_parquet(small_features / INTERACTIONS_FILE)
        n_users, n_items = bundle.tables.spec.user_id.size, bundle.tables.spec.item_id.size
        fit, _ = p1_matrices(interactions, n_users, n_items)
        users = np.arange(1, 41)
        funnel = bundle.funnel
        ranked, logits = funnel.rank(bundle.ranking_context, users, fit, funnel.n_candidates)
        k = 10
        offline = _apply_policy(bundle.policy, bundle.catalog, users, fit, ranked, logits, k)
        ids = bundle.tables.spec.user_id.values.to_list()
        for row, u in enumerate(users):
            resp = rec.recommend(RecommendRequest(user_id=str(ids[u - 1]), k=k, seed=int(u)))
            served = ids_to_idx(rec, [i.item_id for i in resp.items])
            assert served == [int(i) for i in offline[row] if i > 0], f"user {u}"
    finally:
        rec.close()


def test_unknown_user_gets_the_cold_start_chain(recommender: Recommender) -> None:
    segments = recommender.bundle.popular.segments
    resp = recommender.recommend(RecommendRequest(user_id="never-seen", k=5))
    assert (
        resp.served_by == "popular_global" and resp.fallbacks == ["cold_start_user"] and len(resp.items) == 5
    )
    if segments.get("region"):
        region = next(iter(segments["region"]))
        seg = recommender.recommend(RecommendRequest(user_id="never-seen", k=5, region=region))
        assert seg.served_by == "popular_segment"
        # The segment's popular items, policy-filtered (MMR may reorder within the list).
        assert set(ids_to_idx(recommender, [i.item_id for i in seg.items])) <= set(
            segments["region"][region][:30]
        )


def test_up_next_and_related_start_from_the_current_item(recommender: Recommender) -> None:
    uid = known_users(recommender)[0]
    user = recommender.bundle.user_index(uid)
    current_idx = int(recommender.bundle.popular.global_items[0])
    current = str(recommender.bundle.catalog.item_ids[current_idx])
    home = recommender.recommend(RecommendRequest(user_id=uid, k=10))
    related = recommender.recommend(
        RecommendRequest(user_id=uid, k=10, surface="related", current_item_id=current, explain=True)
    )
    items = ids_to_idx(recommender, [i.item_id for i in related.items])
    assert current_idx not in items and related.served_by == "funnel"
    assert any(i.explanation.source == "neighbours" for i in related.items) or items != ids_to_idx(
        recommender, [i.item_id for i in home.items]
    )
    # Related items sit closer to the current item than the homepage's do.
    v = recommender.bundle.retriever.item_vectors
    assert (v[items] @ v[current_idx]).mean() > (
        v[ids_to_idx(recommender, [i.item_id for i in home.items])] @ v[current_idx]
    ).mean()
    assert user > 0
    with pytest.raises(RequestError) as err:
        recommender.recommend(RecommendRequest(user_id=uid, surface="related"))
    assert err.value.field == "current_item_id"
    unknown = recommender.recommend(RecommendRequest(user_id=uid, surface="up_next", current_item_id="nope"))
    assert unknown.warnings and "nope" in unknown.warnings[0]


def test_exclusions_and_limits(recommender: Recommender) -> None:
    uid = known_users(recommender)[1]
    first = recommender.recommend(RecommendRequest(user_id=uid, k=5))
    drop = [first.items[0].item_id, first.items[2].item_id]
    again = recommender.recommend(RecommendRequest(user_id=uid, k=5, exclude_item_ids=drop))
    assert not set(drop) & {i.item_id for i in again.items} and len(again.items) == 5
    with pytest.raises(RequestError) as err:
        recommender.recommend(RecommendRequest(user_id=uid, k=recommender.config.limits.max_k + 1))
    assert err.value.field == "k"


def test_ranker_failure_keeps_the_retrieval_order(recommender: Recommender, monkeypatch) -> None:
    uid = known_users(recommender)[2]

    def broken(*args, **kwargs):
        raise RuntimeError("ranker exploded")

    monkeypatch.setattr(recommender.bundle.funnel, "score_with_features", broken)
    resp = recommender.recommend(RecommendRequest(user_id=uid, k=10, explain=True))
    assert resp.served_by == "retrieval" and resp.fallbacks == ["ranker_error"] and len(resp.items) == 10
    assert resp.ranker_version is None


def test_slow_ranker_is_cut_at_its_budget(recommender: Recommender, monkeypatch) -> None:
    uid = known_users(recommender)[3]
    real = recommender.bundle.funnel.score_with_features

    def slow(*args, **kwargs):
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(recommender.bundle.funnel, "score_with_features", slow)
    start = time.perf_counter()
    resp = recommender.recommend(RecommendRequest(user_id=uid, k=10))
    elapsed = time.perf_counter() - start
    assert resp.served_by == "retrieval" and resp.fallbacks == ["ranker_timeout"] and len(resp.items) == 10
    assert elapsed < 0.6  # the 80 ms ranking budget, not the ranker's second


def test_a_hung_ranker_does_not_hold_up_retrieval(recommender: Recommender, monkeypatch) -> None:
    """While the ranker hangs on one batch, the standby thread retrieves the next requests and fails their
    ranking at once: they keep the retrieval order (not popular items) without waiting out the budget."""
    uids = known_users(recommender)[5:9]
    release = threading.Event()
    real = recommender.bundle.funnel.score_with_features

    def hung(*args, **kwargs):
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(recommender.bundle.funnel, "score_with_features", hung)
    try:
        first = recommender.recommend(RecommendRequest(user_id=uids[0], k=10))
        assert first.served_by == "retrieval" and first.fallbacks == ["ranker_timeout"]
        for uid in uids[1:]:
            resp = recommender.recommend(RecommendRequest(user_id=uid, k=10))
            assert resp.served_by == "retrieval" and resp.fallbacks == ["ranker_timeout"], resp.fallbacks
            assert len(resp.items) == 10
            # Failed at once by the standby, not cut at the 80 ms ranking budget.
            assert resp.timings_ms["ranking"] < 40, resp.timings_ms
    finally:
        release.set()
    monkeypatch.undo()
    # Once the ranker returns, its thread rejoins and requests are ranked again.
    for uid in known_users(recommender)[10:60]:  # new users each time: no cached answer
        if recommender.recommend(RecommendRequest(user_id=uid, k=10)).served_by == "funnel":
            break
        time.sleep(0.1)
    else:
        pytest.fail("the funnel did not recover after the ranker returned")


def test_async_requests_answer_as_blocking_ones(loaded_bundle, tmp_path: Path, monkeypatch) -> None:
    """The service's coroutine path: concurrent requests get the blocking path's lists, a cached answer,
    and a hung ranker is cut at its budget without holding the event loop."""
    rec = Recommender(loaded_bundle, log_dir=tmp_path)
    try:
        reqs = [RecommendRequest(user_id=u, k=10, explain=True) for u in known_users(rec, 24)]
        blocking = [rec.recommend(r) for r in reqs]

        async def concurrently() -> list:
            return await asyncio.gather(*(rec.recommend_async(r) for r in reqs))

        rec.cache.clear()
        fresh = asyncio.run(concurrently())
        assert [[i.item_id for i in r.items] for r in fresh] == [
            [i.item_id for i in r.items] for r in blocking
        ]
        assert all(not r.cached and r.served_by == "funnel" for r in fresh)
        assert all(r.cached for r in asyncio.run(concurrently()))
        assert len(list(read_events(tmp_path / RESPONSES_LOG))) == 3 * len(reqs)

        real = rec.bundle.funnel.score_with_features

        def slow(*args, **kwargs):
            time.sleep(1.0)
            return real(*args, **kwargs)

        monkeypatch.setattr(rec.bundle.funnel, "score_with_features", slow)
        rec.cache.clear()

        async def with_a_ticker() -> tuple:
            ticks = 0

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.005)

            ticker = asyncio.create_task(tick())
            start = time.perf_counter()
            resp = await rec.recommend_async(reqs[0])
            elapsed = time.perf_counter() - start
            ticker.cancel()
            return resp, elapsed, ticks

        resp, elapsed, ticks = asyncio.run(with_a_ticker())
        assert (
            resp.served_by == "retrieval" and resp.fallbacks == ["ranker_timeout"] and len(resp.items) == 10
        )
        assert elapsed < 0.6  # the 80 ms ranking budget, not the ranker's second
        assert ticks >= 5  # the loop kept running other tasks while the request waited
    finally:
        rec.close()


def test_missing_or_failing_index_serves_popular(loaded_bundle, tmp_path: Path, monkeypatch) -> None:
    uid = str(loaded_bundle.tables.spec.user_id.values[0])
    no_index = Recommender(loaded_bundle, log_dir=tmp_path)
    monkeypatch.setattr(no_index.bundle, "index", None)
    resp = no_index.recommend(RecommendRequest(user_id=uid, k=10))
    assert (
        resp.served_by.startswith("popular") and resp.fallbacks == ["index_missing"] and len(resp.items) == 10
    )
    assert no_index.health()["index"] is None
    monkeypatch.undo()

    def broken(*args, **kwargs):
        raise RuntimeError("index corrupted")

    monkeypatch.setattr("recstack.serving.stages.search", broken)
    resp = no_index.recommend(RecommendRequest(user_id=uid, k=7))
    assert (
        resp.served_by.startswith("popular")
        and resp.fallbacks == ["retrieval_error"]
        and len(resp.items) == 7
    )
    no_index.close()


def test_a_segment_list_the_user_has_all_seen_falls_through_to_the_global_list(
    loaded_bundle, tmp_path: Path, monkeypatch
) -> None:
    """A small segment's popular list can be all seen (a region whose only user is this one: ML-100K has
    such regions): the fallback then served an empty list. The global list follows the segment's."""
    rec = Recommender(loaded_bundle, log_dir=tmp_path)
    monkeypatch.setattr(rec.bundle, "index", None)
    uid = str(loaded_bundle.tables.spec.user_id.values[3])
    seen = loaded_bundle.seen(loaded_bundle.user_index(uid))
    segments = {**loaded_bundle.popular.segments, "region": {"only-me": np.asarray(seen, dtype=np.int64)}}
    monkeypatch.setattr(rec.bundle.popular, "segments", segments)
    try:
        resp = rec.recommend(RecommendRequest(user_id=uid, k=10, region="only-me"))
        served = ids_to_idx(rec, [i.item_id for i in resp.items])
        assert resp.served_by == "popular_global" and resp.fallbacks == ["index_missing"]
        assert len(served) == 10 and not set(served) & set(seen.tolist())
        # Partly seen: the segment's unseen items first, then the global list's.
        unseen = [int(i) for i in loaded_bundle.popular.global_items if int(i) not in set(seen.tolist())]
        segments["region"]["only-me"] = np.asarray([*seen[:5], *unseen[-3:]], dtype=np.int64)
        resp = rec.recommend(RecommendRequest(user_id=uid, k=9, region="only-me"))  # k=9: not cached
        served = ids_to_idx(rec, [i.item_id for i in resp.items])
        assert resp.served_by == "popular_segment" and not resp.cached and len(served) == 9
        assert set(unseen[-3:]) <= set(served) and not set(served) & set(seen.tolist())
    finally:
        rec.close()


def test_policy_failure_still_answers(loaded_bundle, tmp_path: Path) -> None:
    from recstack.policy.schema import Policy

    policy = Policy.model_validate(
        {
            **loaded_bundle.policy.model_dump(by_alias=True),
            "boosts": [{"attribute": "no_such_column", "values": ["x"], "factor": 2.0}],
        }
    )
    rec = Recommender(loaded_bundle, policy=policy, log_dir=tmp_path)
    resp = rec.recommend(RecommendRequest(user_id=str(loaded_bundle.tables.spec.user_id.values[0]), k=5))
    assert "policy_error" in resp.fallbacks and len(resp.items) == 5
    rec.close()


def test_cache_hits_and_feedback_invalidates(recommender: Recommender) -> None:
    uid = known_users(recommender)[4]
    req = RecommendRequest(user_id=uid, k=10)
    first = recommender.recommend(req)
    second = recommender.recommend(req)
    assert not first.cached and second.cached and second.request_id != first.request_id
    assert [i.item_id for i in second.items] == [i.item_id for i in first.items]
    assert not recommender.recommend(req.model_copy(update={"k": 9})).cached  # k is part of the key
    recommender.feedback(
        FeedbackEvent(user_id=uid, item_id=first.items[0].item_id, event_type="click", timestamp=NOW)
    )
    assert not recommender.recommend(req).cached
    assert recommender.health()["cache_hit_ratio"] > 0


def test_feedback_is_logged_durably_and_bad_events_are_refused(recommender: Recommender) -> None:
    uid = known_users(recommender)[5]
    item = str(recommender.bundle.catalog.item_ids[1])
    acks = [
        recommender.feedback(FeedbackEvent(user_id=uid, item_id=item, event_type=t, timestamp=NOW, value=1.0))
        for t in ("impression", "click", "like")
    ]
    events = list(read_events(recommender.log_dir / FEEDBACK_LOG))
    assert [e["event_id"] for e in events] == [a.event_id for a in acks]
    assert events[1]["event_type"] == "click" and events[1]["user_id"] == uid
    for bad, field in [
        ({"item_id": "no-such-item"}, "item_id"),
        ({"timestamp": "2999-01-01T00:00:00Z"}, "timestamp"),
        ({"timestamp": "1990-01-01T00:00:00Z"}, "timestamp"),
    ]:
        event = FeedbackEvent.model_validate(
            {"user_id": uid, "item_id": item, "event_type": "click", "timestamp": NOW, **bad}
        )
        with pytest.raises(RequestError) as err:
            recommender.feedback(event)
        assert err.value.field == field
    assert len(list(read_events(recommender.log_dir / FEEDBACK_LOG))) == 3  # nothing refused was written
    recommender.recommend(RecommendRequest(user_id=uid))
    logged = list(read_events(recommender.log_dir / RESPONSES_LOG))
    assert logged[-1]["user_id"] == uid and len(logged[-1]["items"]) == 10


def test_experiments_assign_deterministically_and_apply_the_variant(loaded_bundle, tmp_path: Path) -> None:
    config = loaded_bundle.config.model_copy(
        update={
            "experiments": load_serving_config(
                {
                    "experiments": [
                        {
                            "id": "diversity",
                            "surfaces": ["homepage"],
                            "variants": [
                                {"name": "control", "weight": 3},
                                {
                                    "name": "retrieval_only",
                                    "weight": 1,
                                    "use_ranker": False,
                                    "policy": {"name": "plain"},
                                },
                            ],
                        }
                    ]
                }
            ).experiments
        }
    )
    rec = Recommender(loaded_bundle, config=config, log_dir=tmp_path)
    from recstack.serving.experiments import assign

    exp = config.experiments[0]
    shares = [assign(exp, f"user-{i}").name for i in range(8000)]
    assert abs(shares.count("control") / 8000 - 0.75) < 0.02
    assert assign(exp, "user-1").name == assign(exp, "user-1").name
    seen_variants = set()
    for uid in [str(v) for v in loaded_bundle.tables.spec.user_id.values.head(30).to_list()]:
        resp = rec.recommend(RecommendRequest(user_id=uid, k=5))
        variant = resp.experiments[0].variant
        seen_variants.add(variant)
        assert variant == assign(exp, uid).name
        assert (resp.policy, resp.served_by) == (
            ("plain", "retrieval") if variant == "retrieval_only" else ("test", "funnel")
        )
    assert seen_variants == {"control", "retrieval_only"}
    logged = list(read_events(tmp_path / RESPONSES_LOG))
    assert {e["experiments"][0]["variant"] for e in logged} == seen_variants
    rec.close()


def test_similar_items(recommender: Recommender) -> None:
    item = str(recommender.bundle.catalog.item_ids[int(recommender.bundle.popular.global_items[0])])
    for method in ("embedding", "cooccurrence", "blend"):
        resp = recommender.similar(SimilarRequest(item_id=item, k=5, method=method))
        ids = [i.item_id for i in resp.items]
        assert item not in ids and len(ids) == len(set(ids)) and 0 < len(ids) <= 5, method
    with pytest.raises(RequestError) as err:
        recommender.similar(SimilarRequest(item_id="nope"))
    assert err.value.status == 404 and err.value.field == "item_id"


def test_serving_config_errors_name_the_field() -> None:
    with pytest.raises(ServingConfigError, match="limits.max_k"):
        load_serving_config({"limits": {"max_k": 0}})
    with pytest.raises(ServingConfigError, match="both run on surface"):
        load_serving_config(
            {
                "experiments": [
                    {"id": "a", "variants": [{"name": "x", "weight": 1}]},
                    {"id": "b", "surfaces": ["homepage"], "variants": [{"name": "y", "weight": 1}]},
                ]
            }
        )
    assert ServingConfig().budgets.total_ms == 180


def test_load_overrides_are_merged_and_validated(bundle_dir: Path) -> None:
    rec = Recommender.load(bundle_dir, overrides={"cache": {"enabled": False}, "budgets": {"ranking_ms": 5}})
    assert rec.cache is None and rec.config.budgets.ranking_ms == 5 and rec.config.budgets.total_ms == 180
    rec.close()
    with pytest.raises(ServingConfigError, match="budgets.ranking_ms"):
        Recommender.load(bundle_dir, overrides={"budgets": {"ranking_ms": -1}})


def test_served_ranking_features_are_logged_for_a_sampled_share(loaded_bundle, tmp_path: Path) -> None:
    """Monitoring's drift input: the ranker's features of the served items, exactly those it scored."""
    from recstack.monitoring.join import served_features
    from recstack.ranking.features import DENSE_FEATURES

    users = known_users(Recommender(loaded_bundle, log_dir=tmp_path / "probe"))[:60]
    # The share is drawn per request (user, surface, served time): 20 requests at 0.3 fall outside
    # 10-50 % once in 40 runs (binomial); 10 rounds of them (the cache is off, so each is a new request)
    # make that about one in a billion.
    for rate, logs, rounds in ((1.0, tmp_path / "all", 1), (0.3, tmp_path / "some", 10)):
        config = load_serving_config(
            {
                **loaded_bundle.config.model_dump(by_alias=True),
                "feature_log_rate": rate,
                "cache": {"enabled": False},
            }
        )
        rec = Recommender(loaded_bundle, config=config, log_dir=logs)
        requests = users * rounds
        try:
            for u in requests:
                rec.recommend(RecommendRequest(user_id=u, k=5))
        finally:
            rec.close()
        frame = served_features(logs)
        logged = frame["request_id"].n_unique()
        if rate == 1.0:
            assert logged == len(requests) and frame.height == 5 * len(requests)
            assert frame.select(DENSE_FEATURES).to_numpy().shape[1] == len(DENSE_FEATURES)
            assert np.isfinite(frame.select(DENSE_FEATURES).to_numpy()).all()
            # They are the ranker's view of each pair: the user's history length, the candidate's
            # retrieval rank (>= 1) and its score gap to the best candidate (<= 0).
            user_of = {r["request_id"]: r["user_id"] for r in read_events(logs / RESPONSES_LOG)}
            offsets = loaded_bundle.sequences.offsets
            for row in frame.iter_rows(named=True):
                u = loaded_bundle.user_index(user_of[row["request_id"]])
                assert row["user_log_history"] == pytest.approx(
                    np.log1p(offsets[u + 1] - offsets[u]), rel=1e-5
                )
                assert row["retrieval_log_rank"] >= np.log1p(1) - 1e-6 and row["retrieval_score_gap"] <= 1e-6
        else:
            assert 0.1 * len(requests) <= logged <= 0.5 * len(requests)  # about 30 %, chosen by request id
