"""Fault injection under load: steady requests against the service while a fault is injected, and
the figures each fault test reports (failed requests in the fault window and after recovery, p95
during recovery, time to recover). Reports are written to test-artifacts/faults/<name>.json, which
the README's reliability table quotes.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import REPO_ROOT

ARTIFACTS = REPO_ROOT / "test-artifacts" / "faults"

# Questions users ask of the samples (vacation, security, expenses, on-call), in turn.
QUESTIONS = [
    "How many days of paid vacation does an employee get each year?",
    "How often must passwords for production systems be rotated?",
    "How much is reimbursed per night for a hotel in London?",
    "How quickly must the primary on-call engineer acknowledge a page?",
    "Who do I contact about a suspected phishing email at work?",
    "What do I do when the dashboard shows that the index is stale?",
]


@dataclass
class Outcome:
    started: float  # seconds since the load began
    latency_s: float
    status: int  # HTTP status; 0 for a connection error or a client timeout
    retry_after: str | None
    error: str | None = None


@dataclass
class SteadyLoad:
    """`workers` clients, each sending one request after another (with `pause_s` between), until
    stopped: POST `path` with a JSON body made from a question."""

    base_url: str
    path: str = "/v1/retrieve"
    body: Callable[[str], dict[str, Any]] = lambda question: {"query": question, "top_k": 5}
    workers: int = 2
    pause_s: float = 0.05
    timeout_s: float = 30.0
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(self.workers)]
        self.t0 = 0.0

    def __enter__(self) -> SteadyLoad:
        self.t0 = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 5)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def _run(self, worker: int) -> None:
        with httpx.Client(timeout=self.timeout_s) as client:
            n = worker
            while not self._stop.is_set():
                question = QUESTIONS[n % len(QUESTIONS)]
                n += self.workers
                started = self.now()
                try:
                    response = client.post(f"{self.base_url}{self.path}", json=self.body(question))
                    outcome = Outcome(started, self.now() - started, response.status_code, response.headers.get("retry-after"))
                    if response.status_code != 200:
                        outcome.error = response.text[:300]
                except httpx.HTTPError as exc:
                    outcome = Outcome(started, self.now() - started, 0, None, f"{type(exc).__name__}: {exc}")
                with self._lock:
                    self.outcomes.append(outcome)
                self._stop.wait(self.pause_s)

    def between(self, start: float, end: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.started < end]


def p95(values: list[float]) -> float | None:
    if len(values) < 2:
        return values[0] if values else None
    return statistics.quantiles(values, n=20)[-1]


@dataclass
class FaultReport:
    fault: str
    load: str
    requests: int
    failed_in_fault_window: int
    failed_after_recovery: int
    statuses: dict[str, int]
    recovery_s: float
    p50_before_ms: float | None
    p95_during_recovery_ms: float | None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def failed_share_in_fault_window(self) -> float:
        window = self.extra.get("requests_in_fault_window", 0)
        return self.failed_in_fault_window / window if window else 0.0

    def write(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.json"
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        print(f"\nfault report {name}: {json.dumps(asdict(self))}")
        return path


def report(
    load: SteadyLoad, fault: str, load_text: str, since: float, fault_at: float, recovered_at: float, end: float, **extra: Any
) -> FaultReport:
    """Figures from `load`'s outcomes: before the fault (since..fault_at), in its window
    (fault_at..recovered_at), and after recovery (recovered_at..end). Failed: anything but 200."""
    before = load.between(since, fault_at)
    window = load.between(fault_at, recovered_at)
    after = load.between(recovered_at, end)
    everything = before + window + after
    statuses: dict[str, int] = {}
    for outcome in everything:
        statuses[str(outcome.status)] = statuses.get(str(outcome.status), 0) + 1
    ok_before = [o.latency_s * 1000 for o in before if o.status == 200]
    return FaultReport(
        fault=fault,
        load=load_text,
        requests=len(everything),
        failed_in_fault_window=sum(o.status != 200 for o in window),
        failed_after_recovery=sum(o.status != 200 for o in after),
        statuses=statuses,
        recovery_s=round(recovered_at - fault_at, 2),
        p50_before_ms=round(statistics.median(ok_before), 1) if ok_before else None,
        p95_during_recovery_ms=round(v, 1) if (v := p95([o.latency_s * 1000 for o in window])) is not None else None,
        extra={"requests_in_fault_window": len(window), **extra},
    )


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.25, what: str = "condition") -> float:
    """Seconds until `predicate()` held; fails after `timeout_s`."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what}: not met within {timeout_s} s")
        time.sleep(interval_s)
    return time.monotonic() - started


def replica_pids(app: str, deployment: str) -> list[int]:
    """PIDs of the ALIVE replica actors of one deployment (Ray's state API)."""
    from ray.util.state import list_actors

    actors = list_actors(filters=[("class_name", "=", f"ServeReplica:{app}:{deployment}"), ("state", "=", "ALIVE")], detail=True)
    return sorted(int(actor.pid) for actor in actors)


def running_replicas(app: str, deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[app].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def kill_process(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
