#!/usr/bin/env bash
# Everything the tests need on top of the service: test tools (pytest, ruff, schemathesis) and
# llama.cpp's server for the generator tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
bash scripts/install.sh -e ".[test]"
bash scripts/setup_llm.sh
