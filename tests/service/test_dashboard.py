"""The Streamlit dashboard through Streamlit's AppTest: every page with simulated data, with injected drift
(the drift page flags it), and with no data at all; never an exception."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from recstack.monitoring.dashboard import MONITORING_DIR_ENV
from recstack.monitoring.simulate import Drift
from tests.conftest import PROJECT_ROOT
from tests.service.test_monitor import monitored

APP = PROJECT_ROOT / "monitoring" / "app.py"
PAGES = ("overview", "quality", "drift", "experiments", "catalog")


@pytest.fixture(scope="module")
def drifted(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return monitored(bundle_dir, tmp_path_factory.mktemp("drifted"), Drift(kind="broken_feature", start=0.5))[
        "root"
    ]


@pytest.fixture(scope="module")
def undrifted(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return monitored(bundle_dir, tmp_path_factory.mktemp("undrifted"), Drift())["root"]


def page(root: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv(MONITORING_DIR_ENV, str(root))
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.run()
    if name != "overview":
        at.switch_page(f"views/{name}.py")
        at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.title[0].value == name.capitalize()
    return at


def text(at: AppTest) -> str:
    parts = [
        e.value
        for kind in ("error", "warning", "info", "success", "caption", "markdown")
        for e in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)


@pytest.mark.parametrize("name", PAGES)
def test_every_page_with_simulated_data(name: str, undrifted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page(undrifted, name, monkeypatch)
    assert not at.warning, [w.value for w in at.warning]  # nothing missing
    assert "No monitoring data yet" not in text(at)
    if name == "overview":
        labels = [m.label for m in at.metric]
        assert "CTR (from feedback)" in labels and "p95 latency (ms)" in labels and len(labels) == 6
        assert at.success and "No drift" in at.success[0].value
    if name == "drift":
        assert at.success and "No drift in any" in at.success[0].value
        assert at.dataframe  # the chosen window's verdicts
    if name == "experiments":
        assert "control is the control" in text(at) and at.dataframe
        quality = at.dataframe[-1].value  # the variants' list quality beside their CTR
        assert sorted(quality["variant"]) == ["control", "no_mmr"] and (quality["ndcg@10"] >= 0).all()
    if name == "catalog":
        assert at.metric[0].label == "Items shown at least once"
    if name == "quality":
        assert at.selectbox and at.dataframe


def test_drift_page_flags_injected_drift(drifted: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page(drifted, "drift", monkeypatch)
    assert at.error, "the drift page shows no alert"
    alert = at.error[0].value
    assert "Drift detected" in alert and "context: device" in alert and "context: region" in alert
    overview = page(drifted, "overview", monkeypatch)
    assert overview.error and "Drift flagged" in overview.error[0].value


@pytest.mark.parametrize("name", PAGES)
def test_every_page_without_data(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    at = page(tmp_path / "no-monitoring-yet", name, monkeypatch)
    assert at.info and "No monitoring data yet" in at.info[0].value


def test_unreadable_files_are_named_not_raised(
    undrifted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    copy = tmp_path / "monitoring"
    shutil.copytree(undrifted, copy)
    (copy / "summary" / "drift.parquet").write_bytes(b"not parquet")
    at = page(copy, "drift", monkeypatch)
    assert any("drift.parquet is unreadable" in w.value for w in at.warning)
    assert any("No drift table yet" in w.value for w in at.warning)
