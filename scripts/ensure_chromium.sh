#!/usr/bin/env bash
# Makes sure Debian's Chromium is installed for the browser tests (Playwright drives it through
# its executable: Playwright's own browser downloads do not work offline), installing it with
# apt-get when missing, so the browser tests never skip. Prints the executable's path.
set -euo pipefail
find_chromium() { command -v chromium || command -v chromium-browser || true; }
if [ -z "$(find_chromium)" ]; then
  bash "$(dirname "$0")/apt_install.sh" chromium fonts-dejavu-core
fi
chromium="$(find_chromium)"
[ -n "$chromium" ] || { echo "ensure_chromium.sh: chromium was installed but is not on PATH" >&2; exit 1; }
"$chromium" --headless --no-sandbox --version >/dev/null
echo "$chromium"
