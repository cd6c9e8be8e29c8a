"""What the Streamlit dashboard (``monitoring/app.py``) reads: the ``monitor`` stage's summary, loaded with
every problem turned into a message rather than an exception, so a page shows an empty state or names the
missing or unreadable file, never a traceback. No Streamlit here: tests and scripts use it as well.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from recstack.monitoring.layout import REPORTS_DIR, STATUS_FILE, SUMMARY_DIR, TABLES

MONITORING_DIR_ENV = "RECSTACK_MONITORING_DIR"
# Streamlit colour markup (no emoji: a server's browser may lack the fonts).
STATUS_ICONS = {
    "ok": ":green[● ok]",
    "warn": ":orange[● warn]",
    "alert": ":red[● alert]",
    "no data": ":gray[● no data]",
}
HEADLINE_LABELS = {
    "ctr": "CTR (from feedback)",
    "offline_ndcg@10": "Offline NDCG@10 (live model)",
    "coverage": "Catalog coverage",
    "diversity": "Diversity",
    "p95_latency_ms": "p95 latency (ms)",
    "fallback_rate": "Fallback rate",
}


def monitoring_dir(default: str | Path | None = None) -> Path:
    """``$RECSTACK_MONITORING_DIR``, else ``default``, else ``./monitoring``."""
    return Path(os.environ.get(MONITORING_DIR_ENV) or default or "monitoring")


@dataclass
class Summary:
    """The summary tables (only those that could be read), the status, and what went wrong."""

    root: Path
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    status: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """No monitoring data at all (the stage has not run yet)."""
        return self.status is None and not self.tables

    def table(self, name: str) -> pl.DataFrame | None:
        t = self.tables.get(name)
        return t if t is not None and t.height else None

    def report(self, report_dir: str, name: str) -> Path | None:
        """The HTML report ``name`` (e.g. ``drift_features``) of a window, if it exists."""
        path = self.root / REPORTS_DIR / report_dir / f"{name}.html"
        return path if path.is_file() else None


def load_summary(root: str | Path) -> Summary:
    """Read ``root/summary`` (see :mod:`recstack.monitoring.monitor`). Never raises: a missing directory is
    an empty summary; a missing or unreadable file is a problem naming it."""
    root = Path(root)
    out = Summary(root=root)
    summary = root / SUMMARY_DIR
    if not summary.is_dir():
        return out
    status = summary / STATUS_FILE
    if status.is_file():
        try:
            out.status = json.loads(status.read_text())
        except (OSError, ValueError) as exc:
            out.problems.append(f"{status} is unreadable ({exc.__class__.__name__}: {exc})")
    else:
        out.problems.append(f"{status} is missing")
    for name in TABLES:
        path = summary / f"{name}.parquet"
        if not path.is_file():
            out.problems.append(f"{path} is missing")
            continue
        try:
            out.tables[name] = pl.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 (any unreadable file is reported, whatever the reason)
            out.problems.append(f"{path} is unreadable ({exc.__class__.__name__}: {exc})")
    return out


def drift_matrix(drift: pl.DataFrame) -> pl.DataFrame:
    """One row per (window, check, column) with a verdict: ``ratio`` = score / threshold (> 1 = drifted)."""
    return drift.drop_nulls("column").with_columns(
        (pl.col("score") / pl.col("threshold")).alias("ratio"),
        (pl.col("group") + ": " + pl.col("column")).alias("check"),
    )


def verdict_sentence(row: dict[str, Any], mde: float) -> str:
    """A plain-language verdict of one experiment variant (a row of the experiments table); ``mde`` is the
    relative lift the experiment is sized for."""
    name, lift, p = row["variant"], row["lift"], row["p_value"]
    if row["verdict"] == "control":
        return f"{name} is the control ({row['trials']:,} responses with feedback, CTR {row['ctr']:.1%})."
    change = f"{lift:+.1%} CTR against the control (p = {p:.3f})"
    if row["verdict"] == "significant gain":
        return f"{name}: significant gain, {change}. It can be rolled out."
    if row["verdict"] == "harmful":
        return f"{name}: harmful, {change}. Consider stopping it."
    return (
        f"{name}: not significant yet, {change}. About {row['remaining']:,} more responses with feedback "
        f"per variant are needed to detect a {mde:.0%} relative change ({row['needed']:,} per variant in all)."
    )


def cutoff(windows: pl.DataFrame) -> int:
    """The K of the windows table's metrics (``ndcg@K``...); 10 if none is there."""
    return next((int(c.split("@")[1]) for c in windows.columns if c.startswith("ndcg@")), 10)


def variant_quality(versions: pl.DataFrame, variants: list[str], k: int) -> pl.DataFrame:
    """Per variant: the quality metrics of its lists over all windows, each window weighted by its lists.
    (Means only: the confidence intervals are the CTR's, in the experiments table.)"""
    metrics = [
        c
        for c in (
            f"ndcg@{k}",
            f"precision@{k}",
            f"recall@{k}",
            f"diversity@{k}",
            f"novelty@{k}",
            f"coverage@{k}",
            "personalization",
            "tail_share",
        )
        if c in versions.columns
    ]
    return (
        versions.filter(pl.col("variant").is_in(variants))
        .group_by("variant")
        .agg(
            pl.col("lists").sum(),
            *(
                (pl.col(m).fill_nan(None) * pl.col("lists")).sum()
                / pl.col("lists").filter(pl.col(m).is_not_nan()).sum()
                for m in metrics
            ),
        )
        .sort("variant")
    )
