#!/usr/bin/env bash
# apt-get install of the given Debian packages, as root or through passwordless sudo; otherwise
# prints the command to run as root and exits 1. Used by the ensure_*.sh scripts.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: apt_install.sh PACKAGE..." >&2; exit 2; }
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  SUDO="sudo"
else
  echo "missing $*; installing needs root (run as root or with passwordless sudo):" >&2
  echo "  apt-get update && apt-get install -y $*" >&2
  exit 1
fi
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
