"""RAG metrics for the Ray dashboard. Every name starts with `rag_`; Ray's Prometheus endpoint
exports them with its `ray_` prefix (`ray_rag_requests_total`), plus Serve's deployment, replica
and application tags. `QueryMetrics` is what QueryService records into; `NullMetrics` is the
single-process app's, which has no Ray to export through."""

from __future__ import annotations

from typing import Any, Protocol

# Seconds: from a cache hit (about a millisecond) to an LLM answer (tens of seconds).
LATENCY_BOUNDARIES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
UNIT_BOUNDARIES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0]
STAGES = ("rewrite", "cache", "embed", "retrieve", "rerank", "generate", "total")


class QueryMetrics(Protocol):
    def request(self, route: str, status: int) -> None: ...
    def stage_seconds(self, stage: str, seconds: float) -> None: ...
    def cache(self, outcome: str) -> None: ...  # exact | semantic | miss
    def llm(self, event: str) -> None: ...  # timeout | error | circuit_open | degraded
    def load_shed(self, reason: str) -> None: ...
    def top_score(self, score: float) -> None: ...
    def faithfulness(self, share: float) -> None: ...


class NullMetrics:
    def request(self, route: str, status: int) -> None:
        pass

    def stage_seconds(self, stage: str, seconds: float) -> None:
        pass

    def cache(self, outcome: str) -> None:
        pass

    def llm(self, event: str) -> None:
        pass

    def load_shed(self, reason: str) -> None:
        pass

    def top_score(self, score: float) -> None:
        pass

    def faithfulness(self, share: float) -> None:
        pass


class RayQueryMetrics:
    """Created inside an Ingress replica (ray.serve.metrics adds the replica's tags)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self._requests = Counter("rag_requests_total", description="HTTP requests by route and status.", tag_keys=("route", "status"))
        self._latency = Histogram(
            "rag_stage_latency_seconds",
            description="Latency per query stage (rewrite, cache, embed, retrieve, rerank, generate, total).",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("stage",),
        )
        self._cache = Counter(
            "rag_cache_lookups_total", description="Answer cache lookups by outcome: exact, semantic (hits) or miss.", tag_keys=("outcome",)
        )
        self._llm = Counter(
            "rag_llm_events_total",
            description="LLM timeouts, errors, calls refused while the circuit is open (circuit_open), degraded (extractive) answers.",
            tag_keys=("event",),
        )
        self._shed = Counter(
            "rag_load_shed_total", description="Requests refused with 503 because a stage was overloaded.", tag_keys=("reason",)
        )
        self._top_score = Histogram(
            "rag_retrieval_top_score", description="Score of the best retrieved passage per query.", boundaries=UNIT_BOUNDARIES
        )
        self._faithfulness = Histogram(
            "rag_answer_faithfulness",
            description="Share of a generated answer's sentences supported by its passages.",
            boundaries=UNIT_BOUNDARIES,
        )

    def request(self, route: str, status: int) -> None:
        self._requests.inc(tags={"route": route, "status": str(status)})

    def stage_seconds(self, stage: str, seconds: float) -> None:
        self._latency.observe(seconds, tags={"stage": stage})

    def cache(self, outcome: str) -> None:
        self._cache.inc(tags={"outcome": outcome})

    def llm(self, event: str) -> None:
        self._llm.inc(tags={"event": event})

    def load_shed(self, reason: str) -> None:
        self._shed.inc(tags={"reason": reason})

    def top_score(self, score: float) -> None:
        self._top_score.observe(score)

    def faithfulness(self, share: float) -> None:
        self._faithfulness.observe(share)


class RayIndexMetrics:
    """Created inside a Retriever replica: the served index and the last successful ingest run
    (read from the audit trail, so they survive the ingest job's own process), refreshed as the
    replica polls the index pointer."""

    def __init__(self) -> None:
        from ray.serve.metrics import Gauge

        self._version = Gauge("rag_index_version", description="Number of the index version served (v000007 -> 7).")
        self._chunks = Gauge("rag_index_chunks", description="Chunks in the served index version.")
        self._age = Gauge("rag_index_age_seconds", description="Seconds since the served version was built.")
        self._ingest_age = Gauge(
            "rag_ingest_last_success_age_seconds", description="Seconds since the last successful ingest run (changes or not)."
        )
        self._files = Gauge(
            "rag_ingest_last_run_files", description="Files of the last successful ingest run by action.", tag_keys=("action",)
        )
        self._ingest_chunks = Gauge("rag_ingest_last_run_chunks", description="Chunks embedded by the last successful ingest run.")
        self._failures = Gauge("rag_ingest_last_run_failures", description="Files that failed in the last successful ingest run.")
        self._speed = Gauge("rag_ingest_last_run_chunks_per_second", description="Chunks per second of the last successful ingest run.")

    def update(self, status: dict[str, Any]) -> None:
        version = status.get("index_version")
        if version:
            self._version.set(int(version.lstrip("v") or 0))
        self._chunks.set(status.get("chunks_indexed", 0))
        if status.get("index_age_s") is not None:
            self._age.set(status["index_age_s"])
        ingest = status.get("last_ingest")
        if ingest:
            if ingest["age_s"] is not None:
                self._ingest_age.set(ingest["age_s"])
            for action in ("added", "changed", "reparsed", "deleted", "failed", "ignored"):
                self._files.set(ingest["files"].get(action, 0), tags={"action": action})
            self._ingest_chunks.set(ingest["chunks_added"])
            self._failures.set(ingest["failures"])
            self._speed.set(ingest["chunks_per_second"])
