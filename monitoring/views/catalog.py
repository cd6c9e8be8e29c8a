"""Catalog: exposure of head vs tail items, by category; items never shown."""

import altair as alt
import polars as pl
import streamlit as st
from common import require_data

s = require_data("Catalog")
if s is not None:
    catalog, categories = s.table("catalog"), s.table("categories")
    if catalog is None or categories is None:
        st.warning("No catalog table yet: the monitor stage wrote none.")
    else:
        shown = catalog.filter(pl.col("impressions") > 0)
        tail_items = catalog["tail"].mean()
        tail_impressions = catalog.filter(pl.col("tail"))["impressions"].sum() / max(
            catalog["impressions"].sum(), 1
        )
        c1, c2, c3 = st.columns(3)
        c1.metric("Items shown at least once", f"{shown.height:,} of {catalog.height:,}", border=True)
        c2.metric("Long-tail share of the catalog", f"{tail_items:.0%}", border=True)
        c3.metric("Long-tail share of impressions", f"{tail_impressions:.1%}", border=True)
        data = categories.with_columns(
            pl.when(pl.col("tail")).then(pl.lit("tail")).otherwise(pl.lit("head")).alias("part")
        )
        st.subheader("Impressions by category, head vs tail")
        st.altair_chart(
            alt.Chart(data.select("category", "part", "impressions", "items", "never_shown"))
            .mark_bar()
            .encode(
                x=alt.X("impressions:Q"),
                y=alt.Y("category:N", sort="-x"),
                color=alt.Color(
                    "part:N", scale=alt.Scale(domain=["head", "tail"], range=["#1f77b4", "#ff7f0e"])
                ),
                tooltip=["category:N", "part:N", "impressions:Q", "items:Q", "never_shown:Q"],
            ),
            use_container_width=True,
        )
        st.subheader("Items never shown")
        never = catalog.filter(pl.col("impressions") == 0).sort("snapshot_interactions", descending=True)
        st.caption(f"{never.height:,} items were never recommended, most engaged-with first.")
        st.dataframe(
            never.select("item_id", "category", "tail", "snapshot_interactions").head(500), hide_index=True
        )
