"""Shared by every page: the cached summary, the empty state and problem messages."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from recstack.monitoring.dashboard import Summary, load_summary, monitoring_dir

HERE = Path(__file__).resolve().parent


@st.cache_data(ttl=60, show_spinner="Loading monitoring data...")
def _load(root: str, stamp: float) -> Summary:
    return load_summary(root)


def summary() -> Summary:
    """The summary (cached; re-read when the status file changes, or after a minute)."""
    root = monitoring_dir(HERE)
    status = root / "summary" / "status.json"
    stamp = status.stat().st_mtime if status.exists() else 0.0
    return _load(str(root), stamp)


def require_data(title: str) -> Summary | None:
    """The page title, then the summary, or None after an empty state explaining how to get data."""
    st.title(title)
    s = summary()
    if s.empty:
        st.info(
            "No monitoring data yet. Run the monitor stage (`dvc repro monitor`) to replay traffic and "
            f"write reports, or point `RECSTACK_MONITORING_DIR` at a monitor output (looked in `{s.root}`)."
        )
        return None
    for p in s.problems:
        st.warning(f"Part of the monitoring data is missing or unreadable: {p}")
    if s.status:
        st.caption(
            f"{s.status['requests']:,} requests in {s.status['windows']} windows of {s.status['window']} "
            f"({s.status['first'][:16]} to {s.status['last'][:16]}), generated {s.status['generated_at'][:19]}"
        )
    return s


def embed_report(path: Path | None, label: str) -> None:
    """An Evidently HTML report inside an expander, with a download button; a message if missing."""
    if path is None:
        st.warning(f"The {label} is missing for this window.")
        return
    try:
        html = path.read_text()
    except OSError as exc:
        st.error(f"The {label} ({path}) is unreadable: {exc}")
        return
    st.download_button(f"Download the {label}", html, file_name=path.name, mime="text/html")
    with st.expander(f"Full Evidently {label}"):
        st.components.v1.html(html, height=900, scrolling=True)
