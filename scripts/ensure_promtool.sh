#!/usr/bin/env bash
# Makes `promtool` (Prometheus's rule checker) available in .venv/bin for the alert-rule tests:
# the binary is taken from Debian's prometheus package (downloaded and unpacked, never installed
# as a service) when it is not on PATH already.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v promtool >/dev/null || [ -x .venv/bin/promtool ]; then
  exit 0
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
if ! apt-get download prometheus >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  apt-get download prometheus >/dev/null 2>&1
fi
dpkg -x prometheus_*.deb unpacked
cp unpacked/usr/bin/promtool "$OLDPWD/.venv/bin/promtool"
"$OLDPWD/.venv/bin/promtool" --version | head -1
