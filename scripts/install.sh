#!/usr/bin/env bash
# `bash scripts/install.sh ARGS...`: `pip install ARGS` into .venv, through uv when it can be had
# (it resolves and downloads in parallel: a fresh install takes about a minute instead of four).
# uv reads no pip.conf, so the machine's pip find-links (a local torch wheel, say) are passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
if [ -z "${RAG_NO_UV:-}" ] && { command -v uv >/dev/null || python -m pip install --quiet uv >/dev/null 2>&1; }; then
  links="${PIP_FIND_LINKS:-} $(python -m pip config get global.find-links 2>/dev/null || true)"
  args=()
  for link in $links; do args+=(--find-links "$link"); done
  # --compile-bytecode: as pip does, so the first `import torch, ray` is not 30 s of compiling.
  exec uv pip install --quiet --compile-bytecode --python .venv/bin/python "${args[@]}" "$@"
fi
exec python -m pip install --quiet "$@"
