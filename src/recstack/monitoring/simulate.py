"""Traffic simulator: held-out interactions replayed as real requests and feedback against a service.

For each held-out event (user, item), oldest first, the simulator asks the service for the user's list
(``POST /recommend``). When the held-out item is in it the user clicks it (``POST /feedback``, with the
request id and position), otherwise they skip the top item; ``noise`` flips that outcome at random (a
click on another listed item, or a skip). A missed held-out item is still consumed, found elsewhere (an
``organic`` watch with no request id): what users engage with reaches the service whether or not it was
recommended. So monitoring gets served traffic end to end, with ground truth.

Time is the wall clock against a running service, or ``clock="simulated"``: request ``n`` happens at
``start + n / rate``, without waiting (an in-process replay, :func:`recstack.monitoring.replay.replay`, sets
the engine's clock to it), so a day of traffic at 100 requests/s is replayed in minutes.

Drift can be injected from a point of the replay on (``drift.start``, a share of the events):

- ``user_mix``: only the heaviest users (``drift.user_share`` of them) keep sending requests;
- ``category_surge``: the held-out items are swapped for items of one category, as if it suddenly became
  popular (``drift.category``, default the category with the fewest items among those with 20 or more);
- ``broken_feature``: a client bug: every request says ``device: "unknown"`` and drops ``region``.

The service must not know the replayed events already: serve a snapshot without them, e.g.
``RECSTACK_SNAPSHOT_SPLITS=train,valid`` with the default split's held-out ``test`` events.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

DriftKind = Literal["none", "user_mix", "category_surge", "broken_feature"]
DEVICES = ("mobile", "desktop", "tv")


class Drift(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: DriftKind = "none"
    start: float = Field(0.5, ge=0.0, le=1.0, description="share of the replay before the drift begins")
    user_share: float = Field(0.1, gt=0.0, le=1.0, description="user_mix: the heaviest users kept")
    category: str | None = Field(None, description="category_surge: the category (default: chosen)")


class SimulationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(10, ge=1, le=100)
    surface: Literal["homepage", "up_next", "related"] = "homepage"
    noise: float = Field(0.05, ge=0.0, le=1.0, description="chance that a click / skip outcome flips")
    max_events: int | None = Field(None, ge=1)
    rate: float | None = Field(None, gt=0, description="requests per second; None: as fast as answered")
    clock: Literal["wall", "simulated"] = "wall"
    start: datetime | None = Field(None, description="simulated clock: the time of the first request")
    organic: bool = Field(True, description="a missed held-out item is watched anyway (no request id)")
    seed: int = 0
    drift: Drift = Field(default_factory=Drift)

    @model_validator(mode="after")
    def _aware_start(self) -> SimulationConfig:
        if self.start is not None and self.start.tzinfo is None:
            self.start = self.start.replace(tzinfo=UTC)
        return self


# A client: (path, JSON body) -> (HTTP status, JSON answer). httpx.Client(...).post fits via http_poster.
Poster = Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]]]


def http_poster(client: Any) -> Poster:
    """An ``httpx.Client`` (or Starlette's TestClient) as a :data:`Poster`."""

    def post(path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        r = client.post(path, json=body)
        try:
            return r.status_code, r.json()
        except ValueError:
            return r.status_code, {"error": r.text[:200]}

    return post


def held_out_events(bundle_dir: str | Path, splits: tuple[str, ...] = ("test",)) -> pl.DataFrame:
    """The bundle's events of ``splits``, oldest first: ``user_id``, ``item_id`` (strings), ``timestamp``."""
    path = Path(bundle_dir) / "features" / "interactions.parquet"
    frame = pl.read_parquet(path, columns=["user_id", "item_id", "timestamp", "split"])
    out = frame.filter(pl.col("split").is_in(list(splits))).sort("timestamp")
    if out.is_empty():
        raise ValueError(f"{path} holds no events of splits {list(splits)}")
    return out.select(pl.col("user_id").cast(pl.String), pl.col("item_id").cast(pl.String), "timestamp")


def item_categories(bundle_dir: str | Path) -> pl.DataFrame:
    """``item_id`` (string) and ``categories`` (list of strings) of the bundle's catalog."""
    items = pl.read_parquet(
        Path(bundle_dir) / "features" / "items.parquet", columns=["item_id", "categories"]
    )
    return items.select(pl.col("item_id").cast(pl.String), "categories")


def apply_drift(events: pl.DataFrame, catalog: pl.DataFrame, drift: Drift, seed: int) -> pl.DataFrame:
    """``events`` with ``drift`` from ``drift.start`` on, plus a boolean column ``drifted``."""
    n = events.height
    cut = round(drift.start * n)
    head = events.head(cut).with_columns(pl.lit(False).alias("drifted"))
    tail = events.tail(n - cut).with_columns(pl.lit(drift.kind != "none").alias("drifted"))
    rng = np.random.default_rng(seed)
    if drift.kind == "user_mix" and tail.height:
        counts = events.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
        keep = counts.head(max(1, round(drift.user_share * counts.height)))["user_id"]
        tail = tail.filter(pl.col("user_id").is_in(keep.implode()))
    elif drift.kind == "category_surge" and tail.height:
        members = catalog.explode("categories").drop_nulls("categories")
        category = drift.category or _surge_category(members)
        pool = members.filter(pl.col("categories") == category)["item_id"].unique().sort().to_numpy()
        if not len(pool):
            raise ValueError(f"category_surge: no item has category {category!r}")
        tail = tail.with_columns(pl.Series("item_id", rng.choice(pool, size=tail.height)))
    return pl.concat([head, tail])


def _surge_category(members: pl.DataFrame) -> str:
    sizes = members.group_by("categories").len().filter(pl.col("len") >= 20).sort(["len", "categories"])
    if sizes.is_empty():
        raise ValueError("category_surge: no category has 20 items; name one with drift.category")
    return str(sizes["categories"][0])


def simulate(
    post: Poster,
    events: pl.DataFrame,
    config: SimulationConfig,
    set_time: Callable[[datetime], None] | None = None,
) -> dict[str, Any]:
    """Replay ``events`` (from :func:`held_out_events`, after :func:`apply_drift`) against the service.

    ``set_time`` receives each request's simulated time before it is sent (``clock="simulated"``).

    Returns counts (requests, hits = held-out item recommended, clicks, skips, organic watches, errors by
    status), the click-through rate before and after the drift point, and the seconds it took.
    """
    rng = np.random.default_rng(config.seed)
    if config.max_events is not None:  # (cut before apply_drift, so the drift starts within these)
        events = events.head(config.max_events)
    if "drifted" not in events.columns:
        events = events.with_columns(pl.lit(False).alias("drifted"))
    stats: Counter[str] = Counter()
    by_phase: dict[bool, Counter[str]] = {False: Counter(), True: Counter()}
    broken = config.drift.kind == "broken_feature"
    start = time.perf_counter()
    simulated = config.clock == "simulated"
    if simulated and (config.rate is None or config.start is None):
        raise ValueError("a simulated clock needs a start and a rate (requests per simulated second)")
    for n, (user, item, drifted) in enumerate(events.select("user_id", "item_id", "drifted").iter_rows()):
        if simulated:
            at = config.start + timedelta(seconds=n / config.rate)
            if set_time is not None:
                set_time(at)
        else:
            if config.rate is not None:  # open loop at the given rate
                wait = start + n / config.rate - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            at = datetime.now(UTC)
        request = {"user_id": user, "k": config.k, "surface": config.surface}
        if broken and drifted:
            request["device"] = "unknown"
        else:
            request |= {"device": DEVICES[n % len(DEVICES)], "region": "eu" if n % 4 else "us"}
        status, body = post("/recommend", request)
        stats["requests"] += 1
        if status != 200:
            stats[f"error_{status}"] += 1
            continue
        listed = [i["item_id"] for i in body["items"]]
        if not listed:
            continue
        hit = item in listed
        clicked = hit != (rng.random() < config.noise)  # noise flips the outcome
        if clicked:
            target = item if hit else listed[int(rng.integers(len(listed)))]
        else:
            target = listed[0]
        event = {
            "user_id": user,
            "item_id": target,
            "event_type": "click" if clicked else "skip",
            "timestamp": at.isoformat(),
            "request_id": body["request_id"],
            "surface": config.surface,
            "position": listed.index(target) + 1,
        }
        status, _ = post("/feedback", event)
        if status != 200:
            stats[f"error_{status}"] += 1
        if config.organic and not hit:
            organic = {"user_id": user, "item_id": item, "event_type": "watch", "timestamp": at.isoformat()}
            status, _ = post("/feedback", organic)
            stats["organic"] += 1
            if status != 200:
                stats[f"error_{status}"] += 1
        phase = by_phase[bool(drifted)]
        for c in (stats, phase):
            c["responses"] += 1
            c["hits"] += hit
            c["clicks"] += clicked
            c["skips"] += not clicked
    seconds = time.perf_counter() - start

    def ctr(c: Counter[str]) -> float | None:
        return c["clicks"] / c["responses"] if c["responses"] else None

    return {
        **dict(stats),
        "seconds": round(seconds, 3),
        "requests_per_s": round(stats["requests"] / seconds, 1) if seconds else None,
        "ctr": ctr(stats),
        "ctr_before_drift": ctr(by_phase[False]),
        "ctr_after_drift": ctr(by_phase[True]),
        "drift": config.drift.kind,
    }
