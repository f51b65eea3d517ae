"""A multi-node Ray cluster on one machine, started as on real machines: `ray start --head`,
then `ray start --address` per worker, each a separate raylet with its own ports and a distinct
custom resource. Plus a ChromaDB server, the store every node reads.

Each node runs under `ray start --block`, so SIGTERM to that one process drains and stops the
node: `stop()` never touches another Ray session on this machine (unlike `ray stop`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "RAY_ADDRESS"))}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    # Jobs run `python ...` from the node's PATH: make it this venv's.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _node_ports() -> list[str]:
    # Ray's defaults (52365 for the agent, ...) would collide with any other session on this machine.
    ports = {
        "--node-manager-port": free_port(),
        "--object-manager-port": free_port(),
        "--metrics-export-port": free_port(),
        "--dashboard-agent-listen-port": free_port(),
        "--dashboard-agent-grpc-port": free_port(),
        "--runtime-env-agent-port": free_port(),
    }
    return [f"{flag}={port}" for flag, port in ports.items()]


@dataclass
class LocalRayCluster:
    """head (`head_cpus`, 0 by default: drivers, controllers) + workers (`worker_cpus` each,
    resource `worker_<i>`)."""

    workers: int = 2
    worker_cpus: int = 2
    head_cpus: int = 0
    # Pin worker i to core i (taskset; children inherit it), so a node's work really runs on its
    # own core, as on separate machines: for the scaling benchmarks.
    pin_cores: bool = False
    object_store_bytes: int = 400 * 2**20
    gcs_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, log_dir: Path, timeout_s: float = 120) -> LocalRayCluster:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                f"--num-cpus={self.head_cpus}",
                f"--dashboard-port={self.dashboard_port}",
                "--dashboard-host=127.0.0.1",
                "--include-dashboard=true",
                f"--ray-client-server-port={free_port()}",
                f"--temp-dir={log_dir / 'ray'}",
            ],
        )
        self._wait_for_nodes(1, timeout_s)
        for index in range(self.workers):  # one at a time: raylets starting together can time out
            self._spawn(
                f"worker-{index}",
                [
                    f"--address={self.gcs_address}",
                    f"--num-cpus={self.worker_cpus}",
                    f"--resources={json.dumps({f'worker_{index}': 1})}",
                ],
                core=index % (os.cpu_count() or 1) if self.pin_cores else None,
            )
            self._wait_for_nodes(2 + index, timeout_s)
        return self

    def _spawn(self, name: str, args: list[str], core: int | None = None) -> None:
        assert self.log_dir is not None
        log = (self.log_dir / f"{name}.log").open("w")
        command = [str(VENV_BIN / "ray"), "start", "--block", f"--object-store-memory={self.object_store_bytes}", *_node_ports(), *args]
        if core is not None:
            command = ["taskset", "-c", str(core), *command]
        self.processes.append(subprocess.Popen(command, env=ray_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def nodes(self) -> list[dict[str, Any]]:
        """Alive nodes from the dashboard's state API: node_id, is_head_node, resources_total."""
        with urllib.request.urlopen(f"{self.dashboard_url}/api/v0/nodes?limit=100", timeout=10) as response:
            result = json.load(response)["data"]["result"]["result"]
        return [node for node in result if node["state"] == "ALIVE"]

    def worker_node_ids(self) -> set[str]:
        return {node["node_id"] for node in self.nodes() if not node["is_head_node"]}

    def _wait_for_nodes(self, count: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            for process in self.processes:
                if process.poll() is not None:
                    raise RuntimeError(f"a ray node exited with {process.returncode}; logs in {self.log_dir}")
            try:
                if len(self.nodes()) >= count:
                    return
            except OSError:
                pass  # the dashboard is still starting
            if time.monotonic() > deadline:
                raise TimeoutError(f"{count} Ray nodes not up after {timeout_s}s; logs in {self.log_dir}")
            time.sleep(1)

    def ray(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """A `ray ...` / `serve ...` CLI call against this cluster, as a user types it."""
        return subprocess.run([str(VENV_BIN / args[0]), *args[1:]], env=ray_env(), capture_output=True, text=True, timeout=timeout)

    def submit_ingest(self, source: Path | str, env_vars: dict[str, str], timeout: float = 1800) -> subprocess.CompletedProcess:
        """`ray job submit ... -- python -m ingest_jobs.index --source SOURCE` against this
        cluster, as users run it; retried while the dashboard has no job agent yet (right after
        start)."""
        for _ in range(24):
            done = self.ray(
                "ray",
                "job",
                "submit",
                "--address",
                self.dashboard_url,
                "--runtime-env-json",
                json.dumps({"env_vars": env_vars}),
                "--",
                "python",
                "-m",
                "ingest_jobs.index",
                "--source",
                str(source),
                timeout=timeout,
            )
            if "No available agent to submit job" not in done.stdout + done.stderr:
                break
            time.sleep(5)
        return done

    def stop(self, grace_s: float = 10.0) -> None:
        """Every node at once (SIGTERM to each `ray start --block` process group), then SIGKILL
        to the groups still there after `grace_s`: a test cluster has nothing to drain, and
        stopping node by node with Serve's graceful replica shutdown took over 30 s."""
        running = [process for process in self.processes if process.poll() is None]
        for process in running:
            os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()


def ingest_summary(done: subprocess.CompletedProcess) -> dict[str, Any] | None:
    """The job's JSON summary (its last `{"index_version": ...}` line), None if it printed none."""
    summaries = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"index_version"')]
    return summaries[-1] if summaries else None


def local_serve_config(port: int, app_args: dict[str, Any]) -> dict[str, Any]:
    """configs/serve-cluster.yaml for nodes that share one machine: a single proxy (every node's
    would bind the same port) on loopback (so no API keys), with the app's settings as `args`."""
    config = yaml.safe_load((REPO_ROOT / "configs" / "serve-cluster.yaml").read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    config["applications"][0]["args"] = {"config": str(REPO_ROOT / "configs" / "rag.yaml"), **app_args}
    return config


@dataclass
class ChromaServer:
    """`chroma run` on a free port, data in `path`."""

    path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60) -> ChromaServer:
        chroma = shutil.which("chroma", path=str(VENV_BIN))
        self.process = subprocess.Popen(
            [chroma, "run", "--path", str(self.path), "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import chromadb

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                chromadb.HttpClient(host="127.0.0.1", port=self.port).heartbeat()
                return self
            except Exception as exc:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    self.stop()
                    raise RuntimeError("chroma server did not start") from exc
                time.sleep(0.3)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
