"""The ``monitor`` stage: served logs in, per-window drift and quality reports and the dashboard's tables out.

For each time window of the service's logs (``responses.jsonl``, ``feedback.jsonl``):

* three drift checks (Evidently, :mod:`recstack.monitoring.drift`), each a report and a verdict per column:
  ``features``: the ranking features and scores of served items against what the service serves on its
  training snapshot; ``context``: the request fields clients send (device, region) against the first
  windows of traffic; ``engagement``: the categories users engage with against the snapshot's;
* a quality report (:mod:`recstack.monitoring.quality`): precision / recall / NDCG from feedback,
  diversity, novelty, popularity bias, personalization, coverage; and CTR, latency and fallbacks.

Written under ``out_dir``: ``reports/<window>/`` (HTML and JSON per report) and ``summary/`` (the compact
tables the dashboard reads: ``windows``, ``drift``, ``versions``, ``experiments``, ``catalog``,
``categories`` as Parquet, and ``status.json``).
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field

from recstack.data.split import TRAIN, VALID
from recstack.monitoring.drift import DriftResult, feature_drift, reference_features
from recstack.monitoring.experiments import read_out
from recstack.monitoring.join import POSITIVE, request_summary
from recstack.monitoring.layout import DRIFT_GROUPS, REPORTS_DIR, STATUS_FILE, SUMMARY_DIR
from recstack.monitoring.quality import CatalogStats, attributed_engagement, quality_metrics
from recstack.monitoring.report import save as save_report
from recstack.monitoring.report import values_report
from recstack.ranking.features import DENSE_FEATURES


def quality_titles(k: int) -> dict[str, str]:
    """Report titles of the quality numbers (keys as in the windows table) for cut-off ``k``."""
    return {key.replace("@10", f"@{k}"): title.replace("@10", f"@{k}") for key, title in _TITLES.items()}


_TITLES = {
    "requests": "Requests",
    "ctr": "CTR (responses with a positive reaction / responses with feedback)",
    "precision@10": "Precision@10 (engaged items in the list / 10)",
    "recall@10": "Recall@10 (engaged items in the list / engaged items)",
    "ndcg@10": "NDCG@10 from feedback",
    "hit_rate@10": "Hit rate@10",
    "mrr@10": "MRR@10",
    "diversity@10": "Intra-list diversity@10 (categories)",
    "novelty@10": "Novelty@10 (-log2 share of users)",
    "avg_popularity@10": "Average popularity@10 (snapshot interactions)",
    "coverage@10": "Catalog coverage@10",
    "tail_share": "Long-tail share of impressions",
    "exposure_gini": "Gini of item exposure",
    "personalization": "Personalization (1 - overlap of two users' lists)",
    "p95_latency_ms": "p95 latency (ms)",
    "fallback_rate": "Fallback rate",
}
FEATURE_COLUMNS: tuple[str, ...] = (*DENSE_FEATURES, "score")
CONTEXT_COLUMNS: tuple[str, ...] = ("device", "region")


# Features that measure traffic volume and time since the snapshot move whenever traffic does, drift or
# not: a replay refills the snapshot's last days (which a per-user leave-last-out split leaves thin), and
# live traffic runs at its own rate. Against the training reference an undrifted replay moved them by up to
# 1.6 (default data) and 2.9 (the tests' small data) reference deviations, so they are left out of the
# verdict by default (``drift.exclude``); every other feature stayed under 0.62.
VOLUME_FEATURES = ("pop_1d", "pop_7d", "pop_30d", "pop_all", "days_since_first", "days_since_last")


class DriftSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    threshold: float = Field(0.75, gt=0, description="numeric columns: Wasserstein distance / reference std")
    categorical_threshold: float = Field(
        0.1, gt=0, description="categorical columns: Jensen-Shannon distance"
    )
    drift_share: float = Field(0.05, gt=0, le=1, description="share of a check's columns drifted to flag it")
    per_column: dict[str, float] = Field(
        default_factory=lambda: {"category": 0.25}, description="thresholds of single columns"
    )
    exclude: list[str] = Field(
        default_factory=lambda: list(VOLUME_FEATURES), description="features left out of the verdict"
    )
    min_rows: int = Field(100, ge=10, description="fewer rows in a window: no verdict (too little data)")
    context_reference_windows: int = Field(
        1, ge=1, description="windows of traffic the context is compared to"
    )


class StatusThresholds(BaseModel):
    """What the dashboard's Overview checks each headline number against (ok / warn / alert)."""

    model_config = ConfigDict(extra="forbid")
    ctr_min: float = 0.05
    offline_ndcg_min: float = 0.1
    coverage_min: float = 0.05
    diversity_min: float = 0.5
    p95_latency_ms_max: float = 200.0
    fallback_rate_max: float = 0.05
    warn_margin: float = Field(0.1, ge=0, description="within this relative margin of a threshold: warn")


class ExperimentSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(0.05, gt=0, lt=1)
    power: float = Field(0.8, gt=0, lt=1)
    mde: float = Field(0.05, gt=0, description="relative CTR lift an experiment must be able to detect")


class MonitorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    window: str = Field("1h", description="Polars duration of a window: 15m, 1h, 1d...")
    k: int = Field(10, ge=1)
    horizon: str = Field("30m", description="organic engagement is credited to the latest list this recent")
    reference_users: int = Field(1000, ge=10, description="users served in-process for the feature reference")
    reference_splits: tuple[str, ...] = (TRAIN, VALID)
    quality_sample: int = Field(5000, ge=10, description="lists / user pairs scored for pairwise metrics")
    head_interaction_share: float = Field(0.5, ge=0, le=1)
    seed: int = 0
    drift: DriftSettings = Field(default_factory=DriftSettings)
    status: StatusThresholds = Field(default_factory=StatusThresholds)
    experiments: ExperimentSettings = Field(default_factory=ExperimentSettings)


@dataclass
class MonitorResult:
    windows: pl.DataFrame
    drift: pl.DataFrame
    status: dict[str, Any]
    seconds: dict[str, float]


def _stamp(window: datetime) -> str:
    return window.strftime("%Y%m%dT%H%M")


def _reference_users(bundle_dir: Path, splits: tuple[str, ...], n: int, seed: int) -> list[str]:
    """Users drawn in proportion to their snapshot activity (heavy users send more requests)."""
    features = bundle_dir / "features"
    events = pl.read_parquet(features / "interactions.parquet", columns=["user_id", "split"]).filter(
        pl.col("split").is_in(list(splits))
    )
    if events.is_empty():
        raise ValueError(f"{features} holds no events of splits {list(splits)}: no drift reference")
    return events.sample(n=n, with_replacement=True, seed=seed)["user_id"].cast(pl.String).to_list()


def _drift_rows(
    window: datetime, group: str, result: DriftResult | None, note: str, report: str
) -> list[dict]:
    if result is None:
        return [
            {
                "window": window,
                "group": group,
                "column": None,
                "score": None,
                "threshold": None,
                "drifted": None,
                "report": None,
                "note": note,
            }
        ]
    return [
        {**r, "window": window, "group": group, "report": report, "note": note}
        for r in result.table.iter_rows(named=True)
    ]


def _check(
    group: str,
    reference: pl.DataFrame,
    current: pl.DataFrame,
    cfg: DriftSettings,
    numeric: list[str],
    categorical: list[str],
    out: Path,
    window: datetime,
) -> tuple[list[dict], bool | None]:
    """One drift check of one window: its report files, its rows of the drift table, its verdict."""
    if current.height < cfg.min_rows or reference.height < cfg.min_rows:
        note = f"too little data ({current.height} rows; {cfg.min_rows} needed)"
        return _drift_rows(window, group, None, note, ""), None
    result = feature_drift(
        reference,
        current,
        numeric,
        threshold=cfg.threshold,
        drift_share=cfg.drift_share,
        per_column_threshold=cfg.per_column or None,
        categorical=categorical,
        categorical_threshold=cfg.categorical_threshold,
    )
    paths = result.save(out, f"drift_{group}")
    note = ", ".join(
        f"{c} {s:.2f}"
        for c, s in result.table.filter(pl.col("drifted")).select("column", "score").iter_rows()
    )
    rel = str(paths["html"].relative_to(out.parent.parent))
    return _drift_rows(window, group, result, note or "no column drifted", rel), result.drifted


def _status(
    value: float | None, low: float | None = None, high: float | None = None, margin: float = 0.1
) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "no data"
    if low is not None:
        return "alert" if value < low else "warn" if value < low * (1 + margin) else "ok"
    assert high is not None
    return "alert" if value > high else "warn" if value > high * (1 - margin) else "ok"


def _headline(windows: pl.DataFrame, cfg: StatusThresholds, offline_ndcg: float | None) -> dict[str, Any]:
    """The Overview's numbers: the latest window's value, the one before (trend) and a status each."""
    last = windows.row(-1, named=True) if windows.height else {}
    prev = windows.row(-2, named=True) if windows.height > 1 else {}
    m = cfg.warn_margin
    spec = {
        "ctr": ("ctr", cfg.ctr_min, None),
        "coverage": (f"coverage@{_k(windows)}", cfg.coverage_min, None),
        "diversity": (f"diversity@{_k(windows)}", cfg.diversity_min, None),
        "p95_latency_ms": ("p95_latency_ms", None, cfg.p95_latency_ms_max),
        "fallback_rate": ("fallback_rate", None, cfg.fallback_rate_max),
    }
    out: dict[str, Any] = {}
    for name, (col, low, high) in spec.items():
        v, p = last.get(col), prev.get(col)
        out[name] = {"value": v, "previous": p, "status": _status(v, low, high, m), "min": low, "max": high}
    out["offline_ndcg@10"] = {
        "value": offline_ndcg,
        "previous": None,
        "status": _status(offline_ndcg, cfg.offline_ndcg_min, None, m),
        "min": cfg.offline_ndcg_min,
        "max": None,
    }
    return out


def _k(windows: pl.DataFrame) -> int:
    cols = [c for c in windows.columns if c.startswith("coverage@")]
    return int(cols[0].split("@")[1]) if cols else 10


_VERSION_KEYS = ("model_version", "ranker_version", "variant")
_LABELS = ("model_version", "ranker_version", "experiment", "variant", "served_by", *CONTEXT_COLUMNS)
_RESPONSE_FIELDS = {
    "request_id": pl.String,
    "at": pl.String,
    "user_id": pl.String,
    "device": pl.String,
    "region": pl.String,
    "items": pl.List(pl.String),
    "scores": pl.List(pl.Float64),
    "served_by": pl.String,
    "model_version": pl.String,
    "ranker_version": pl.String,
    "latency_ms": pl.Float64,
    "experiments": pl.List(pl.Struct({"experiment": pl.String, "variant": pl.String})),
    "features": pl.List(pl.List(pl.Float64)),
}


@dataclass
class _Logs:
    """The logs after one streaming pass: light per-response fields and the feedback in memory; each
    window's lists and logged features on disk (``work/<kind>/<window>/<chunk>.parquet``)."""

    meta: pl.DataFrame
    feedback: pl.DataFrame
    work: Path

    def part(self, kind: str, window: datetime) -> pl.DataFrame | None:
        files = sorted((self.work / kind / _stamp(window)).glob("*.parquet"))
        return pl.concat([pl.read_parquet(f) for f in files]) if files else None


def _stream_logs(log_dir: Path, work: Path, window: str) -> _Logs:
    """Read the responses log once, in chunks, so memory holds one chunk of lists at a time."""
    from recstack.monitoring.join import FEEDBACK_SCHEMA, iter_log
    from recstack.serving.eventlog import FEEDBACK_LOG, RESPONSES_LOG

    metas = []
    for n, chunk in enumerate(iter_log(log_dir / RESPONSES_LOG, _RESPONSE_FIELDS)):
        first = pl.col("experiments").list.first()
        chunk = chunk.with_columns(
            pl.col("at").str.to_datetime(time_zone="UTC"),
            first.struct.field("experiment").alias("experiment"),
            first.struct.field("variant").alias("variant"),
        ).with_columns(pl.col("at").dt.truncate(window).alias("window"))
        metas.append(
            chunk.select(
                "request_id",
                "user_id",
                "at",
                "window",
                "latency_ms",
                *(pl.col(c).cast(pl.Categorical) for c in _LABELS),
            )
        )
        logged = chunk.filter(pl.col("features").list.len() > 0)
        # A window's lists carry what its quality tables group by, so scoring never joins the whole day.
        lists = chunk.select(
            "window",
            "request_id",
            "user_id",
            "items",
            *(pl.col(c).cast(pl.Categorical) for c in _VERSION_KEYS),
        )
        for (w,), part in lists.group_by(["window"]):
            d = work / "items" / _stamp(w)
            d.mkdir(parents=True, exist_ok=True)
            part.drop("window").write_parquet(d / f"{n:06d}.parquet")
        if logged.height:
            rows = (
                logged.select("window", "request_id", "items", "scores", "features")
                .with_columns(pl.int_ranges(1, pl.col("items").list.len() + 1).alias("position"))
                .explode(["items", "scores", "features", "position"])
                .drop_nulls("features")
            )
            bad = rows.filter(pl.col("features").list.len() != len(DENSE_FEATURES))
            if bad.height:
                raise ValueError(
                    f"response {bad['request_id'][0]} logged {bad['features'].list.len()[0]} features; this "
                    f"version has {len(DENSE_FEATURES)} ({list(DENSE_FEATURES)})"
                )
            rows = rows.select(
                "window",
                pl.col("scores").alias("score"),
                *(pl.col("features").list.get(i).alias(name) for i, name in enumerate(DENSE_FEATURES)),
            )
            for (w,), part in rows.group_by(["window"]):
                d = work / "features" / _stamp(w)
                d.mkdir(parents=True, exist_ok=True)
                part.drop("window").write_parquet(d / f"{n:06d}.parquet")
    meta = pl.concat(metas) if metas else pl.DataFrame()
    frames = [
        f.with_columns(
            pl.col("timestamp").str.to_datetime(time_zone="UTC"), pl.col("event_type").cast(pl.Categorical)
        )
        for f in iter_log(
            log_dir / FEEDBACK_LOG, {k: v for k, v in FEEDBACK_SCHEMA.items() if k != "event_id"}
        )
    ]
    feedback = pl.concat(frames) if frames else pl.DataFrame(schema=FEEDBACK_SCHEMA).drop("event_id")
    return _Logs(meta=meta, feedback=feedback, work=work)


def run_monitor(
    log_dir: str | Path,
    bundle_dir: str | Path,
    out_dir: str | Path,
    config: MonitorConfig | None = None,
    offline_metrics: dict[str, Any] | None = None,
    work_dir: str | Path | None = None,
) -> MonitorResult:
    """Monitor the service logs in ``log_dir`` (served from ``bundle_dir``) into ``out_dir``.

    ``offline_metrics``: the ``evaluate`` stage's metrics (the live model's offline NDCG@10 on the
    Overview). Earlier outputs in ``out_dir/reports`` and ``out_dir/summary`` are replaced. ``work_dir``
    receives the drift reference (``reference_features.parquet``: what the checks compared with).

    Memory is bounded by a window, not the log: the responses are read once in chunks; each window's
    lists are kept on disk until it is scored. Feedback is credited to responses of any window.

    Raises:
        ValueError: the logs are unreadable, or hold no responses.
    """
    cfg = config or MonitorConfig()
    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    log_dir, bundle_dir, out = Path(log_dir), Path(bundle_dir), Path(out_dir)
    if work_dir is not None:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="recstack-monitor-", dir=work_dir) as tmp:
        logs = _stream_logs(log_dir, Path(tmp), cfg.window)
        if logs.meta.is_empty():
            raise ValueError(
                f"{log_dir} holds no responses: nothing to monitor (is it the service's log dir?)"
            )
        stats = CatalogStats.from_bundle(bundle_dir, cfg.reference_splits, cfg.head_interaction_share)
        seconds["read"] = time.perf_counter() - t0

        t = time.perf_counter()
        meta, feedback = logs.meta, logs.feedback
        tied = feedback.filter(pl.col("request_id").is_not_null())
        reactions = tied.group_by(["request_id", "item_id"]).agg(
            pl.col("event_type").cast(pl.String).is_in(list(POSITIVE)).any().alias("clicked")
        )
        per_request = (
            meta.select("request_id", "window", "experiment", *_VERSION_KEYS, "latency_ms", "served_by")
            .join(
                tied.group_by("request_id").agg(
                    pl.lit(True).alias("feedback"),
                    pl.col("event_type").cast(pl.String).is_in(list(POSITIVE)).any().alias("clicked"),
                ),
                on="request_id",
                how="left",
            )
            .with_columns(pl.col("feedback").fill_null(False), pl.col("clicked").fill_null(False))
        )
        served = request_summary(per_request)
        version_ctr = request_summary(per_request, ("window", *_VERSION_KEYS)).select(
            "window", *_VERSION_KEYS, "ctr"
        )
        engaged = attributed_engagement(
            meta.select("request_id", "user_id", "at"),
            feedback.with_columns(pl.col("event_type").cast(pl.String)),
            POSITIVE,
            cfg.horizon,
        )
        seconds["join"] = time.perf_counter() - t

        # ---- references (once)
        t = time.perf_counter()
        reference = reference_features(
            bundle_dir,
            _reference_users(bundle_dir, cfg.reference_splits, cfg.reference_users, cfg.seed),
            cfg.k,
            cfg.reference_splits,
        )
        if work_dir is not None:
            reference.write_parquet(Path(work_dir) / "reference_features.parquet")
        context = meta.select("window", *(pl.col(c).cast(pl.String) for c in CONTEXT_COLUMNS))
        window_list = sorted(served["window"].to_list())
        first = window_list[: cfg.drift.context_reference_windows]
        context_reference = context.filter(pl.col("window").is_in(first))
        engaged_items = engaged.join(meta.select("request_id", "window"), on="request_id")
        engaged_items = engaged_items.with_columns(
            pl.Series("category", stats.category_of[stats.index(engaged_items["item_id"])], pl.String)
        )
        engagement_reference = stats.interactions.sample(
            n=min(stats.interactions.height, 50_000), seed=cfg.seed
        )
        seconds["reference"] = time.perf_counter() - t

        titles = quality_titles(cfg.k)
        offline_reference = {
            k: v
            for k, v in ((offline_metrics or {}).get("funnel_reranked") or {}).items()
            if isinstance(v, int | float) and k in titles
        }
        for sub in (REPORTS_DIR, SUMMARY_DIR):
            shutil.rmtree(out / sub, ignore_errors=True)
        drift_rows: list[dict] = []
        verdicts: list[dict] = []
        quality_rows: list[dict] = []
        version_rows: list[dict] = []
        exposures: list[pl.DataFrame] = []
        seconds["quality"] = seconds["drift"] = 0.0
        for window in window_list:
            # ---- quality of the window's lists
            t = time.perf_counter()
            lists = logs.part("items", window)
            assert lists is not None  # every window comes from some response
            shown = (
                lists.with_columns(pl.int_ranges(1, pl.col("items").list.len() + 1).alias("position"))
                .explode(["items", "position"])
                .rename({"items": "item_id"})
                .drop_nulls("item_id")
                .join(reactions, on=["request_id", "item_id"], how="left")
                .with_columns(pl.col("clicked").fill_null(False))
            )
            engaged_here = engaged_items.filter(pl.col("window") == window)
            q = quality_metrics(shown, engaged_here, stats, cfg.k, cfg.quality_sample, cfg.seed)
            row = served.filter(pl.col("window") == window).row(0, named=True)
            quality_rows.append({**row, "impressions": shown.height, **q})
            for (mv, rv, variant), group in shown.group_by(list(_VERSION_KEYS)):
                version_rows.append(
                    {
                        "window": window,
                        "model_version": mv,
                        "ranker_version": rv,
                        "variant": variant,
                        **quality_metrics(group, engaged_here, stats, cfg.k, cfg.quality_sample, cfg.seed),
                    }
                )
            exposures.append(
                shown.group_by("item_id").agg(
                    pl.len().alias("impressions"), pl.col("clicked").sum().alias("clicks")
                )
            )
            by_position = (
                shown.group_by("position")
                .agg(pl.len().alias("impressions"), pl.col("clicked").mean().alias("ctr"))
                .sort("position")
            )
            where = out / REPORTS_DIR / _stamp(window)
            where.mkdir(parents=True, exist_ok=True)
            values = quality_rows[-1]
            snapshot = values_report(
                {k: values[k] for k in titles if k in values},
                {k: float(v) for k, v in offline_reference.items() if k in values},
                {"CTR by position": by_position.to_dicts()},
                titles={
                    k: f"{t} (offline: the model's evaluate value)" if k in offline_reference else t
                    for k, t in titles.items()
                },
            )
            save_report(snapshot, where, "quality")
            seconds["quality"] += time.perf_counter() - t

            # ---- drift of the window
            t = time.perf_counter()
            features = logs.part("features", window)
            flags: dict[str, Any] = {"window": window}
            checks = {
                "features": (
                    reference,
                    features if features is not None else reference.clear(),
                    [c for c in FEATURE_COLUMNS if c not in cfg.drift.exclude],
                    [],
                ),
                "context": (
                    context_reference,
                    context.filter(pl.col("window") == window),
                    [],
                    list(CONTEXT_COLUMNS),
                ),
                "engagement": (
                    engagement_reference,
                    engaged_items.filter(pl.col("window") == window),
                    [],
                    ["category"],
                ),
            }
            for group_name, (ref, cur, numeric, categorical) in checks.items():
                rows, drifted = _check(group_name, ref, cur, cfg.drift, numeric, categorical, where, window)
                drift_rows += rows
                flags[f"{group_name}_drift"] = drifted
            verdicts.append(flags)
            seconds["drift"] += time.perf_counter() - t

    windows = pl.DataFrame(quality_rows).sort("window")
    drift = pl.DataFrame(
        drift_rows,
        schema={
            "window": pl.Datetime("us", "UTC"),
            "group": pl.String,
            "column": pl.String,
            "score": pl.Float64,
            "threshold": pl.Float64,
            "drifted": pl.Boolean,
            "report": pl.String,
            "note": pl.String,
        },
    )
    windows = windows.join(
        pl.DataFrame(verdicts, schema_overrides={f"{g}_drift": pl.Boolean for g in DRIFT_GROUPS}), on="window"
    ).with_columns(
        pl.any_horizontal(*(pl.col(f"{g}_drift").fill_null(False) for g in DRIFT_GROUPS)).alias("drifted"),
        pl.col("window").dt.strftime("%Y%m%dT%H%M").alias("report_dir"),
    )

    # ---- experiments, catalog
    t = time.perf_counter()
    counts = (
        per_request.drop_nulls("experiment")
        .group_by(["experiment", "variant"])
        .agg(
            pl.len().alias("requests"),
            pl.col("feedback").sum().alias("trials"),
            (pl.col("clicked") & pl.col("feedback")).sum().alias("successes"),
        )
        .with_columns(pl.col("experiment").cast(pl.String), pl.col("variant").cast(pl.String))
    )
    e = cfg.experiments
    experiments = read_out(counts, alpha=e.alpha, power=e.power, mde=e.mde)
    exposure = (
        pl.concat(exposures).group_by("item_id").agg(pl.col("impressions").sum(), pl.col("clicks").sum())
    )
    idx = np.arange(1, stats.n_items + 1)
    catalog = (
        pl.DataFrame(
            {
                "item_id": stats.items.values.cast(pl.String),
                "category": stats.category_of[idx].astype(str),
                "tail": stats.tail[idx],
                "snapshot_interactions": stats.item_count[idx],
            }
        )
        .join(exposure, on="item_id", how="left")
        .with_columns(pl.col("impressions").fill_null(0), pl.col("clicks").fill_null(0))
    )
    categories = (
        catalog.group_by(["category", "tail"])
        .agg(
            pl.len().alias("items"),
            pl.col("impressions").sum(),
            pl.col("clicks").sum(),
            (pl.col("impressions") == 0).sum().alias("never_shown"),
        )
        .sort(["category", "tail"])
    )
    seconds["catalog"] = time.perf_counter() - t

    offline = None
    if offline_metrics:
        offline = (offline_metrics.get("funnel_reranked") or offline_metrics.get("funnel") or {}).get(
            "ndcg@10"
        )
    summary = out / SUMMARY_DIR
    summary.mkdir(parents=True, exist_ok=True)
    tables = {
        "windows": windows,
        "drift": drift,
        "versions": (
            pl.DataFrame(version_rows)
            .with_columns(pl.col(c).cast(pl.String) for c in _VERSION_KEYS)
            .join(
                version_ctr.with_columns(pl.col(c).cast(pl.String) for c in _VERSION_KEYS),
                on=["window", *_VERSION_KEYS],
                how="left",
                nulls_equal=True,
            )
            .sort("window")
            if version_rows
            else pl.DataFrame()
        ),
        "experiments": experiments,
        "catalog": catalog,
        "categories": categories,
    }
    for name, table in tables.items():
        table.write_parquet(summary / f"{name}.parquet")
    seconds["total"] = time.perf_counter() - t0
    status = {
        "generated_at": datetime.now(UTC).isoformat(),
        "log_dir": str(log_dir),
        "bundle": str(bundle_dir),
        "models": json.loads((bundle_dir / "bundle.json").read_text()).get("models", {}),
        "window": cfg.window,
        "windows": windows.height,
        "requests": int(windows["requests"].sum()),
        "first": windows["window"].min().isoformat(),
        "last": windows["window"].max().isoformat(),
        "drifted_windows": int(windows["drifted"].sum()),
        "headline": _headline(windows, cfg.status, offline),
        "thresholds": cfg.model_dump(mode="json"),
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
    (summary / STATUS_FILE).write_text(json.dumps(status, indent=2, default=str))
    return MonitorResult(windows=windows, drift=drift, status=status, seconds=seconds)
