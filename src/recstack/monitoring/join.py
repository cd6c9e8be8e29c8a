"""Served traffic as tables: responses, their impressions and the feedback on them, joined and windowed.

The service logs every response (``responses.jsonl``: the list it served, with model versions, policy,
experiment variants, fallbacks and latency) and every feedback event (``feedback.jsonl``). Monitoring
reads them here: one row per impression (a served item at a position), with the feedback that reacted to
it, and the time window, model version and experiment variant it belongs to.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from recstack.serving.eventlog import FEEDBACK_LOG, RESPONSES_LOG, read_events

# Feedback that counts as a positive reaction to an impression (the service's engagement events).
POSITIVE = ("click", "watch", "like", "add_to_cart", "purchase", "share")

RESPONSE_SCHEMA = {
    "request_id": pl.String,
    "at": pl.String,
    "user_id": pl.String,
    "surface": pl.String,
    "k": pl.Int64,
    "device": pl.String,
    "region": pl.String,
    "items": pl.List(pl.String),
    "scores": pl.List(pl.Float64),
    "served_by": pl.String,
    "fallbacks": pl.List(pl.String),
    "model_version": pl.String,
    "ranker_version": pl.String,
    "policy": pl.String,
    "cached": pl.Boolean,
    "latency_ms": pl.Float64,
    "experiment": pl.String,
    "variant": pl.String,
}
FEEDBACK_SCHEMA = {
    "event_id": pl.String,
    "request_id": pl.String,
    "user_id": pl.String,
    "item_id": pl.String,
    "event_type": pl.String,
    "timestamp": pl.String,
    "position": pl.Int64,
}


def read_responses(log_dir: str | Path) -> pl.DataFrame:
    """One row per logged response (``RESPONSE_SCHEMA``; the first experiment assignment, if any)."""
    rows = []
    for r in read_events(Path(log_dir) / RESPONSES_LOG):
        exp = (r.get("experiments") or [{}])[0]
        rows.append(
            {
                **{k: r.get(k) for k in RESPONSE_SCHEMA if k not in ("experiment", "variant")},
                "user_id": str(r.get("user_id")),
                "scores": [float("nan") if s is None else float(s) for s in r.get("scores") or []],
                "experiment": exp.get("experiment"),
                "variant": exp.get("variant"),
            }
        )
    frame = pl.DataFrame(rows, schema=RESPONSE_SCHEMA)
    return frame.with_columns(pl.col("at").str.to_datetime(time_zone="UTC"))


def read_feedback(log_dir: str | Path) -> pl.DataFrame:
    """One row per logged feedback event (``FEEDBACK_SCHEMA``)."""
    rows = [
        {k: (None if r.get(k) is None else (r[k] if k == "position" else str(r[k]))) for k in FEEDBACK_SCHEMA}
        for r in read_events(Path(log_dir) / FEEDBACK_LOG)
    ]
    frame = pl.DataFrame(rows, schema=FEEDBACK_SCHEMA)
    return frame.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC"))


def impressions(log_dir: str | Path, window: str = "1h") -> pl.DataFrame:
    """One row per served item with its feedback and window.

    Columns: the response's fields (without the lists), ``position`` (1-based), ``item_id``, ``score``,
    ``clicked`` (a positive event on this item of this response), ``skipped``, ``feedback`` (whether the
    response got any feedback at all) and ``window`` (``at`` truncated to ``window``, a Polars duration
    such as ``"1h"`` or ``"1d"``).
    """
    responses = read_responses(log_dir)
    feedback = read_feedback(log_dir).filter(pl.col("request_id").is_not_null())
    shown = (
        responses.with_columns(pl.int_ranges(1, pl.col("items").list.len() + 1).alias("position"))
        .explode(["items", "scores", "position"])
        .rename({"items": "item_id", "scores": "score"})
        .drop_nulls("item_id")
    )
    reactions = feedback.group_by(["request_id", "item_id"]).agg(
        pl.col("event_type").is_in(list(POSITIVE)).any().alias("clicked"),
        (pl.col("event_type") == "skip").any().alias("skipped"),
    )
    answered = feedback.select("request_id").unique().with_columns(pl.lit(True).alias("feedback"))
    return (
        shown.join(reactions, on=["request_id", "item_id"], how="left")
        .join(answered, on="request_id", how="left")
        .with_columns(
            pl.col("clicked").fill_null(False),
            pl.col("skipped").fill_null(False),
            pl.col("feedback").fill_null(False),
            pl.col("at").dt.truncate(window).alias("window"),
        )
    )


def window_summary(shown: pl.DataFrame, catalog_size: int, by: tuple[str, ...] = ("window",)) -> pl.DataFrame:
    """Per group of :func:`impressions` (default per window): requests, impressions, CTR of the responses
    that got feedback, latency percentiles, fallback rate and catalog coverage."""
    per_request = shown.group_by(["request_id", *by]).agg(
        pl.col("clicked").any().alias("clicked"),
        pl.col("feedback").first(),
        pl.col("latency_ms").first(),
        (pl.col("served_by").first() != "funnel").alias("fallback"),
    )
    requests = per_request.group_by(list(by)).agg(
        pl.len().alias("requests"),
        (pl.col("clicked").sum() / pl.col("feedback").sum()).alias("ctr"),
        pl.col("latency_ms").quantile(0.5).alias("p50_latency_ms"),
        pl.col("latency_ms").quantile(0.95).alias("p95_latency_ms"),
        pl.col("fallback").mean().alias("fallback_rate"),
    )
    items = shown.group_by(list(by)).agg(
        pl.len().alias("impressions"),
        (pl.col("item_id").n_unique() / catalog_size).alias("coverage"),
    )
    return requests.join(items, on=list(by)).sort(list(by))


def served_features(log_dir: str | Path) -> pl.DataFrame:
    """The ranking features of served items, for the responses that logged them (``feature_log_rate``):
    ``request_id``, ``at``, ``position``, ``item_id``, ``score`` and one column per ``DENSE_FEATURES``."""
    from recstack.ranking.features import DENSE_FEATURES

    rows = []
    for r in read_events(Path(log_dir) / RESPONSES_LOG):
        feats = r.get("features")
        if not feats:
            continue
        for pos, (item, score, values) in enumerate(
            zip(r["items"], r["scores"], feats, strict=True), start=1
        ):
            if values is None:
                continue
            if len(values) != len(DENSE_FEATURES):
                raise ValueError(
                    f"response {r['request_id']} logged {len(values)} features; this version has "
                    f"{len(DENSE_FEATURES)} ({list(DENSE_FEATURES)})"
                )
            rows.append([r["request_id"], r["at"], pos, str(item), score, *values])
    schema = {
        "request_id": pl.String,
        "at": pl.String,
        "position": pl.Int64,
        "item_id": pl.String,
        "score": pl.Float64,
        **dict.fromkeys(DENSE_FEATURES, pl.Float64),
    }
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    return frame.with_columns(pl.col("at").str.to_datetime(time_zone="UTC"))
