#!/usr/bin/env bash
# The pipeline up to the packaged service on a large synthetic catalog, in a throw-away clone (this project
# is left untouched), for the serving benchmark at catalog scale:
#   benchmarks/large_catalog_pipeline.sh [n_items] [n_users] [n_interactions] [work dir] [extra stages]
#   python benchmarks/serving_load.py <work dir> --concurrency 8
# e.g. the 1M-user batch top-N: benchmarks/large_catalog_pipeline.sh 20000 1000000 6000000 /tmp/u1m batch_topn
# Defaults: 1M items, 30k users, 1.5M interactions. Training is cut to what a serving benchmark needs
# (one epoch, no refit, the ranker on 2000 sampled users: its pairs rank each candidate among all items): the figures measure serving cost at this catalog size, not model quality, and the
# evaluate stage (EASE's item x item matrix does not fit at 1M items) is not run. The index is IVF-flat
# with the nlist / nprobe that benchmarks/index_sweep.py picked at this size (build_index reports its
# recall against exact search in metrics/build_index.json). Large batches keep the dense optimizer's
# full-table steps over the 1M-row embedding tables few.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
n_items="${1:-1000000}"
n_users="${2:-30000}"
n_interactions="${3:-1500000}"
work="${4:-$(mktemp -d)/large}"
extra="${5:-}"
export PATH="$here/.venv/bin:$PATH"
git clone -q "$here" "$work"
cd "$work"
start=$(date +%s.%N)
recstack data generate "$work/data/large" --n-users "$n_users" --n-items "$n_items" \
  --n-interactions "$n_interactions" > generate.log 2>&1 || { tail -20 generate.log; exit 1; }
echo "generate: $(python -c "print(round($(date +%s.%N) - $start, 1))") s"
python - "$work/data/large" <<'PY'
import sys, yaml
p = yaml.safe_load(open("params.yaml"))
p["data"] = {"source": "synthetic", "path": sys.argv[1], "options": {}}
p["ingest"]["as_of"] = "2026-01-01"
p["train_retrieval"].update(max_epochs=1, refit=False, batch_size=4096)
p["train_ranking"].update(max_epochs=1, batch_size=8192, max_users=2000)
p["build_index"].update(kind="ivf_flat", nlist=4096, nprobe=32, max_queries=500)
p["package"].update(smoke_users=50, export="none")  # the store has the bento; no archive needed
open("params.yaml", "w").write(yaml.safe_dump(p, sort_keys=False))
PY
for stage in ingest features train_retrieval train_ranking build_index package $extra; do
  t=$(date +%s.%N)
  dvc repro --single-item "$stage" > "repro-$stage.log" 2>&1 || { tail -30 "repro-$stage.log"; exit 1; }
  echo "$stage: $(python -c "print(round($(date +%s.%N) - $t, 1))") s"
done
cat metrics/build_index.json
echo "project ready: python $here/benchmarks/serving_load.py $work --concurrency 8"
