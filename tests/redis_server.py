"""Redis for tests: the machine's server on 127.0.0.1:6379 (scripts/ensure_redis.sh starts it) with
a key prefix per test, or a private `redis-server` a test may stop and restart."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import redis

SHARED_REDIS_URL = "redis://127.0.0.1:6379/0"


def unique_prefix(name: str = "test") -> str:
    return f"rag-test:{name}:{uuid.uuid4().hex[:12]}"


def shared_redis() -> redis.Redis:
    client = redis.Redis.from_url(SHARED_REDIS_URL, socket_timeout=2)
    client.ping()  # a clear failure when scripts/ensure_redis.sh was not run
    return client


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateRedis:
    """A redis-server of the test's own on a free port: started, stopped (SIGKILL, as a crash) and
    restarted on the same port."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = workdir
        self.port = port or _free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        binary = shutil.which("redis-server")
        assert binary, "redis-server not installed: run scripts/ensure_redis.sh"
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return self
            except redis.RedisError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2)
