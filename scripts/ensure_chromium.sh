#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed for the browser tests (Playwright drives it through
# its executable: Playwright's own browser downloads do not work offline), installing it with
# apt-get when missing, so the browser tests never skip. Prints the executable's path.
set -euo pipefail
find_chromium() { command -v chromium || command -v chromium-browser || true; }
if [ -z "$(find_chromium)" ]; then
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
      SUDO="sudo"
    else
      echo "ensure_chromium.sh: chromium is missing; installing it needs root (run as root or with passwordless sudo):" >&2
      echo "  apt-get update && apt-get install -y chromium" >&2
      exit 1
    fi
  else
    SUDO=""
  fi
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
chromium="$(find_chromium)"
[ -n "$chromium" ] || { echo "ensure_chromium.sh: chromium was installed but is not on PATH" >&2; exit 1; }
"$chromium" --headless --no-sandbox --version >/dev/null
echo "$chromium"
