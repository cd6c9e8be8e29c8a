"""Quality by model version and over time (precision / recall / NDCG from feedback, beyond accuracy)."""

import altair as alt
import polars as pl
import streamlit as st
from common import embed_report, require_data

from recstack.monitoring.dashboard import cutoff

s = require_data("Quality")
if s is not None:
    versions, windows = s.table("versions"), s.table("windows")
    if versions is None or windows is None:
        st.warning("No quality table yet: the monitor stage wrote no windows.")
    else:
        k = cutoff(windows)
        metrics = [
            "ctr",
            f"ndcg@{k}",
            f"precision@{k}",
            f"recall@{k}",
            f"hit_rate@{k}",
            f"diversity@{k}",
            f"novelty@{k}",
            f"coverage@{k}",
            "personalization",
            "tail_share",
            "exposure_gini",
        ]
        metric = st.selectbox("Metric", metrics, index=1)
        data = versions.with_columns(
            (
                pl.col("model_version").fill_null("?")
                + " / "
                + pl.col("ranker_version").fill_null("-")
                + pl.col("variant").map_elements(lambda v: f" ({v})", return_dtype=pl.String).fill_null("")
            ).alias("version")
        ).drop_nulls(metric)
        if data.is_empty():
            st.info(f"No window has a value of {metric} yet (it needs feedback).")
        else:
            st.altair_chart(
                alt.Chart(data.select("window", "version", metric, "lists"))
                .mark_line(point=True)
                .encode(
                    x=alt.X("window:T"),
                    y=alt.Y(f"{metric}:Q", title=metric),
                    color=alt.Color("version:N", title="retrieval / ranker (variant)"),
                    tooltip=["window:T", "version:N", alt.Tooltip(f"{metric}:Q", format=".4f"), "lists:Q"],
                ),
                use_container_width=True,
            )
        st.subheader("Per window")
        st.dataframe(
            windows.select("window", "requests", *[m for m in metrics if m in windows.columns]),
            hide_index=True,
        )
        st.subheader("Quality report of a window")
        pick = st.selectbox("Window", windows["report_dir"].to_list()[::-1])
        embed_report(s.report(pick, "quality"), "quality report")
