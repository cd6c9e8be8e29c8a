"""The traffic simulator against a real ``bentoml serve`` that holds the train / valid snapshot only: the
held-out events replayed as requests and feedback, with ground truth, and drift injected on request."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import polars as pl
import pytest

from recstack.monitoring.join import impressions, window_summary
from recstack.monitoring.simulate import (
    Drift,
    SimulationConfig,
    apply_drift,
    held_out_events,
    http_poster,
    item_categories,
    simulate,
)
from recstack.serving.eventlog import FEEDBACK_LOG, RESPONSES_LOG, read_events
from recstack.serving.local import bentoml_serve
from tests.conftest import PROJECT_ROOT


def test_drift_injection_changes_only_the_tail(bundle_dir: Path) -> None:
    events = held_out_events(bundle_dir)
    catalog = item_categories(bundle_dir)
    plain = apply_drift(events, catalog, Drift(), seed=0)
    assert plain.height == events.height and not plain["drifted"].any()
    surge = apply_drift(events, catalog, Drift(kind="category_surge", start=0.5, category=None), seed=0)
    head, tail = surge.filter(~pl.col("drifted")), surge.filter(pl.col("drifted"))
    assert head.height == round(0.5 * events.height) and head["item_id"].equals(
        events.head(head.height)["item_id"]
    )
    cats = dict(zip(catalog["item_id"], catalog["categories"].to_list(), strict=True))
    shared = set.intersection(*(set(cats[i]) for i in tail["item_id"]))
    assert len(shared) >= 1  # every surged event is on one category
    mix = apply_drift(events, catalog, Drift(kind="user_mix", user_share=0.1), seed=0)
    tail_users = mix.filter(pl.col("drifted"))["user_id"].unique()
    assert 0 < tail_users.len() <= round(0.1 * events["user_id"].n_unique())
    with pytest.raises(ValueError, match="no item has category"):
        apply_drift(events, catalog, Drift(kind="category_surge", category="no-such-genre"), seed=0)


@pytest.fixture(scope="module")
def replayed(bento_store: Path, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """120 held-out events replayed against a real server (a client bug injected half-way)."""
    tmp = tmp_path_factory.mktemp("replay")
    logs = tmp / "logs"
    env = {
        **os.environ,
        "BENTOML_HOME": str(bento_store),
        "RECSTACK_LOG_DIR": str(logs),
        "RECSTACK_MODEL": "recstack-funnel:test",
        "RECSTACK_SNAPSHOT_SPLITS": "train,valid",  # the replayed test events are the future to it
    }
    events = held_out_events(bundle_dir).head(120)  # cut first: the drift starts half-way through these
    drift = Drift(kind="broken_feature", start=0.5)
    drifted = apply_drift(events, item_categories(bundle_dir), drift, seed=0)
    config = SimulationConfig(k=10, noise=0.1, drift=drift)
    with (
        bentoml_serve("service:Recstack", PROJECT_ROOT / "bentos", env, tmp / "out") as base,
        httpx.Client(base_url=base, timeout=30) as client,
    ):
        summary = simulate(http_poster(client), drifted, config)
    return {"summary": summary, "logs": logs}


def test_replay_against_a_real_server(replayed: dict) -> None:
    summary, logs = replayed["summary"], replayed["logs"]
    assert summary["requests"] == summary["responses"] == 120 and not any(
        k.startswith("error") for k in summary
    )
    assert summary["hits"] > 0  # held-out items do get recommended: the snapshot does not hold them
    assert summary["clicks"] + summary["skips"] == 120
    responses = list(read_events(logs / RESPONSES_LOG))
    feedback = list(read_events(logs / FEEDBACK_LOG))
    tied = [f for f in feedback if f.get("request_id")]
    organic = [f for f in feedback if not f.get("request_id")]
    assert len(responses) == len(tied) == 120
    assert {f["request_id"] for f in tied} == {r["request_id"] for r in responses}
    # A held-out item that was not recommended is still watched (found elsewhere): an organic event.
    assert len(organic) == summary["organic"] == 120 - summary["hits"]
    assert {f["event_type"] for f in organic} == {"watch"}
    devices = [r["device"] for r in responses]
    assert set(devices[60:]) == {"unknown"} and "unknown" not in devices[:60]  # the injected client bug


def test_impressions_join_responses_and_feedback(replayed: dict, loaded_bundle) -> None:
    summary, logs = replayed["summary"], replayed["logs"]
    shown = impressions(logs, window="1h")
    assert shown.height == 120 * 10 and shown["position"].min() == 1 and shown["position"].max() == 10
    assert shown["feedback"].all()
    # Each click is on one impression of its response; each skip on its first item.
    assert shown["clicked"].sum() == summary["clicks"]
    assert shown.filter(pl.col("skipped"))["position"].unique().to_list() == [1]
    table = window_summary(shown, catalog_size=loaded_bundle.catalog.item_ids.shape[0] - 1)
    assert table["requests"].sum() == 120 and table["impressions"].sum() == 1200
    ctr = (table["ctr"] * table["requests"]).sum() / 120
    assert abs(ctr - summary["ctr"]) < 1e-9
    assert 0 < table["coverage"].max() <= 1 and table["fallback_rate"].max() < 0.5
    assert (table["p95_latency_ms"] >= table["p50_latency_ms"]).all()
    by_device = window_summary(shown.with_columns(pl.col("device").fill_null("none")), 120, by=("device",))
    assert "unknown" in by_device["device"].to_list()
