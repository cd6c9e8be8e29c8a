"""Drift: which features moved, by how much, when; drill-down and the full Evidently reports."""

import altair as alt
import polars as pl
import streamlit as st
from common import embed_report, require_data

from recstack.monitoring.dashboard import drift_matrix

s = require_data("Drift")
if s is not None:
    drift, windows = s.table("drift"), s.table("windows")
    if drift is None or windows is None:
        st.warning("No drift table yet: the monitor stage wrote no windows.")
    else:
        flagged = windows.filter(pl.col("drifted"))
        if flagged.height:
            cols = drift.filter(pl.col("drifted")).select("group", "column").unique().sort("group", "column")
            st.error(
                f"Drift detected in {flagged.height} of {windows.height} windows. Drifted: "
                + ", ".join(f"{g}: {c}" for g, c in cols.iter_rows())
            )
        else:
            st.success(f"No drift in any of the {windows.height} windows.")
        m = drift_matrix(drift)
        if m.is_empty():
            st.info("No window had enough rows for a drift verdict yet.")
        else:
            st.subheader("Score / threshold by window (above 1 = drifted)")
            st.altair_chart(
                alt.Chart(
                    m.select(
                        pl.col("window").dt.strftime("%Y-%m-%d %H:%M").alias("day"),
                        "window",
                        "check",
                        "ratio",
                        "score",
                        "threshold",
                        "drifted",
                    )
                )
                .mark_rect()
                .encode(
                    x=alt.X("day:O", title="window"),
                    y=alt.Y("check:N", title=None),
                    color=alt.Color(
                        "ratio:Q",
                        scale=alt.Scale(domain=[0, 1, 3], range=["#e8f5e9", "#fff59d", "#c62828"]),
                        title="score / threshold",
                    ),
                    tooltip=[
                        "window:T",
                        "check:N",
                        alt.Tooltip("score:Q", format=".3f"),
                        "threshold:Q",
                        "drifted:N",
                    ],
                ),
                use_container_width=True,
            )
            st.subheader("Drill down")
            check = st.selectbox(
                "Column", m.sort("ratio", descending=True)["check"].unique(maintain_order=True).to_list()
            )
            one = m.filter(pl.col("check") == check)
            line = (
                alt.Chart(one.select("window", "score", "drifted"))
                .mark_line(point=True)
                .encode(
                    x="window:T",
                    y=alt.Y("score:Q", title=f"{check} drift score"),
                    tooltip=["window:T", alt.Tooltip("score:Q", format=".3f"), "drifted:N"],
                )
            )
            rule = (
                alt.Chart(one.select(pl.col("threshold").first()))
                .mark_rule(color="red", strokeDash=[4, 4])
                .encode(y="threshold:Q")
            )
            st.altair_chart(line + rule, use_container_width=True)
        st.subheader("A window in detail")
        # Newest first, and the newest window with a verdict preselected (the last one is often partial).
        options = windows["report_dir"].to_list()[::-1]
        judged = windows.filter(pl.any_horizontal(pl.col("^.*_drift$").is_not_null()))["report_dir"].to_list()
        pick = st.selectbox("Window", options, index=options.index(judged[-1]) if judged else 0)
        row = windows.filter(pl.col("report_dir") == pick).row(0, named=True)
        detail = drift.filter(pl.col("window") == row["window"]).select(
            "group", "column", "score", "threshold", "drifted", "note"
        )
        st.dataframe(detail, hide_index=True)
        group = st.radio("Report", ["features", "context", "engagement"], horizontal=True)
        verdict = detail.filter(pl.col("group") == group)
        if verdict.height and verdict["column"].is_null().all():
            st.info(f"No {group} drift verdict for this window: {verdict['note'][0]}.")
        else:
            embed_report(s.report(pick, f"drift_{group}"), f"{group} drift report")
