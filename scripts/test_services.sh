#!/usr/bin/env bash
# Services the test suite runs against, from Debian packages: redis-server (the online state's Redis
# backend is tested against a real server, which the tests start on a free loopback port and stop).
# Idempotent; needs root or passwordless sudo the first time on a fresh machine.
set -euo pipefail
log() { printf '[test-services] %s\n' "$*"; }

if command -v redis-server >/dev/null 2>&1; then
  log "redis-server present: $(redis-server --version | cut -d' ' -f3)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    log "redis-server is missing and installing it needs root: run 'sudo apt-get install redis-server'"
    exit 1
  fi
fi
log "installing redis-server (Debian package)"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends redis-server >/tmp/recstack-apt.log 2>&1; then
  # A fresh machine may have no package lists yet.
  $SUDO apt-get update -q >>/tmp/recstack-apt.log 2>&1
  $SUDO apt-get install -y -q --no-install-recommends redis-server >>/tmp/recstack-apt.log 2>&1 \
    || { tail -20 /tmp/recstack-apt.log; exit 1; }
fi
# The package may start a system-wide server on 6379; the tests start their own and need none.
log "redis-server $(redis-server --version | cut -d' ' -f3) installed"
