"""In-process replay: the traffic simulator against the packaged engine, on a simulated clock.

The ``replay`` stage runs this so that ``dvc repro`` has served traffic to monitor on a fresh machine:
the engine (the one the BentoML service wraps: same validation, funnel, policy, feedback path and logs)
serves the bundle's training snapshot, and the held-out events are replayed as requests and feedback,
their responses and events stamped with simulated time. Against a running service use
``recstack monitor simulate URL ...`` instead (the same simulator over HTTP, on the wall clock).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from pydantic import ValidationError

from recstack.data.split import TEST, TRAIN, VALID
from recstack.monitoring.simulate import (
    Poster,
    SimulationConfig,
    apply_drift,
    held_out_events,
    item_categories,
    simulate,
)
from recstack.serving.config import NO_BUDGETS
from recstack.serving.engine import Recommender, RequestError
from recstack.serving.schemas import FeedbackEvent, RecommendRequest


def engine_poster(rec: Recommender) -> Poster:
    """``rec`` as a :data:`~recstack.monitoring.simulate.Poster`: bodies validated by the service's
    schemas (422 naming the field), then answered by the engine, as the HTTP endpoints do."""

    def post(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        try:
            if path == "/recommend":
                return 200, rec.recommend(RecommendRequest.model_validate(body)).model_dump(mode="json")
            if path == "/feedback":
                return 200, rec.feedback(FeedbackEvent.model_validate(body)).model_dump(mode="json")
        except ValidationError as exc:
            err = exc.errors()[0]
            return 422, {"error": err["msg"], "field": ".".join(str(x) for x in err["loc"])}
        except RequestError as exc:
            return exc.status, {"error": str(exc), "field": exc.field}
        return 404, {"error": f"no endpoint {path}"}

    return post


def snapshot_pace(bundle_dir: str | Path, splits: tuple[str, ...]) -> tuple[datetime, float]:
    """Where the served snapshot (``splits``) ends (its latest event + 1 s), and its events per second."""
    path = Path(bundle_dir) / "features" / "interactions.parquet"
    span = (
        pl.scan_parquet(path)
        .filter(pl.col("split").is_in(list(splits)))
        .select(pl.col("timestamp").min().alias("first"), pl.col("timestamp").max().alias("last"), pl.len())
        .collect()
        .row(0, named=True)
    )
    if not span["len"]:
        raise ValueError(f"{path} holds no events of splits {list(splits)}: nothing is served")
    seconds = max((span["last"] - span["first"]).total_seconds(), 1.0)
    return span["last"] + timedelta(seconds=1), span["len"] / seconds


def replay(
    bundle_dir: str | Path,
    log_dir: str | Path,
    config: SimulationConfig,
    splits: tuple[str, ...] = ("test",),
    feature_log_rate: float = 0.1,
    experiments: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Replay the bundle's ``splits`` events against an engine serving the other splits, writing the
    service's logs (``responses.jsonl``, ``feedback.jsonl``) to ``log_dir``; returns the simulator's
    summary. ``config.clock`` should be ``"simulated"`` (the engine is stamped with its time).

    Raises:
        ValueError: ``log_dir`` already holds logs (a replay never appends to, or overwrites, traffic).
    """
    out = Path(log_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: replay into a new directory (logs are never overwritten)")
    events = held_out_events(bundle_dir, splits)
    if config.max_events is not None:  # cut first: the drift starts at a share of the replayed events
        events = events.head(config.max_events)
    events = apply_drift(events, item_categories(bundle_dir), config.drift, config.seed)
    serve = tuple(s for s in (TRAIN, VALID, TEST) if s not in splits)
    start, rate = snapshot_pace(bundle_dir, serve)
    config = config.model_copy(
        update={"clock": "simulated", "start": config.start or start, "rate": config.rate or rate}
    )
    # Live semantics: features as of the (simulated) present, not as of each user's own latest event.
    # No result cache: its TTL is wall-clock time, and the simulated clock runs ~1000x faster (a cached
    # list would be hours of replayed time old, and which requests hit it would depend on the machine).
    # No stage budgets, for the same reason: wall-clock budgets on a busy machine would cut a stage short
    # now and then, and the same replay would serve other lists (a replay is reproducible, run to run).
    overrides: dict[str, Any] = {
        "feature_log_rate": feature_log_rate,
        "clock": "wall",
        "cache": {"enabled": False},
        "budgets": NO_BUDGETS,
    }
    if experiments is not None:
        overrides["experiments"] = experiments
    rec = Recommender.load(bundle_dir, log_dir=out, splits=serve, overrides=overrides)
    now: list[datetime] = [config.start]  # type: ignore[list-item]
    rec.clock = lambda: now[0]

    def set_time(at: datetime) -> None:
        now[0] = at

    try:
        summary = simulate(engine_poster(rec), events, config, set_time=set_time)
    finally:
        rec.close()
    summary |= {"served_splits": list(serve), "replayed_splits": list(splits)}
    (out / "replay.json").write_text(json.dumps(summary, indent=2))
    return summary
