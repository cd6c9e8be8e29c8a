#!/usr/bin/env bash
# Idempotent set-up of a recstack checkout on a fresh machine; safe to run any number of times.
#   1. uv (pinned) in .tools/uv          3. the Jupyter kernel "recstack" inside .venv
#   2. .venv from uv.lock (frozen)       4. the embedded default dataset data/raw/synthetic (generated)
# Needs only python3.11 and the package registries. See README.md, "Installing elsewhere", for CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9
UV=.tools/uv/bin/uv
log() { printf '[setup] %s\n' "$*"; }

if ! "$UV" --version 2>/dev/null | grep -q " $UV_VERSION"; then
  log "installing uv $UV_VERSION into .tools/uv"
  python3 -m venv .tools/uv
  .tools/uv/bin/python -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

# The CPU build of torch 2.13 comes from a local wheel folder that pip's config names as find-links;
# uv does not read pip's config, so hand it over (an explicit UV_FIND_LINKS wins).
if [ -z "${UV_FIND_LINKS:-}" ]; then
  links=$(python3 -m pip config get global.find-links 2>/dev/null || true)
  if [ -n "$links" ]; then export UV_FIND_LINKS="$links"; fi
fi

# --compile-bytecode: uv (unlike pip) installs no .pyc files, and where PYTHONDONTWRITEBYTECODE is set (as
# on the machines this project is built and tested on) Python never writes them either, so every process
# (each pipeline stage's kernel, each torchrun rank, each service worker) compiled torch, torchrec and
# sympy from source again: `import recstack.monitoring.monitor` took 34 s here without them and 13 s
# with them. Compiling costs ~50 s once; a later sync of an unchanged .venv skips it.
log "syncing .venv from uv.lock"
"$UV" sync --frozen --quiet --compile-bytecode

log "registering the Jupyter kernel 'recstack'"
.venv/bin/python -m ipykernel install --sys-prefix --name recstack --display-name "Python (recstack)" >/dev/null

log "embedded default dataset"
.venv/bin/recstack data default
log "ready: activate with 'source .venv/bin/activate'"
