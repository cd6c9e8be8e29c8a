#!/usr/bin/env bash
# Services and tools the test suite runs against, from Debian packages:
# - redis-server: the online state's Redis backend is tested against a real server, which the tests start
#   on a free loopback port and stop.
# - chromium: the real-browser tests of the Streamlit monitoring app (tests/browser.py) drive it headless.
# Idempotent; needs root or passwordless sudo the first time on a fresh machine.
set -euo pipefail
log() { printf '[test-services] %s\n' "$*"; }

MISSING=()
if command -v redis-server >/dev/null 2>&1; then
  log "redis-server present: $(redis-server --version | cut -d' ' -f3)"
else
  MISSING+=(redis-server)
fi
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  log "chromium present"
else
  MISSING+=(chromium)
fi
[ "${#MISSING[@]}" -eq 0 ] && exit 0

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    log "${MISSING[*]} missing and installing needs root: run 'sudo apt-get install ${MISSING[*]}'"
    exit 1
  fi
fi
log "installing ${MISSING[*]} (Debian packages)"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y -q --no-install-recommends "${MISSING[@]}" >/tmp/recstack-apt.log 2>&1; then
  # A fresh machine may have no package lists yet.
  $SUDO apt-get update -q >>/tmp/recstack-apt.log 2>&1
  $SUDO apt-get install -y -q --no-install-recommends "${MISSING[@]}" >>/tmp/recstack-apt.log 2>&1 \
    || { tail -20 /tmp/recstack-apt.log; exit 1; }
fi
# The redis package may start a system-wide server on 6379; the tests start their own and need none.
for pkg in "${MISSING[@]}"; do
  case "$pkg" in
    redis-server) log "redis-server $(redis-server --version | cut -d' ' -f3) installed" ;;
    chromium) log "chromium installed: $(chromium --version 2>/dev/null || echo '?')" ;;
  esac
done
