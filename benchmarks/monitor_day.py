"""How long the monitor stage takes on one day of traffic at 100 requests/s (8.64 million responses).

A day of service logs is made from a real replay (the ``replay`` stage's ``artifacts/replay``, served by
the packaged engine): its responses and feedback are tiled over 24 hours at the given rate, each copy with
fresh request / event ids and shifted times. Then :func:`recstack.monitoring.monitor.run_monitor` runs on
it with hourly windows, timed per step, with the process's peak memory; the same call on the replay
itself (one copy) is the baseline, so the ratio says how the cost scales.

    python benchmarks/monitor_day.py [--rate 100] [--hours 24] [--window 1h] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import polars as pl

from recstack.monitoring.monitor import MonitorConfig, run_monitor
from recstack.paths import metrics_file, stage_dir
from recstack.serving.eventlog import FEEDBACK_LOG, RESPONSES_LOG


def tile_day(source: Path, out: Path, rate: float, hours: float) -> int:
    """Write ``hours`` of logs at ``rate`` requests/s into ``out`` by tiling ``source``'s logs; returns
    the number of responses written."""
    responses = pl.read_ndjson(source / RESPONSES_LOG, infer_schema_length=None)
    feedback = pl.read_ndjson(source / FEEDBACK_LOG, infer_schema_length=None)
    at = pl.col("at").str.to_datetime(time_zone="UTC")
    responses = responses.with_columns(at).sort("at")
    start = responses["at"][0]
    # Each response's offset in its copy: evenly spaced at ``rate``; its feedback keeps its delay.
    responses = responses.with_columns(
        (pl.int_range(pl.len()) * int(1e6 / rate)).cast(pl.Duration("us")).alias("_off")
    )
    delay = responses.select("request_id", "_off", (pl.col("at") - start).alias("_orig"))
    feedback = feedback.with_columns(pl.col("timestamp").str.to_datetime(time_zone="UTC")).join(
        delay, on="request_id", how="left"
    )
    # Organic events (no request id) keep their place by time among the responses.
    feedback = feedback.with_columns(
        pl.coalesce(
            pl.col("_off") + (pl.col("timestamp") - start - pl.col("_orig")), pl.col("timestamp") - start
        ).alias("_off")
    ).drop("_orig")
    span = timedelta(seconds=responses.height / rate)
    total = int(rate * hours * 3600)
    copies = -(-total // responses.height)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with (out / RESPONSES_LOG).open("wb") as r_out, (out / FEEDBACK_LOG).open("wb") as f_out:
        for c in range(copies):
            take = min(responses.height, total - written)
            shift = start + span * c
            tag = pl.lit(f"-{c}")
            part = responses.head(take).with_columns(
                (pl.lit(shift) + pl.col("_off")).dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00").alias("at"),
                pl.col("request_id") + tag,
            )
            part.drop("_off").write_ndjson(r_out)
            limit = part["request_id"].str.strip_suffix(f"-{c}")
            fb = feedback.filter(pl.col("request_id").is_null() | pl.col("request_id").is_in(limit.implode()))
            fb = fb.filter(pl.col("_off") < pl.lit(span * take / responses.height))
            fb.with_columns(
                (pl.lit(shift) + pl.col("_off"))
                .dt.strftime("%Y-%m-%dT%H:%M:%S%.6f+00:00")
                .alias("timestamp"),
                pl.col("request_id") + tag,
                pl.col("event_id") + tag,
            ).drop("_off").write_ndjson(f_out)
            written += take
    return written


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=100.0, help="requests per second")
    p.add_argument("--hours", type=float, default=24.0)
    p.add_argument("--window", default="1h")
    p.add_argument("--baseline-window", default="1w", help="windows of the baseline run on the replay itself")
    p.add_argument("--source", type=Path, default=None, help="logs to tile (default: artifacts/replay)")
    p.add_argument("--keep", type=Path, default=None, help="write the day's logs here and keep them")
    args = p.parse_args(argv)
    source = args.source or stage_dir("replay")
    bundle = stage_dir("package") / "bundle"
    if not (source / RESPONSES_LOG).is_file():
        sys.exit(f"{source} has no {RESPONSES_LOG}: run `dvc repro replay` first")
    offline = json.loads(metrics_file("evaluate").read_text())
    config = MonitorConfig(window=args.window)
    work = Path(tempfile.mkdtemp(prefix="recstack-monitor-day-"))
    try:
        t = time.perf_counter()
        base = run_monitor(source, bundle, work / "base", MonitorConfig(window=args.baseline_window), offline)
        base_s = time.perf_counter() - t
        base_n = base.status["requests"]
        logs = args.keep or work / "logs"
        t = time.perf_counter()
        n = tile_day(source, logs, args.rate, args.hours)
        gen_s = time.perf_counter() - t
        size = sum(f.stat().st_size for f in logs.iterdir()) / 2**30
        print(
            f"logs: {n:,} responses over {args.hours:g} h at {args.rate:g}/s, {size:.1f} GiB, made in {gen_s:.0f} s"
        )
        t = time.perf_counter()
        day = run_monitor(logs, bundle, work / "day", config, offline)
        day_s = time.perf_counter() - t
        print(
            json.dumps(
                {
                    "responses": n,
                    "windows": day.status["windows"],
                    "monitor_seconds": round(day_s, 1),
                    "steps_seconds": {k: round(v, 1) for k, v in day.seconds.items()},
                    "peak_rss_gib": round(peak_rss_gib(), 2),
                    "baseline": {
                        "responses": base_n,
                        "windows": base.status["windows"],
                        "seconds": round(base_s, 1),
                    },
                    "seconds_per_million_responses": round(day_s / n * 1e6, 1),
                    "baseline_seconds_per_million": round(base_s / base_n * 1e6, 1),
                    "drifted_windows": day.status["drifted_windows"],
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
