"""Benchmark: wall time and peak memory of the ingest and features stages on any source.

Each stage runs in its own child process (the same typed functions the notebooks call), so the peak RSS
reported is that stage's own. Prints a table and, with --json, writes the figures.

    python benchmarks/data_pipeline.py movielens-100k ../shared/data/ml-100k
    recstack data generate /tmp/syn10m --n-users 500000 --n-items 100000 --n-interactions 10000000
    python benchmarks/data_pipeline.py synthetic /tmp/syn10m --json benchmarks/results/syn10m.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path
from typing import Any


def _peak_mb() -> float:
    # Peak resident memory of this (fresh, spawned) process: the stage's own footprint, imports included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _ingest(source: str, path: str, work: str, queue: mp.Queue) -> None:
    from recstack.data.ingest import ingest

    t = time.perf_counter()
    result = ingest(source, path, Path(work) / "ingest", max_bad_fraction=1.0)
    rows = result.report.rows["interactions"]
    queue.put(
        {
            "seconds": time.perf_counter() - t,
            "rows": rows,
            "bad_rows": sum(result.report.bad_rows.values()),
            "peak_rss_mb": _peak_mb(),
        }
    )


def _features(work: str, queue: mp.Queue) -> None:
    from recstack.features.build import build_features

    t = time.perf_counter()
    result = build_features(Path(work) / "ingest", Path(work) / "features")
    queue.put(
        {
            "seconds": time.perf_counter() - t,
            "rows": result.metrics["train_interactions"]
            + result.metrics["valid_interactions"]
            + result.metrics["test_interactions"],
            "peak_rss_mb": _peak_mb(),
        }
    )


def _measure(target: Any, args: tuple) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"{target.__name__} failed with exit code {proc.exitcode}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source")
    parser.add_argument("path")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="recstack-bench-") as work:
        figures = {"source": args.source, "path": args.path}
        figures["ingest"] = _measure(_ingest, (args.source, args.path, work))
        figures["features"] = _measure(_features, (work,))
    print(f"{'stage':<10}{'seconds':>10}{'rows':>14}{'peak RSS MB':>14}")
    for stage in ("ingest", "features"):
        f = figures[stage]
        print(f"{stage:<10}{f['seconds']:>10.2f}{f['rows']:>14,}{f['peak_rss_mb']:>14.0f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
