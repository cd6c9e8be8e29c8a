"""Experiments: per-variant CTR with confidence intervals, a plain verdict, and the sample size needed."""

import altair as alt
import streamlit as st
from common import require_data

from recstack.monitoring.dashboard import cutoff, variant_quality, verdict_sentence

s = require_data("Experiments")
if s is not None:
    table = s.table("experiments")
    if table is None:
        st.info("No experiment ran in the monitored traffic (serving.experiments is empty).")
    else:
        mde = ((s.status or {}).get("thresholds", {}).get("experiments") or {}).get("mde", 0.05)
        for (experiment,), rows in table.group_by(["experiment"], maintain_order=True):
            st.subheader(f"Experiment {experiment}")
            for r in rows.iter_rows(named=True):
                text = verdict_sentence(r, mde)
                {"significant gain": st.success, "harmful": st.error, "not yet": st.info}.get(
                    r["verdict"], st.write
                )(text)
            bars = alt.Chart(rows.select("variant", "ctr", "ctr_low", "ctr_high", "trials", "verdict"))
            st.altair_chart(
                bars.mark_point(filled=True, size=120).encode(
                    x=alt.X(
                        "ctr:Q",
                        title="CTR with 95% interval",
                        axis=alt.Axis(format="%"),
                        scale=alt.Scale(zero=False),
                    ),
                    y=alt.Y("variant:N"),
                    color="verdict:N",
                    tooltip=["variant:N", alt.Tooltip("ctr:Q", format=".2%"), "trials:Q", "verdict:N"],
                )
                + bars.mark_rule().encode(x="ctr_low:Q", x2="ctr_high:Q", y="variant:N"),
                use_container_width=True,
            )
            st.dataframe(
                rows.select(
                    "variant",
                    "requests",
                    "trials",
                    "successes",
                    "ctr",
                    "ctr_low",
                    "ctr_high",
                    "lift",
                    "p_value",
                    "verdict",
                    "needed",
                    "remaining",
                ),
                hide_index=True,
            )
            versions, windows = s.table("versions"), s.table("windows")
            if versions is not None and windows is not None:
                st.caption("Quality of each variant's lists (means over the windows, weighted by lists)")
                st.dataframe(
                    variant_quality(versions, rows["variant"].to_list(), cutoff(windows)), hide_index=True
                )
