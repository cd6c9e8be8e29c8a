"""Benchmark: the whole pipeline (``dvc repro``, stage by stage) on a large log, wall time and peak memory.

Clones this project into WORK (the project itself is left untouched), points ``data`` at the log, applies
the scale settings below (and any ``-S key=value``), then runs each stage with ``dvc repro --single-item``
under ``/usr/bin/time``. Peak memory is the largest process of the stage (the notebook's kernel, or a
training job's process). Prints a table and writes ``WORK/scale_pipeline.json``.

    recstack data generate /data/syn50m --n-users 5000000 --n-items 1000000 --n-interactions 50000000
    python benchmarks/scale_pipeline.py /data/syn50m /tmp/scale50m
    python benchmarks/scale_pipeline.py /data/syn50m /tmp/scale50m -S train_retrieval.max_steps=20000

The scale settings, and why: training runs the TorchRec DMP jobs in one process (``engine: dmp``: the fused
sparse optimizers; 27x to 70x the plain loop's steps at 1M items) for a fixed step budget; the ranker trains on
a seeded 20,000-user sample of pairs; ``evaluate`` scores a seeded 10,000-user sample and leaves out EASE and
RP3beta (dense 1M x 1M item matrices); the index is IVF-flat (what ``benchmarks/index_sweep.py`` chose at
1M items); the bento is exported as tar.gz (xz, the default, is single-threaded: over 12 minutes for the
3.3 GB bento); the replay serves the first 20,000 held-out events. ``batch_topn`` (every known user) is left out
unless asked for with ``--stages``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parents[1]
STAGES = (
    "ingest", "features", "train_retrieval", "train_ranking", "evaluate", "build_index", "package", "replay",
    "monitor",
)  # fmt: skip
SCALE: dict[str, dict[str, Any]] = {
    "ingest": {"as_of": "2026-01-01"},
    "train_retrieval": {
        "engine": "dmp",
        "nproc": 1,
        "max_epochs": 1,
        "max_steps": 3000,
        "max_valid_users": 2000,
    },
    "train_ranking": {"engine": "dmp", "nproc": 1, "max_users": 20000, "max_epochs": 3},
    "evaluate": {"baselines": ["most_popular"], "max_users": 10000},
    "build_index": {"kind": "ivf_flat", "nlist": 4096, "nprobe": 32},
    "package": {"export": "gz"},
    "replay": {"max_events": 20000},
}


def _set(params: dict, dotted: str, value: Any) -> None:
    *path, key = dotted.split(".")
    node = params
    for part in path:
        if part not in node or not isinstance(node[part], dict):
            raise KeyError(f"-S {dotted}: params.yaml has no section {part!r}")
        node = node[part]
    node[key] = value


def write_params(data: Path, work: Path, overrides: list[str]) -> None:
    """Write the clone's params.yaml for the large log: its committed params, the scale settings, then
    ``overrides``."""
    subprocess.run(["git", "checkout", "-q", "params.yaml"], cwd=work, check=True)
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["data"] = {"source": "synthetic", "path": str(data), "options": {}}
    for section, values in SCALE.items():
        params[section].update(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"-S {item!r}: expected key=value")
        _set(params, key, yaml.safe_load(raw))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def pull_keeping_outputs(work: Path) -> None:
    """``git pull`` in the clone, keeping what its runs wrote into tracked files (dvc.lock, metrics/).

    Those are this run's results, and upstream changes the same files, so a plain pull would refuse. The
    changed files are set aside, reset, pulled over, then put back (params.yaml is rewritten afterwards).
    """

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=work, check=True, capture_output=True, text=True).stdout

    changed = git("diff", "--name-only", "--diff-filter=M").split()
    deleted = git("diff", "--name-only", "--diff-filter=D").split()
    kept = {name: (work / name).read_bytes() for name in changed if name != "params.yaml"}
    git("checkout", "-q", "--", ".")
    git("pull", "-q", "--no-rebase")
    for name, data in kept.items():
        (work / name).write_bytes(data)
    for name in deleted:
        (work / name).unlink(missing_ok=True)


def run_stage(work: Path, stage: str, env: dict[str, str]) -> dict[str, Any]:
    """``dvc repro --single-item stage`` under ``/usr/bin/time``: wall seconds and peak RSS (GB)."""
    log = work / f"repro-{stage}.log"
    timing = work / f"time-{stage}.txt"
    cmd = ["/usr/bin/time", "-f", "%e %M", "-o", str(timing), "dvc", "repro", "--single-item", stage]
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"stage {stage} failed (exit {proc.returncode}); end of {log}:\n{tail}")
    wall, max_kb = timing.read_text().split()[-2:]
    return {
        "stage": stage,
        "seconds": round(float(wall), 1),
        "peak_rss_gb": round(int(max_kb) / 1024**2, 2),
        "driver_seconds": round(time.perf_counter() - start, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, help="a canonical dataset directory (e.g. from recstack data generate)")
    p.add_argument("work", type=Path, help="a new directory: the clone and its outputs")
    p.add_argument("-S", dest="overrides", action="append", default=[], help="params key=value (repeatable)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), help="stages to run, in order")
    p.add_argument(
        "--continue", dest="resume", action="store_true",
        help="WORK is an earlier run's clone: pull, rewrite its params (with -S), run --stages, add their rows",
    )  # fmt: skip
    a = p.parse_args()
    if not (a.data / "interactions.parquet").exists():
        raise SystemExit(f"{a.data} has no interactions.parquet: not a canonical dataset directory")
    if a.resume:
        pull_keeping_outputs(a.work)
    elif a.work.exists():
        raise SystemExit(f"{a.work} exists: give a new directory (the clone goes there), or --continue")
    else:
        subprocess.run(["git", "clone", "-q", str(HERE), str(a.work)], check=True)
    write_params(a.data.resolve(), a.work, a.overrides)
    # The clone's own sources, not the editable install's (this checkout may change while it runs).
    env = {
        **os.environ,
        "PYTHONPATH": str(a.work / "src"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    done = a.work / "scale_pipeline.json"
    rows = [r for r in json.loads(done.read_text()) if r["stage"] not in a.stages] if a.resume else []
    for stage in a.stages:
        rows.append(run_stage(a.work, stage, env))
        r = rows[-1]
        print(f"{stage:16s} {r['seconds']:8.1f} s  {r['peak_rss_gb']:6.2f} GB", flush=True)
        (a.work / "scale_pipeline.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"total            {sum(r['seconds'] for r in rows):8.1f} s")


if __name__ == "__main__":
    main()
