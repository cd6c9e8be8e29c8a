"""Drift of the ranking features between a reference (what the service serves on the training snapshot)
and a served window, with Evidently's data-drift preset; the verdict per feature and overall.

The method is the Wasserstein distance normed by the reference's spread for numeric columns, and the
Jensen-Shannon distance for categorical ones: distances, so "drifted" means "moved by more than the
threshold" at any traffic volume. (The p-value tests Evidently
picks for small samples flag trivial shifts once a window holds tens of thousands of rows.)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

DRIFT_METHOD = "wasserstein"
CATEGORICAL_METHOD = "jensenshannon"


@dataclass
class DriftResult:
    """Per feature: ``table`` (``column``, ``score``, ``threshold``, ``drifted``); overall: the share of
    drifted features and whether it reaches ``drift_share``. ``snapshot`` is Evidently's run."""

    table: pl.DataFrame
    share_drifted: float
    drifted: bool
    snapshot: Any

    def drifted_columns(self) -> list[str]:
        return self.table.filter(pl.col("drifted"))["column"].to_list()

    def save(self, out_dir: str | Path, name: str) -> dict[str, Path]:
        """Evidently's HTML and JSON reports, and the verdict table as JSON."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "html": out / f"{name}.html",
            "json": out / f"{name}.json",
            "table": out / f"{name}_table.json",
        }
        # Evidently writes nothing when given a Path: it needs str (see ../shared/notes/platform.md).
        self.snapshot.save_html(str(paths["html"]))
        self.snapshot.save_json(str(paths["json"]))
        self.table.write_json(paths["table"])
        return paths


def feature_drift(
    reference: pl.DataFrame,
    current: pl.DataFrame,
    columns: list[str],
    threshold: float = 0.1,
    drift_share: float = 0.5,
    per_column_threshold: dict[str, float] | None = None,
    categorical: list[str] | None = None,
    categorical_threshold: float = 0.1,
) -> DriftResult:
    """Drift of ``columns`` (numeric) and ``categorical`` (strings) from ``reference`` to ``current``
    (e.g. ``join.served_features`` frames).

    Raises:
        ValueError: a column is missing, or a frame is empty (no verdict can be given).
    """
    from evidently import Report
    from evidently.presets import DataDriftPreset

    categorical = list(categorical or [])
    every = [*columns, *categorical]
    for name, frame in (("reference", reference), ("current", current)):
        if frame.is_empty():
            raise ValueError(f"the {name} data is empty: no drift verdict")
        missing = [c for c in every if c not in frame.columns]
        if missing:
            raise ValueError(f"the {name} data lacks columns {missing}")
    report = Report(
        [
            DataDriftPreset(
                columns=every,
                drift_share=drift_share,
                num_method=DRIFT_METHOD,
                num_threshold=threshold,
                cat_method=CATEGORICAL_METHOD,
                cat_threshold=categorical_threshold,
                per_column_threshold=per_column_threshold,
            )
        ]
    )

    def frame(data: pl.DataFrame):
        # Categorical columns as strings, never missing ("missing" is a category: a client that stops
        # sending a field is exactly what the check is for).
        return data.select(
            *columns, *(pl.col(c).cast(pl.String).fill_null("missing") for c in categorical)
        ).to_pandas()

    snapshot = report.run(current_data=frame(current), reference_data=frame(reference))
    rows = []
    for metric in snapshot.dict()["metrics"]:
        config = metric["config"]
        if config.get("type", "").endswith("ValueDrift"):
            score = float(metric["value"])
            rows.append(
                {
                    "column": config["column"],
                    "score": score,
                    "threshold": float(config["threshold"]),
                    "drifted": score > float(config["threshold"]),
                }
            )
    table = pl.DataFrame(
        rows,
        schema={"column": pl.String, "score": pl.Float64, "threshold": pl.Float64, "drifted": pl.Boolean},
    )
    share = float(table["drifted"].mean()) if table.height else 0.0
    return DriftResult(
        table=table.sort("score", descending=True),
        share_drifted=share,
        drifted=share >= drift_share,
        snapshot=snapshot,
    )


def reference_features(
    bundle_dir: str | Path,
    users: list[str],
    k: int = 10,
    splits: tuple[str, ...] = ("train", "valid"),
    as_of: datetime | None = None,
) -> pl.DataFrame:
    """The ranking features of what the service serves ``users`` on the training snapshot: the same
    engine, policy and feature logging as served traffic (every response logged), in-process, as of
    ``as_of`` (default: the snapshot's end), the present live traffic is served at."""
    from recstack.monitoring.join import served_features
    from recstack.monitoring.replay import snapshot_pace
    from recstack.serving.engine import Recommender
    from recstack.serving.schemas import RecommendRequest

    with tempfile.TemporaryDirectory(prefix="recstack-reference-") as tmp:
        rec = Recommender.load(
            bundle_dir,
            log_dir=tmp,
            splits=splits,
            overrides={"feature_log_rate": 1.0, "cache": {"enabled": False}, "clock": "wall"},
        )
        now = as_of or snapshot_pace(bundle_dir, splits)[0]
        rec.clock = lambda: now
        try:
            for u in users:  # (the batch path logs nothing: this is the served path, response by response)
                rec.recommend(RecommendRequest(user_id=u, k=k))
        finally:
            rec.close()
        return served_features(tmp)
