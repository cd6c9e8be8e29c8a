"""Real-browser checks of a Streamlit app: headless Debian chromium driven by Playwright.

A helper module for tests, not a test file. The browser is the system ``chromium`` (Debian package,
installed by ``scripts/test_services.sh``); Playwright's own browser download does not work offline, so
it is never used: ``launch_chromium`` passes ``executable_path``.

Typical use::

    with streamlit_app(app, env={"RECSTACK_X": "..."}) as base, launch_chromium() as browser:
        checks = capture_pages(browser, base, ["", "drift"], tmp_path)
        assert not checks["drift"].exceptions and checks["drift"].charts and not checks["drift"].empty_charts
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # playwright is a dev dependency; importing this module must not need it
    from playwright.sync_api import Browser

CHROMIUM_ENV = "RECSTACK_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
# --headless is added by Playwright; it also gives every launch a fresh temporary --user-data-dir.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def find_chromium() -> str | None:
    """Path of a chromium binary: ``$RECSTACK_CHROMIUM`` if set, else the first of CHROMIUM_NAMES on PATH."""
    override = os.environ.get(CHROMIUM_ENV)
    if override:
        return override if os.access(override, os.X_OK) else shutil.which(override)
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _health_ok(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=2) as r:
            return r.status == 200 and r.read().strip() == b"ok"
    except (urllib.error.URLError, OSError):
        return False


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@contextmanager
def streamlit_app(
    app_path: Path,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
    *,
    python: str | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
    extra_args: Iterable[str] = (),
) -> Iterator[str]:
    """Run ``streamlit run APP`` on 127.0.0.1 and yield its base URL (``http://127.0.0.1:PORT``).

    ``env`` is added to (and overrides) ``os.environ``. ``python`` defaults to the running interpreter
    (the project's venv under pytest). Waits until ``/_stcore/health`` answers ``ok`` (RuntimeError with
    the server's output after ``timeout`` s or if it exits); on exit stops the whole process group.
    The file watcher is off: an app edited during a test is not re-run.
    """
    app_path = Path(app_path).resolve()
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = [
        python or sys.executable, "-m", "streamlit", "run", str(app_path),
        "--server.headless", "true",
        "--server.address", "127.0.0.1",
        "--server.port", str(port),
        "--browser.gatherUsageStats", "false",
        "--server.fileWatcherType", "none",
        *extra_args,
    ]  # fmt: skip
    full_env = {**os.environ, **(env or {})}
    # output to a file, not a pipe: a chatty app cannot block on it
    with tempfile.TemporaryFile(mode="w+b") as log:
        yield from _run_until_stopped(cmd, cwd or app_path.parent, full_env, base, log, timeout)


def _run_until_stopped(
    cmd: list[str], cwd: Path, env: dict, base: str, log: Any, timeout: float
) -> Iterator[str]:
    proc = subprocess.Popen(
        cmd,
        cwd=str(cwd),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so everything it spawned is stopped with it
    )

    def output() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")[-8000:]

    try:
        deadline = time.monotonic() + timeout
        while not _health_ok(base):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"streamlit exited with code {proc.returncode} before answering on {base}:\n{output()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit not healthy on {base} after {timeout:g} s:\n{output()}")
            time.sleep(0.2)
        yield base
    finally:
        _stop_group(proc)


@contextmanager
def launch_chromium(executable: str | None = None, *, headless: bool = True) -> Iterator[Browser]:
    """A Playwright ``Browser`` on the system chromium (RuntimeError if none is found)."""
    from playwright.sync_api import sync_playwright

    executable = executable or find_chromium()
    if executable is None:
        raise RuntimeError("no chromium found: run scripts/test_services.sh (or set $RECSTACK_CHROMIUM)")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, headless=headless, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class ChartCheck:
    kind: str  # "vega" or "plotly"
    width: float
    height: float
    # rendered data items (vega SVG: items in role-mark groups; plotly: traces with points); None: unknown
    # (vega draws on a canvas for large data: only its size is checked then)
    marks: int | None
    empty: bool


@dataclass
class PageCheck:
    url: str
    screenshot: Path
    exceptions: list[str]  # st.exception / uncaught errors, and any other text with "Traceback"
    error_alerts: list[str]  # st.error boxes (not the ones of exceptions)
    chart_details: list[ChartCheck] = field(default_factory=list)
    script_state: str = ""  # stApp's data-test-script-state at capture: "notRunning" when it finished
    # Streamlit's "Page not found" modal: the url_path is unknown (or is the default page's, which is served
    # only at "/") and Streamlit ran the default page instead
    page_not_found: bool = False
    title: str = ""
    load_seconds: float = 0.0

    @property
    def charts(self) -> int:
        return len(self.chart_details)

    @property
    def empty_charts(self) -> int:
        return sum(c.empty for c in self.chart_details)

    @property
    def has_empty_chart(self) -> bool:
        return self.empty_charts > 0

    @property
    def ok(self) -> bool:
        return (
            self.script_state == "notRunning"
            and not self.page_not_found
            and not self.exceptions
            and not self.has_empty_chart
        )


# Finished: the app is connected and has run the script (state "initial" before the first run).
_JS_SCRIPT_DONE = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) return false;
  const state = app.getAttribute('data-test-script-state');
  const conn = app.getAttribute('data-test-connection-state');
  return conn === 'CONNECTED' && (state === 'notRunning' || state === 'compilationError')
    && !document.querySelector('[data-testid="stStatusWidget"]');
}"""

# Charts are lazily-loaded components: right after the run a Suspense placeholder (stSkeleton) stands
# where they will be. Done when no placeholder is left and every chart element has drawn something.
_JS_CHARTS_DRAWN = """() => {
  if (document.querySelector('[data-testid="stSkeleton"], [data-testid="stAppSkeleton"]')) return false;
  const vega = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
  const plotly = [...document.querySelectorAll('[data-testid="stPlotlyChart"]')];
  return vega.every(e => e.querySelector('canvas, svg.marks, .vega-embed svg'))
    && plotly.every(e => e.querySelector('.js-plotly-plot .main-svg'));
}"""

_JS_COLLECT = """() => {
  const txt = e => (e.innerText || '').trim();
  const exc = [...document.querySelectorAll('[data-testid="stException"]')];
  const exceptions = exc.map(txt);
  // "Traceback" anywhere else (st.code, st.text, markdown of a caught error ...)
  const main = document.querySelector('[data-testid="stMain"]') || document.body;
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  const seen = new Set();
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!n.nodeValue.includes('Traceback')) continue;
    const el = n.parentElement;
    if (!el || el.closest('[data-testid="stException"]')) continue;
    const box = el.closest('[data-testid="stElementContainer"]') || el;
    if (!seen.has(box)) { seen.add(box); exceptions.push(txt(box)); }
  }
  // Streamlit's own modal (same markup as st.dialog, told apart by its title): "Script execution error"
  // for a SyntaxError in the app
  for (const d of document.querySelectorAll('[role="dialog"]')) {
    const t = txt(d);
    if (/^(Script execution error|Connection error)/.test(t)) exceptions.push(t);
  }
  const notFound = [...document.querySelectorAll('[role="dialog"]')].some(d => txt(d).startsWith('Page not found'));
  const alerts = [...document.querySelectorAll('[data-testid="stAlertContentError"]')]
    .filter(e => !e.closest('[data-testid="stException"]')).map(txt);
  const charts = [];
  const plotted = new Set();
  const vegaRoots = [...document.querySelectorAll('[data-testid="stVegaLiteChart"]')];
  // outside Streamlit's wrapper too (e.g. st.components.html with vega-embed)
  for (const e of document.querySelectorAll('.vega-embed')) if (!e.closest('[data-testid="stVegaLiteChart"]')) vegaRoots.push(e);
  for (const root of vegaRoots) {
    const g = root.querySelector('canvas, svg');
    const r = g ? g.getBoundingClientRect() : {width: 0, height: 0};
    let marks = null;
    if (g && g.tagName.toLowerCase() === 'svg') {
      marks = 0;
      for (const m of g.querySelectorAll('g.role-mark')) {
        marks += [...m.children].filter(c => c.tagName.toLowerCase() !== 'g' || c.childElementCount > 0)
          .filter(c => c.tagName.toLowerCase() !== 'path' || (c.getAttribute('d') || '').length > 0).length;
      }
    }
    const empty = !g || r.width === 0 || r.height === 0 || marks === 0;
    charts.push({kind: 'vega', width: r.width, height: r.height, marks, empty});
  }
  for (const p of document.querySelectorAll('.js-plotly-plot')) {
    if (plotted.has(p)) continue; plotted.add(p);
    const r = p.getBoundingClientRect();
    // traces with points; a trace whose point arrays are all missing (e.g. an indicator) counts as drawn
    const KEYS = ['x', 'y', 'z', 'values', 'labels', 'lat', 'lon', 'r', 'theta', 'open', 'close'];
    const points = t => {
      const arrs = KEYS.map(k => t[k]).filter(a => a && typeof a.length === 'number' && typeof a !== 'string');
      return arrs.length === 0 ? 1 : Math.max(...arrs.map(a => a.length));
    };
    const marks = Array.isArray(p.data) ? p.data.filter(t => t.visible !== false && points(t) > 0).length
                                        : p.querySelectorAll('.trace').length;
    charts.push({kind: 'plotly', width: r.width, height: r.height, marks,
                 empty: r.width === 0 || r.height === 0 || marks === 0});
  }
  // a Streamlit plotly element that never drew its plot
  for (const e of document.querySelectorAll('[data-testid="stPlotlyChart"]'))
    if (!e.querySelector('.js-plotly-plot')) charts.push({kind: 'plotly', width: 0, height: 0, marks: null, empty: true});
  const app = document.querySelector('[data-testid="stApp"]');
  return {exceptions, alerts, charts, notFound, title: document.title,
          state: app ? app.getAttribute('data-test-script-state') : ''};
}"""

# Streamlit scrolls inside its own container, so a "full page" screenshot of the window shows only the
# viewport: grow the viewport to the content's height first.
_JS_CONTENT_HEIGHT = """() => Math.max(document.documentElement.scrollHeight,
  ...[...document.querySelectorAll('[data-testid="stMain"], [data-testid="stAppViewContainer"], section')]
     .map(e => e.scrollHeight))"""


def capture_page(
    browser: Browser,
    url: str,
    screenshot: Path,
    *,
    timeout: float = 60.0,
    width: int = 1280,
    height: int = 900,
    max_height: int = 12000,
) -> PageCheck:
    """Load ``url`` in a fresh page, wait for Streamlit to finish the script and draw its charts, take a
    full-page screenshot to ``screenshot`` and report exceptions and charts (see PageCheck).

    A page whose script does not finish within ``timeout`` s raises playwright's TimeoutError.
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    start = time.monotonic()
    ms = timeout * 1000
    context = browser.new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        page.goto(url, wait_until="load", timeout=ms)
        page.wait_for_selector('[data-testid="stApp"]', timeout=ms)
        page.wait_for_function(_JS_SCRIPT_DONE, timeout=ms, polling=100)
        with suppress(PlaywrightTimeout):  # a chart that never draws is reported as empty, not as a timeout
            page.wait_for_function(_JS_CHARTS_DRAWN, timeout=min(ms, 15_000), polling=100)
        with suppress(PlaywrightTimeout):
            page.wait_for_load_state("networkidle", timeout=min(ms, 10_000))
        page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        found: dict[str, Any] = page.evaluate(_JS_COLLECT)
        load_seconds = time.monotonic() - start
        content_h = int(page.evaluate(_JS_CONTENT_HEIGHT))
        if content_h > height:
            page.set_viewport_size({"width": width, "height": min(content_h, max_height)})
            page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
        screenshot = Path(screenshot)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True, timeout=ms)
    finally:
        context.close()
    return PageCheck(
        url=url,
        screenshot=screenshot,
        exceptions=found["exceptions"],
        error_alerts=found["alerts"],
        chart_details=[ChartCheck(**c) for c in found["charts"]],
        script_state=found["state"] or "",
        page_not_found=found["notFound"],
        title=found["title"],
        load_seconds=load_seconds,
    )


def page_url(base_url: str, url_path: str = "") -> str:
    """URL of an ``st.navigation`` page by its ``url_path``.

    The default page (``default=True``, or the first one) is served only at "" / "/": asking for it by its
    own url_path gives Streamlit's "Page not found" (``PageCheck.page_not_found``)."""
    return f"{base_url.rstrip('/')}/{url_path.strip('/')}"


def capture_pages(
    browser: Browser, base_url: str, url_paths: Iterable[str], out_dir: Path, **kwargs: Any
) -> dict[str, PageCheck]:
    """``capture_page`` for each ``url_path`` of a multipage app; screenshots go to out_dir/<path>.png
    (``index.png`` for the default page). Keys are the url_paths as given."""
    out_dir = Path(out_dir)
    return {
        p: capture_page(browser, page_url(base_url, p), out_dir / f"{p.strip('/') or 'index'}.png", **kwargs)
        for p in url_paths
    }
