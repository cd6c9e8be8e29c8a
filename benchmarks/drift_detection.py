"""Does the monitor flag injected drift, and only that? One replay per drift kind, then the monitor.

Each replay serves the packaged bundle's train + valid snapshot and replays its first ``--events`` held-out
events (drift from half-way), exactly as the ``replay`` stage does; the monitor runs with the settings of
``params.yaml: monitor``. Prints, per kind: windows flagged, the columns named (max score / threshold) and
the CTR before and after the drift point.

    python benchmarks/drift_detection.py [--events 6000] [--kinds none user_mix category_surge broken_feature]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import polars as pl
import yaml

from recstack.monitoring.monitor import MonitorConfig, run_monitor
from recstack.monitoring.replay import replay
from recstack.monitoring.simulate import Drift, SimulationConfig
from recstack.paths import metrics_file, project_root, stage_dir

KINDS = ("none", "user_mix", "category_surge", "broken_feature")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=6000)
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    args = p.parse_args(argv)
    params = yaml.safe_load((project_root() / "params.yaml").read_text())
    settings = {k: v for k, v in params["monitor"].items() if k != "log_dir"}
    config = MonitorConfig.model_validate(settings)
    bundle = stage_dir("package") / "bundle"
    offline = json.loads(metrics_file("evaluate").read_text())
    for kind in args.kinds:
        with tempfile.TemporaryDirectory(prefix=f"recstack-drift-{kind}-") as tmp:
            sim = SimulationConfig(max_events=args.events, drift=Drift(kind=kind, start=0.5))
            summary = replay(bundle, Path(tmp) / "logs", sim, experiments=params["replay"]["experiments"])
            result = run_monitor(Path(tmp) / "logs", bundle, Path(tmp) / "monitoring", config, offline)
        judged = result.drift.drop_nulls("column")
        top = (
            judged.group_by("group", "column")
            .agg(pl.col("score").max(), pl.col("threshold").first(), pl.col("drifted").sum().alias("windows"))
            .sort("score", descending=True)
        )
        named = top.filter(pl.col("windows") > 0)
        shown = named if named.height else top.head(1)
        print(
            f"{kind:15s} flagged {int(result.windows['drifted'].sum())} of {result.windows.height} windows; "
            + ("named " if named.height else "highest ")
            + ", ".join(f"{g}: {c} {s:.2f} / {t:g}" for g, c, s, t, _ in shown.iter_rows())
            + f"; CTR {summary['ctr_before_drift']:.2f} -> "
            + ("-" if summary["ctr_after_drift"] is None else f"{summary['ctr_after_drift']:.2f}"),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
