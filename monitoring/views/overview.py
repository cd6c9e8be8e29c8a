"""Overview: the few numbers a product manager checks, each with its status and trend."""

import altair as alt
import polars as pl
import streamlit as st
from common import require_data

from recstack.monitoring.dashboard import HEADLINE_LABELS, STATUS_ICONS, cutoff

s = require_data("Overview")
if s is not None:
    headline = (s.status or {}).get("headline", {})
    if not headline:
        st.warning("The status file holds no headline numbers.")
    cols = st.columns(3)
    for n, (key, label) in enumerate(HEADLINE_LABELS.items()):
        h = headline.get(key, {})
        value, previous = h.get("value"), h.get("previous")
        pct = key in ("ctr", "coverage", "fallback_rate")
        fmt = (lambda v: f"{v:.1%}") if pct else (lambda v: f"{v:.3g}")
        delta = None if value is None or previous is None else value - previous
        with cols[n % 3]:
            st.metric(
                label,
                "n/a" if value is None else fmt(value),
                delta=None if delta is None else (f"{delta:+.1%}" if pct else f"{delta:+.3g}"),
                delta_color="inverse" if key in ("p95_latency_ms", "fallback_rate") else "normal",
                border=True,
            )
            bound = h.get("min") if h.get("min") is not None else h.get("max")
            side = "at least" if h.get("min") is not None else "at most"
            st.caption(f"{STATUS_ICONS.get(h.get('status'), h.get('status'))} (target: {side} {bound})")
    windows = s.table("windows")
    drifted = (s.status or {}).get("drifted_windows", 0)
    if drifted:
        st.error(f"Drift flagged in {drifted} window(s): see the Drift page.")
    else:
        st.success("No drift flagged in any window.")
    if windows is not None:
        st.subheader("Trends")
        k = cutoff(windows)
        trend = windows.select(
            "window",
            pl.col("ctr").alias("CTR"),
            pl.col(f"coverage@{k}").alias("coverage"),
            pl.col(f"diversity@{k}").alias("diversity"),
            pl.col("fallback_rate").alias("fallback rate"),
        ).unpivot(index="window", variable_name="metric")
        st.altair_chart(
            alt.Chart(trend)
            .mark_line(point=True)
            .encode(
                x=alt.X("window:T", title="window"),
                y=alt.Y("value:Q"),
                color="metric:N",
                tooltip=["window:T", "metric:N", alt.Tooltip("value:Q", format=".3f")],
            ),
            use_container_width=True,
        )
        st.altair_chart(
            alt.Chart(windows.select("window", "p95_latency_ms", "requests"))
            .mark_bar()
            .encode(
                x="window:T",
                y=alt.Y("p95_latency_ms:Q", title="p95 latency (ms)"),
                tooltip=["window:T", "p95_latency_ms:Q", "requests:Q"],
            ),
            use_container_width=True,
        )
