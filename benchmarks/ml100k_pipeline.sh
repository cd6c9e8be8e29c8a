#!/usr/bin/env bash
# The whole pipeline on MovieLens-100K in a throw-away clone (this project is left untouched), timed,
# then the evaluation report. Usage: benchmarks/ml100k_pipeline.sh [/abs/path/to/ml-100k] [work dir]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
data="${1:-$(cd "$here/.." && pwd)/shared/data/ml-100k}"
work="${2:-$(mktemp -d)/ml100k}"
[ -f "$data/u.data" ] || { echo "MovieLens-100K not found at $data (pass its path)" >&2; exit 2; }
git clone -q "$here" "$work"
export PATH="$here/.venv/bin:$PATH"
cd "$work"
python - "$data" <<'PY'
import sys, yaml
p = yaml.safe_load(open("params.yaml"))
p["data"] = {"source": "movielens-100k", "path": sys.argv[1], "options": {}}
p["ingest"]["as_of"] = "2026-01-01"  # ML-100K is from 1998: any fixed "now" makes the run repeatable
open("params.yaml", "w").write(yaml.safe_dump(p, sort_keys=False))
PY
start=$(date +%s.%N)
dvc repro > repro.log 2>&1 || { tail -30 repro.log; exit 1; }
echo "dvc repro on ML-100K: $(python -c "print(round($(date +%s.%N) - $start, 1))") s (log: $work/repro.log)"
python "$here/benchmarks/model_report.py" "$work"
