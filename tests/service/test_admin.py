"""Admin operations behind a token, client endpoints behind an API key, and forgetting a user end to end
(online state, cached results, the deletion list, and the next ingest)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from recstack.data.ingest import ingest, read_deletion_list
from recstack.serving.auth import check_admin, check_api_key
from recstack.serving.eventlog import DELETION_LIST, read_events
from recstack.serving.schemas import FeedbackEvent, RecommendRequest

TOKEN = "s3cret-admin-token-for-tests"
ADMIN_ROUTES = ["/admin/flush_cache", "/admin/reload", "/admin/materialize"]


def test_admin_needs_the_token(service_client, monkeypatch, caplog) -> None:
    c = service_client
    monkeypatch.delenv("RECSTACK_ADMIN_TOKEN", raising=False)
    r = c.post("/admin/flush_cache", json={})
    assert r.status_code == 403 and "disabled" in r.json()["error"]  # no token configured: nobody
    monkeypatch.setenv("RECSTACK_ADMIN_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    for route in [*ADMIN_ROUTES, "/admin/forget"]:
        body = {"user_id": "1"} if route == "/admin/forget" else {}
        r = c.post(route, json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (route, r.text)
        r = c.post(route, json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 403 and TOKEN not in r.text, (route, r.text)
    r = c.post("/admin/flush_cache", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["flushed"] is True
    assert TOKEN not in caplog.text  # never logged


def test_forget_removes_state_and_cache_and_feeds_the_next_ingest(
    service_client, monkeypatch, small_features: Path, tmp_path: Path
) -> None:
    c = service_client
    monkeypatch.setenv("RECSTACK_ADMIN_TOKEN", TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    user = "3"
    first = c.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert first["served_by"] == "funnel"
    assert c.post("/recommend", json={"user_id": user, "k": 5}).json()["cached"] is True
    r = c.post("/admin/forget", json={"user_id": user}, headers=auth)
    assert r.status_code == 200 and r.json()["forgotten"] and r.json()["cache_entries_removed"] >= 1
    after = c.post("/recommend", json={"user_id": user, "k": 5}).json()
    # No history, no id embedding: the cold-start path, at once (not from the cache).
    assert after["cached"] is False and after["fallbacks"] == ["cold_start_user"]
    listed = [e["user_id"] for e in read_events(c.log_dir / DELETION_LIST)]
    assert user in listed and read_deletion_list(c.log_dir / DELETION_LIST) >= {user}
    # The next ingest leaves their events out.
    raw = small_features.parent / "raw"
    out = ingest("synthetic", raw, tmp_path / "ingest", deletion_list=c.log_dir / DELETION_LIST)
    users = pl.read_parquet(out.out_dir / "interactions.parquet")["user_id"].cast(pl.String)
    assert user not in set(users.to_list()) and out.report.clean_stats["interactions"] > 0
    baseline = ingest("synthetic", raw, tmp_path / "ingest_all")
    assert user in set(
        pl.read_parquet(baseline.out_dir / "interactions.parquet")["user_id"].cast(pl.String).to_list()
    )


def test_forget_on_the_engine_reaches_other_workers(recommender, loaded_bundle) -> None:
    from recstack.serving.engine import Recommender

    other = Recommender(loaded_bundle, log_dir=recommender.log_dir)
    try:
        user = str(loaded_bundle.tables.spec.user_id.values[20])
        assert other.recommend(RecommendRequest(user_id=user, k=5)).served_by == "funnel"
        recommender.forget_user(user)
        other._tailers[0].run_once()  # its tailer's next round (every 0.1 s)
        assert other.online.histories([user])[0].items.size == 0
        assert other.recommend(RecommendRequest(user_id=user, k=5)).fallbacks == ["cold_start_user"]
        # A restarted worker forgets them too (the deletion list is read at start).
        recommender.feedback(
            FeedbackEvent(
                user_id=user,
                item_id=str(loaded_bundle.catalog.item_ids[5]),
                event_type="skip",
                timestamp=datetime.now(UTC),
            )
        )
    finally:
        other.close()
    restarted = Recommender(loaded_bundle, log_dir=recommender.log_dir)
    try:
        assert user in restarted.forgotten and restarted.online.histories([user])[0].items.size == 0
    finally:
        restarted.close()


def test_auth_checks_compare_in_constant_time_and_name_no_secret() -> None:
    env = {"RECSTACK_ADMIN_TOKEN": TOKEN, "KEYS": "k1, k2"}
    assert check_admin({"authorization": f"Bearer {TOKEN}"}, env) is None
    assert check_admin({"authorization": f"Basic {TOKEN}"}, env).status == 403
    assert check_api_key({}, None, env) is None  # not required
    assert check_api_key({}, "KEYS", env).status == 401
    assert check_api_key({"x-api-key": "k3"}, "KEYS", env).status == 403
    assert check_api_key({"x-api-key": "k2"}, "KEYS", env) is None
    assert check_api_key({"x-api-key": "k1"}, "NO_SUCH_ENV", env).status == 403
    for refusal in (
        check_admin({"authorization": "Bearer x"}, env),
        check_api_key({"x-api-key": "x"}, "KEYS", env),
    ):
        assert TOKEN not in refusal.error and "k1" not in refusal.error
