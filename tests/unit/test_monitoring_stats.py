"""Experiment read-out, exposure Gini and the dashboard's loader on hand-made inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recstack.monitoring.dashboard import load_summary, verdict_sentence
from recstack.monitoring.experiments import read_out, sample_size, two_proportion_p_value, wilson_interval
from recstack.monitoring.quality import gini, personalization


def counts(rows: list[tuple[str, str, int, int]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["experiment", "variant", "trials", "successes"], orient="row")


def test_verdicts() -> None:
    out = read_out(
        counts(
            [
                ("e", "control", 10_000, 1_000),
                ("e", "better", 10_000, 1_200),  # +20 %: clearly significant
                ("e", "worse", 10_000, 800),
                ("e", "same", 10_000, 1_010),
            ]
        )
    )
    verdicts = dict(zip(out["variant"], out["verdict"], strict=True))
    assert verdicts == {
        "better": "significant gain",
        "control": "control",
        "same": "not yet",
        "worse": "harmful",
    }
    same = out.filter(pl.col("variant") == "same").row(0, named=True)
    assert same["needed"] == sample_size(0.1, 0.05) and same["remaining"] == same["needed"] - 10_000
    assert "not significant yet" in verdict_sentence(same, 0.05)
    assert abs(out.filter(pl.col("variant") == "better")["lift"][0] - 0.2) < 1e-12


def test_statistics_against_known_values() -> None:
    low, high = wilson_interval(50, 100)
    assert abs(low - 0.4038) < 1e-3 and abs(high - 0.5962) < 1e-3
    assert abs(two_proportion_p_value(100, 1000, 130, 1000) - 0.0359) < 1e-3
    # 10 % base, 10 % relative lift, alpha 0.05, power 0.8: about 14,750 per arm (standard tables).
    assert 14_000 < sample_size(0.10, 0.10) < 15_500
    with pytest.raises(ValueError, match="no variant 'nope'"):
        read_out(counts([("e", "a", 10, 1)]), control="nope")


def test_gini_and_personalization() -> None:
    assert gini(np.array([5, 5, 5, 5])) == 0.0
    assert abs(gini(np.array([0, 0, 0, 12])) - 0.75) < 1e-12
    rng = np.random.default_rng(0)
    same = np.tile(np.arange(10), (6, 1))
    assert personalization(same, np.arange(6), 50, rng) == 0.0
    disjoint = np.arange(60).reshape(6, 10)
    assert personalization(disjoint, np.arange(6), 50, rng) == 1.0


def test_loader_reports_missing_and_corrupt_files(tmp_path: Path) -> None:
    assert load_summary(tmp_path / "nothing").empty
    summary = tmp_path / "summary"
    summary.mkdir()
    (summary / "status.json").write_text("{not json")
    (summary / "windows.parquet").write_bytes(b"garbage")
    s = load_summary(tmp_path)
    assert s.status is None and "windows" not in s.tables
    assert any("status.json is unreadable" in p for p in s.problems)
    assert any("windows.parquet is unreadable" in p for p in s.problems)
    assert any("drift.parquet is missing" in p for p in s.problems)


def test_logs_with_a_torn_tail_are_read_and_corrupt_lines_named(tmp_path: Path) -> None:
    from recstack.monitoring.join import read_feedback

    good = '{"event_id":"a","user_id":"1","item_id":"2","event_type":"click","timestamp":"2024-01-01T00:00:00Z"}\n'
    (tmp_path / "feedback.jsonl").write_text(good + '{"event_id":"b","user_id":"1","it')  # a crash mid-write
    assert read_feedback(tmp_path)["event_id"].to_list() == ["a"]
    (tmp_path / "feedback.jsonl").write_text(good + "not json\n" + good)
    with pytest.raises(ValueError, match="feedback.jsonl:2 is not a JSON record"):
        read_feedback(tmp_path)
