"""A soak: mixed load (answers, cache hits, retrievals) against a deployed graph for a while, with a
re-ingest every so often, sampling every replica's memory and file descriptors and Redis's client
connections. `benchmarks/soak.py` runs it for 20 minutes; the CI test for 2.

Leaks show as growth between the first sample after warm-up and the last; a replica replaced
mid-soak (a new pid) is reported, not compared.
"""

from __future__ import annotations

import itertools
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fault_harness import QUESTIONS

SAMPLE_EVERY_S = 10.0


@dataclass
class Sample:
    at_s: float
    replicas: dict[int, dict[str, Any]]  # pid -> {deployment, rss_mb, fds}
    redis_clients: int | None


@dataclass
class SoakReport:
    duration_s: float
    requests: int
    statuses: dict[str, int]
    server_errors: int
    reingests: list[dict[str, Any]]
    replicas: list[dict[str, Any]]  # per pid: deployment, rss start/end/max (MB), growth %, fds start/end
    redis_clients_start: int | None
    redis_clients_end: int | None
    latency_p50_ms: float
    latency_p95_ms: float
    samples: int = 0
    notes: list[str] = field(default_factory=list)


def replica_processes(app: str) -> dict[int, str]:
    """pid -> deployment name of the app's ALIVE replicas (Ray's state API)."""
    from ray.util.state import list_actors

    prefix = f"ServeReplica:{app}:"
    actors = list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000)
    return {int(a.pid): a.class_name.removeprefix(prefix) for a in actors if a.class_name.startswith(prefix)}


def process_memory_and_fds(pid: int) -> tuple[float, int] | None:
    """(RSS in MB, open file descriptors) of a local process from /proc; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        return rss_kb / 1024, len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except (FileNotFoundError, ProcessLookupError, StopIteration):
        return None


def sample(app: str, at_s: float, redis_url: str | None) -> Sample:
    replicas: dict[int, dict[str, Any]] = {}
    for pid, deployment in replica_processes(app).items():
        if (measured := process_memory_and_fds(pid)) is not None:
            replicas[pid] = {"deployment": deployment, "rss_mb": measured[0], "fds": measured[1]}
    clients = None
    if redis_url:
        import redis

        connection = redis.Redis.from_url(redis_url)
        try:
            clients = int(connection.info("clients")["connected_clients"]) - 1  # not this one
        finally:
            connection.close()
    return Sample(at_s, replicas, clients)


class Soak:
    """Mixed load from `workers` clients on `base_url` for `duration_s`; `reingest()` is called
    every `reingest_every_s`; samples after `warmup_s` and every SAMPLE_EVERY_S."""

    def __init__(
        self,
        base_url: str,
        app: str,
        duration_s: float,
        reingest: Callable[[int], dict[str, Any]],
        reingest_every_s: float,
        redis_url: str | None,
        workers: int = 2,
        warmup_s: float = 20.0,
    ):
        self.base_url, self.app, self.duration_s = base_url, app, duration_s
        self.reingest, self.reingest_every_s, self.redis_url = reingest, reingest_every_s, redis_url
        self.workers, self.warmup_s = workers, warmup_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.statuses: Counter = Counter()
        self.latencies: list[float] = []
        self.errors: list[str] = []

    def _requests(self, worker: int):
        """Answers to new questions (cache misses), repeats (hits) and retrievals, in turn."""
        for n in itertools.count(worker):
            question = QUESTIONS[n % len(QUESTIONS)]
            kind = n % 3
            if kind == 0:
                yield "/v1/query", {"question": f"{question} (asked {n // 3})"}  # new wording: a miss
            elif kind == 1:
                yield "/v1/query", {"question": question}  # the same question again: a hit
            else:
                yield "/v1/retrieve", {"query": question, "top_k": 5}

    def _client(self, worker: int) -> None:
        with httpx.Client(timeout=60) as client:
            for path, body in self._requests(worker):
                if self._stop.is_set():
                    return
                started = time.monotonic()
                try:
                    response = client.post(f"{self.base_url}{path}", json=body)
                    status = response.status_code
                    if status >= 500:
                        with self._lock:
                            self.errors.append(f"{path} {status}: {response.text[:200]}")
                except httpx.HTTPError as exc:
                    status = 0
                    with self._lock:
                        self.errors.append(f"{path}: {type(exc).__name__}: {exc}")
                with self._lock:
                    self.statuses[str(status)] += 1
                    self.latencies.append(time.monotonic() - started)
                self._stop.wait(0.02)

    def run(self) -> SoakReport:
        threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(self.workers)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        samples: list[Sample] = []
        reingests: list[dict[str, Any]] = []
        next_reingest = self.reingest_every_s
        next_sample = self.warmup_s
        while (now := time.monotonic() - started) < self.duration_s:
            if now >= next_sample:
                samples.append(sample(self.app, now, self.redis_url))
                next_sample += SAMPLE_EVERY_S
            if now >= next_reingest:
                ingest_started = time.monotonic()
                summary = self.reingest(len(reingests) + 1)
                reingests.append({"at_s": round(now, 1), "took_s": round(time.monotonic() - ingest_started, 1), **summary})
                next_reingest += self.reingest_every_s
            time.sleep(0.5)
        samples.append(sample(self.app, time.monotonic() - started, self.redis_url))
        self._stop.set()
        for thread in threads:
            thread.join(70)
        return self._report(time.monotonic() - started, samples, reingests)

    def _report(self, duration_s: float, samples: list[Sample], reingests: list[dict[str, Any]]) -> SoakReport:
        first, last = samples[0], samples[-1]
        replicas = []
        for pid, start in sorted(first.replicas.items(), key=lambda item: item[1]["deployment"]):
            history = [s.replicas[pid] for s in samples if pid in s.replicas]
            end = last.replicas.get(pid)
            middle = history[len(history) // 2]  # growth that stops (allocator and store caches warming) is no leak
            replicas.append(
                {
                    "deployment": start["deployment"],
                    "pid": pid,
                    "rss_start_mb": round(start["rss_mb"], 1),
                    "rss_end_mb": round(end["rss_mb"], 1) if end else None,
                    "rss_max_mb": round(max(h["rss_mb"] for h in history), 1),
                    "rss_growth_pct": round(100 * (end["rss_mb"] / start["rss_mb"] - 1), 1) if end else None,
                    "rss_mid_mb": round(middle["rss_mb"], 1),
                    "rss_growth_second_half_pct": round(100 * (end["rss_mb"] / middle["rss_mb"] - 1), 1) if end else None,
                    "rss_mb_samples": [round(h["rss_mb"]) for h in history],
                    "fds_start": start["fds"],
                    "fds_end": end["fds"] if end else None,
                }
            )
        notes = [f"replica pid {pid} ({r['deployment']}) started mid-soak" for pid, r in last.replicas.items() if pid not in first.replicas]
        ordered = sorted(self.latencies)
        return SoakReport(
            duration_s=round(duration_s, 1),
            requests=sum(self.statuses.values()),
            statuses=dict(self.statuses),
            server_errors=sum(n for status, n in self.statuses.items() if status == "0" or status.startswith("5")),
            reingests=reingests,
            replicas=replicas,
            redis_clients_start=first.redis_clients,
            redis_clients_end=last.redis_clients,
            latency_p50_ms=round(statistics.median(ordered) * 1000, 1),
            latency_p95_ms=round(ordered[int(0.95 * (len(ordered) - 1))] * 1000, 1),
            samples=len(samples),
            notes=notes + self.errors[:20],
        )


def cli_reingest(source: Path, index_dir: Path, env: dict[str, str]) -> Callable[[int], dict[str, Any]]:
    """A re-ingest that adds one new file to `source` and runs the CLI as users do."""
    import json

    def reingest(number: int) -> dict[str, Any]:
        (source / f"soak-note-{number}.txt").write_text(f"Soak note {number}: the kestrel survey moved to bay {number}.\n")
        done = subprocess.run(
            [sys.executable, "-m", "ingest_jobs.index", "--source", str(source)], env=env, capture_output=True, text=True, timeout=600
        )
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        summary = json.loads(lines[-1]) if lines else {"error": done.stderr[-500:]}
        return {"returncode": done.returncode, "index_version": summary.get("index_version"), "error": summary.get("error")}

    return reingest
