"""The monitor stage's core on replays of the small test bundle: an undrifted replay is not flagged, an
injected client bug is, in the windows after it began; quality, experiments and catalog tables hold up."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from recstack.monitoring.dashboard import load_summary
from recstack.monitoring.monitor import DriftSettings, MonitorConfig, run_monitor
from recstack.monitoring.replay import replay, snapshot_pace
from recstack.monitoring.simulate import Drift, SimulationConfig
from recstack.serving.eventlog import RESPONSES_LOG, read_events

EXPERIMENTS = [
    {
        "id": "diversity",
        "variants": [
            {"name": "control", "weight": 1},
            {"name": "no_mmr", "weight": 1, "policy": {"name": "no_mmr", "diversity": {"method": "none"}}},
        ],
    }
]


def pace(bundle_dir: Path) -> tuple[datetime, int]:
    """The replay's start (the snapshot's end, up to a window boundary) and a window of 60 requests at
    the snapshot's own event rate (what a replay runs at by default)."""
    end, rate = snapshot_pace(bundle_dir, ("train", "valid"))
    seconds = math.ceil(60 / rate)
    start = datetime.fromtimestamp(math.ceil(end.timestamp() / seconds) * seconds, tz=UTC)
    return start, seconds


def monitored(bundle_dir: Path, root: Path, drift: Drift) -> dict:
    """240 held-out events (4 windows of 60), every response logging its features."""
    start, seconds = pace(bundle_dir)
    sim = SimulationConfig(max_events=240, rate=60 / seconds, start=start, drift=drift, noise=0.1)
    summary = replay(bundle_dir, root / "logs", sim, feature_log_rate=1.0, experiments=EXPERIMENTS)
    offline = {"funnel_reranked": {"ndcg@10": 0.3}}
    # Windows of 60 requests from tiny models: noisier than the default 100+ rows, so a looser threshold.
    drift_settings = DriftSettings(min_rows=30, threshold=1.0)
    config = MonitorConfig(window=f"{seconds}s", reference_users=100, drift=drift_settings)
    result = run_monitor(
        root / "logs", bundle_dir, root / "monitoring", config, offline, work_dir=root / "work"
    )
    return {"replay": summary, "result": result, "root": root / "monitoring", "start": start}


@pytest.fixture(scope="module")
def plain(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return monitored(bundle_dir, tmp_path_factory.mktemp("plain"), Drift())


@pytest.fixture(scope="module")
def broken(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return monitored(bundle_dir, tmp_path_factory.mktemp("broken"), Drift(kind="broken_feature", start=0.5))


def test_replay_is_served_on_the_simulated_clock(plain: dict) -> None:
    summary = plain["replay"]
    assert summary["requests"] == summary["responses"] == 240 and not any(
        k.startswith("error") for k in summary
    )
    assert summary["organic"] == 240 - summary["hits"]  # every missed held-out item is watched anyway
    windows = plain["result"].windows
    assert windows.height >= 4 and windows["requests"].sum() == 240


def test_undrifted_replay_is_not_flagged(plain: dict) -> None:
    result = plain["result"]
    assert result.status["drifted_windows"] == 0, result.drift.filter(pl.col("drifted"))
    assert result.drift["drifted"].drop_nulls().len() > 0  # verdicts were given (enough rows)


def test_injected_client_bug_is_flagged_and_named(broken: dict) -> None:
    result = broken["result"]
    flags = result.windows.drop_nulls("context_drift")["context_drift"].to_list()
    assert not flags[0] and flags[-1]  # the bug starts half-way through the replay
    assert flags == sorted(flags)  # and stays
    named = result.drift.filter(pl.col("drifted"))
    assert set(named.filter(pl.col("group") == "context")["column"]) == {"device", "region"}
    assert (named["score"] > named["threshold"]).all()
    report = broken["root"] / result.drift.filter(pl.col("drifted"))["report"][0]
    assert report.is_file() and report.stat().st_size > 10_000  # the full Evidently report


def test_quality_tables_and_reports(plain: dict) -> None:
    root, windows = plain["root"], plain["result"].windows
    for col in ("ndcg@10", "precision@10", "recall@10", "diversity@10", "novelty@10", "coverage@10"):
        assert windows[col].is_between(0, 1e9).all(), col
    assert ((windows["ndcg@10"] >= 0) & (windows["ndcg@10"] <= 1)).all()
    assert ((windows["personalization"] >= 0) & (windows["personalization"] <= 1)).all()
    for d in windows["report_dir"]:
        html = root / "reports" / d / "quality.html"
        assert html.stat().st_size > 10_000
        names = [
            m["metric_name"]
            for m in json.loads((root / "reports" / d / "quality.json").read_text())["metrics"]
        ]
        assert any("NDCG@10" in n for n in names)
    summary = load_summary(root)
    assert not summary.problems and summary.status["headline"]["offline_ndcg@10"]["value"] == 0.3
    exp = summary.tables["experiments"]
    assert set(exp["variant"]) == {"control", "no_mmr"} and exp["trials"].sum() == 240
    assert set(exp["verdict"]) <= {"control", "significant gain", "harmful", "not yet"}
    catalog = summary.tables["catalog"]
    assert catalog["impressions"].sum() == 2400 and (catalog["impressions"] == 0).any()
    assert (plain["root"].parent / "work" / "reference_features.parquet").is_file()


def test_empty_logs_are_refused(bundle_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    with pytest.raises(ValueError, match="no responses"):
        run_monitor(tmp_path / "logs", bundle_dir, tmp_path / "out")


def test_replay_never_writes_into_existing_logs(bundle_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "responses.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="not empty"):
        replay(bundle_dir, tmp_path, SimulationConfig(max_events=5))
    assert (tmp_path / "responses.jsonl").read_text() == "{}\n"


def test_a_replay_logs_the_same_responses_and_feature_sample_every_run(
    bundle_dir: Path, plain: dict, tmp_path: Path
) -> None:
    """Run again, the plain replay serves the same lists and logs the features of the same responses (a
    share, drawn by user, surface and simulated time), so the monitor's verdicts repeat: the worker's own
    log follower no longer applies an event twice now and then, and no wall-clock budget cuts a stage."""
    start, seconds = pace(bundle_dir)
    runs = []
    for n, rate in enumerate((1.0, 0.3, 0.3)):
        sim = SimulationConfig(max_events=240, rate=60 / seconds, start=start, drift=Drift(), noise=0.1)
        log_dir = plain["root"].parent / "logs" if n == 0 else tmp_path / f"again{n}"
        if n:
            replay(bundle_dir, log_dir, sim, feature_log_rate=rate, experiments=EXPERIMENTS)
        runs.append(list(read_events(log_dir / RESPONSES_LOG)))
    first, again, third = runs
    assert len(first) == len(again) == 240
    for a, b, c in zip(first, again, third, strict=True):
        assert a["items"] == b["items"] == c["items"] and a["scores"] == b["scores"] == c["scores"]
        assert a["at"] == b["at"] and a["experiments"] == b["experiments"]
        assert b["features"] == c["features"]  # the same sample...
        assert b["features"] in (None, a["features"])  # ...of the same rows
    logged = sum(r["features"] is not None for r in again)
    assert 0.15 * 240 < logged < 0.45 * 240
