#!/usr/bin/env bash
# Installs the project on one cluster node (cluster.yaml's setup commands run it on every node).
# TORCH_SPEC picks the PyTorch build: the CPU wheel on CPU nodes, the default CUDA build on GPU nodes.
set -euo pipefail
cd "$(dirname "$0")/.."
# OCR of scanned pages runs in the parse tasks, on any node: every node gets Tesseract.
bash scripts/ensure_ocr.sh
# shellcheck disable=SC2086
python3 -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
python3 -m pip install --quiet -e .
python3 -c "import ray, torch, chromadb; print(f'ray {ray.__version__}, torch {torch.__version__} (cuda: {torch.cuda.is_available()}), chromadb {chromadb.__version__}')"
