"""The dashboard in a real browser: `streamlit run` on 127.0.0.1, Debian's headless Chromium (installed by
scripts/test_services.sh) loads every page and screenshots it; a page that shows an exception, or an empty
chart where there is data, fails the test. Screenshots go to $RECSTACK_SCREENSHOTS when set."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from recstack.monitoring.dashboard import MONITORING_DIR_ENV
from recstack.monitoring.simulate import Drift
from tests.browser import capture_pages, find_chromium, launch_chromium, streamlit_app
from tests.conftest import PROJECT_ROOT
from tests.service.test_monitor import monitored

pytest.importorskip("playwright")
APP = PROJECT_ROOT / "monitoring" / "app.py"
PATHS = ("", "quality", "drift", "experiments", "catalog")  # "" = the default page (Overview)


@pytest.fixture(scope="module")
def drifted(bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return monitored(bundle_dir, tmp_path_factory.mktemp("browser"), Drift(kind="broken_feature", start=0.5))[
        "root"
    ]


def test_every_page_renders_in_chromium(drifted: Path, tmp_path: Path) -> None:
    chromium = find_chromium()
    if chromium is None:  # scripts/test_services.sh installs it: `make test` never gets here
        pytest.skip("no chromium: run scripts/test_services.sh")
    shots = Path(os.environ.get("RECSTACK_SCREENSHOTS") or tmp_path)
    with (
        streamlit_app(APP, env={MONITORING_DIR_ENV: str(drifted)}) as base,
        launch_chromium(chromium) as browser,
    ):
        pages = capture_pages(browser, base, PATHS, shots)
    for path, check in pages.items():
        name = path or "overview"
        assert not check.exceptions, f"{name}: {check.exceptions}"
        assert not check.page_not_found and check.ok, f"{name}: {check}"
        assert check.charts >= 1 and not check.has_empty_chart, f"{name}: {check.chart_details}"
        assert check.screenshot.stat().st_size > 20_000, name  # a rendered page, not a blank one
    assert pages["drift"].error_alerts and "Drift detected" in pages["drift"].error_alerts[0]
