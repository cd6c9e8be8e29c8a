"""Served traffic as tables: responses, their impressions and the feedback on them, joined and windowed.

The service logs every response (``responses.jsonl``: the list it served, with model versions, policy,
experiment variants, fallbacks and latency) and every feedback event (``feedback.jsonl``). Monitoring
reads them here: one row per impression (a served item at a position), with the feedback that reacted to
it, and the time window, model version and experiment variant it belongs to.
"""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from recstack.serving.eventlog import FEEDBACK_LOG, RESPONSES_LOG

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


def _read_log(path: Path, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """The ``schema`` fields of a whole JSON-lines log (see :func:`iter_log`)."""
    frames = list(iter_log(path, schema, lines=1_000_000))
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def iter_log(
    path: str | Path, schema: dict[str, pl.DataType], lines: int = 200_000
) -> Iterator[pl.DataFrame]:
    """The ``schema`` fields of a JSON-lines log, ``lines`` records at a time (bounded memory for a day of
    traffic). A torn last line (a crash mid-write) is skipped; a corrupt line elsewhere raises
    ``ValueError`` naming it."""
    path = Path(path)
    if not path.exists():
        return
    with path.open("rb") as f:
        first = 1
        while True:
            block = list(itertools.islice(f, lines))
            if not block:
                return
            data = b"".join(block)
            try:
                yield pl.read_ndjson(io.BytesIO(data), schema=schema)
            except (
                pl.exceptions.ComputeError,
                pl.exceptions.SchemaError,
                pl.exceptions.InvalidOperationError,
            ):
                rows = []
                for n, raw in enumerate(block, start=first):
                    if not raw.strip():
                        continue
                    try:
                        r = json.loads(raw)
                    except json.JSONDecodeError as exc:
                        if not raw.endswith(b"\n") and not f.peek(1):  # the file's torn last line
                            break
                        raise ValueError(f"{path}:{n} is not a JSON record ({exc})") from None
                    rows.append({k: r.get(k) for k in schema})
                yield pl.DataFrame(rows, schema=schema, strict=False)
            first += len(block)


_RAW_RESPONSE = {
    **{k: v for k, v in RESPONSE_SCHEMA.items() if k not in ("experiment", "variant")},
    "experiments": pl.List(pl.Struct({"experiment": pl.String, "variant": pl.String})),
}


def read_responses(log_dir: str | Path) -> pl.DataFrame:
    """One row per logged response (``RESPONSE_SCHEMA``; the first experiment assignment, if any)."""
    raw = _read_log(Path(log_dir) / RESPONSES_LOG, _RAW_RESPONSE)
    first = pl.col("experiments").list.first()
    return raw.with_columns(
        pl.col("at").str.to_datetime(time_zone="UTC"),
        pl.col("scores").list.eval(pl.element().fill_null(float("nan"))),
        first.struct.field("experiment").alias("experiment"),
        first.struct.field("variant").alias("variant"),
    ).drop("experiments")


def read_feedback(log_dir: str | Path) -> pl.DataFrame:
    """One row per logged feedback event (``FEEDBACK_SCHEMA``)."""
    frame = _read_log(Path(log_dir) / FEEDBACK_LOG, FEEDBACK_SCHEMA)
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


def request_summary(per_request: pl.DataFrame, by: tuple[str, ...] = ("window",)) -> pl.DataFrame:
    """Per group of responses (one row each: ``clicked``, ``feedback``, ``latency_ms``, ``served_by``):
    requests, CTR of the responses that got feedback, latency percentiles and fallback rate."""
    return per_request.group_by(list(by)).agg(
        pl.len().alias("requests"),
        (pl.col("clicked").sum() / pl.col("feedback").sum()).alias("ctr"),
        pl.col("latency_ms").quantile(0.5).alias("p50_latency_ms"),
        pl.col("latency_ms").quantile(0.95).alias("p95_latency_ms"),
        (pl.col("served_by").cast(pl.String) != "funnel").mean().alias("fallback_rate"),
    )


def window_summary(shown: pl.DataFrame, catalog_size: int, by: tuple[str, ...] = ("window",)) -> pl.DataFrame:
    """Per group of :func:`impressions` (default per window): requests, impressions, CTR of the responses
    that got feedback, latency percentiles, fallback rate and catalog coverage."""
    per_request = shown.group_by(["request_id", *by]).agg(
        pl.col("clicked").any().alias("clicked"),
        pl.col("feedback").first(),
        pl.col("latency_ms").first(),
        pl.col("served_by").first(),
    )
    requests = request_summary(per_request, by)
    items = shown.group_by(list(by)).agg(
        pl.len().alias("impressions"),
        (pl.col("item_id").n_unique() / catalog_size).alias("coverage"),
    )
    return requests.join(items, on=list(by)).sort(list(by))


def served_features(log_dir: str | Path) -> pl.DataFrame:
    """The ranking features of served items, for the responses that logged them (``feature_log_rate``):
    ``request_id``, ``at``, ``position``, ``item_id``, ``score`` and one column per ``DENSE_FEATURES``.

    Raises:
        ValueError: a response logged another number of features than this version computes.
    """
    from recstack.ranking.features import DENSE_FEATURES

    schema = {
        "request_id": pl.String,
        "at": pl.String,
        "items": pl.List(pl.String),
        "scores": pl.List(pl.Float64),
        "features": pl.List(pl.List(pl.Float64)),
    }
    raw = _read_log(Path(log_dir) / RESPONSES_LOG, schema).filter(pl.col("features").list.len() > 0)
    rows = (
        raw.with_columns(pl.int_ranges(1, pl.col("items").list.len() + 1).alias("position"))
        .explode(["items", "scores", "features", "position"])
        .drop_nulls("features")
    )
    widths = rows["features"].list.len().unique().to_list()
    if widths and widths != [len(DENSE_FEATURES)]:
        bad = rows.filter(pl.col("features").list.len() != len(DENSE_FEATURES))["request_id"][0]
        raise ValueError(
            f"response {bad} logged {sorted(widths)} features; this version has "
            f"{len(DENSE_FEATURES)} ({list(DENSE_FEATURES)})"
        )
    return rows.select(
        "request_id",
        pl.col("at").str.to_datetime(time_zone="UTC"),
        "position",
        pl.col("items").alias("item_id"),
        pl.col("scores").alias("score"),
        *(pl.col("features").list.get(i).alias(name) for i, name in enumerate(DENSE_FEATURES)),
    )
