#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs everything, starts what the tests need, runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0
bash scripts/setup_test.sh
bash scripts/ensure_redis.sh
bash scripts/ensure_ocr.sh        # Tesseract and its language packs: the OCR tests read real scans
bash scripts/ensure_promtool.sh   # the alert-rule tests run promtool
# Debian's Chromium for the web page's browser tests (Playwright drives that executable).
RAG_CHROMIUM="$(bash scripts/ensure_chromium.sh)"
export RAG_CHROMIUM
# Activated so that `python`, `ray` and `chroma` (also inside Ray jobs) are the venv's.
. .venv/bin/activate
# Lint and format over every Python file (packages, tests, benchmarks); settings in pyproject.toml.
ruff check .
ruff format --check .
# The 25 slowest tests and fixtures are listed at the end: where the suite's time goes.
python -m pytest tests --durations=25 "$@"
