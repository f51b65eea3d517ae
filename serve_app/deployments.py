"""Ray Serve deployments: thin wrappers that put the components on replicas, and the Stages
implementation that calls them through DeploymentHandles. Replica options (autoscaling, queue
limits, CPUs) come from configs/serve.yaml; the defaults here fit the graph on 2 CPUs."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from rag_core.index_reader import RetrievedChunk
from rag_core.index_store import VersionedIndex
from rag_core.logs import configure_json_logging
from rag_core.memory import limit_malloc_arenas
from rag_core.settings import RAGSettings
from serve_app.api import create_app, install_limits, install_security
from serve_app.chat.serving import ChatService
from serve_app.conversation import Standalone, Turn
from serve_app.documents.actor import ActorRegistry
from serve_app.documents.serving import DocumentService
from serve_app.embedder import QueryEmbedder
from serve_app.generation import Answer, AnswerGenerator
from serve_app.metrics import RayIndexMetrics, RayQueryMetrics
from serve_app.rate_limit import RateLimiter
from serve_app.redis_conn import redis_from_settings
from serve_app.reranking import Reranker
from serve_app.retrieval import HybridRetriever
from serve_app.retrieval_request import RetrievalRequest
from serve_app.service import QueryService
from serve_app.stages import OVERLOAD_RETRY_AFTER_S, REPLICA_RETRY_AFTER_S, REPLICA_WAIT_S, ServiceUnavailable, Stages

log = logging.getLogger("serve_app.deployments")

AUTOSCALE = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4}
# Serve notices a dead replica at its next health check (10 s by default): every 2 s here, so a
# killed replica is replaced sooner while its callers get 503 + Retry-After (README, Reliability).
HEALTH_CHECK_PERIOD_S = 2.0


def replica_options(name: str, max_ongoing: int, max_queued: int, cpus: float = 0.25) -> dict[str, Any]:
    """One deployment's Serve options (configs/serve.yaml may override them)."""
    return {
        "name": name,
        "ray_actor_options": {"num_cpus": cpus},
        "autoscaling_config": AUTOSCALE,
        "max_ongoing_requests": max_ongoing,
        "max_queued_requests": max_queued,
        "health_check_period_s": HEALTH_CHECK_PERIOD_S,
        # What Serve's proxy answers when the Ingress's own queue is full (a stage's full queue
        # reaches the Ingress as BackPressureError and is answered by it, the same way).
        "backpressure_config": {"status_code": 503, "retry_after_s": OVERLOAD_RETRY_AFTER_S},
    }


def _torch_threads(settings: RAGSettings) -> int:
    # A replica reserving a fraction of a CPU gets OMP_NUM_THREADS=1 from Ray; set threads explicitly.
    return settings.api.embedder_torch_threads or len(os.sched_getaffinity(0))


@serve.deployment(**replica_options("Embedder", 32, 256, cpus=0.5))
class EmbedderDeployment:
    def __init__(self, settings: RAGSettings):
        started = time.monotonic()
        configure_json_logging()
        self.embedder = QueryEmbedder(
            VersionedIndex.from_settings(settings),
            settings.embedding_device,
            _torch_threads(settings),
            settings.retrieval.reload_check_interval_s,
            settings.embedding_backend,
        )
        self.embedder.ensure_model(force=True)
        self.embed.set_max_batch_size(settings.api.embed_max_batch_size)
        self.embed.set_batch_wait_timeout_s(settings.api.embed_batch_wait_s)
        self.startup_s = time.monotonic() - started

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def embed(self, texts: list[str]) -> list[tuple[list[float], str]]:
        vectors, model = await asyncio.to_thread(self.embedder.embed, texts)
        return [(vector.tolist(), model) for vector in vectors]

    def status(self) -> dict[str, Any]:
        return {**self.embedder.status(), "startup_s": self.startup_s}


@serve.deployment(**replica_options("Retriever", 32, 256))
class RetrieverDeployment:
    def __init__(self, settings: RAGSettings):
        started = time.monotonic()
        configure_json_logging()
        # Retrievals run on asyncio's thread pool, and each thread would get its own malloc arena:
        # two keep each index swap's freed memory returnable (rag_core.memory).
        limit_malloc_arenas(2)
        self.retriever = HybridRetriever(VersionedIndex.from_settings(settings), settings.retrieval)
        if not self.retriever.maybe_reload():
            log.error("no index to serve yet", extra={"fields": {"error": self.retriever.last_error}})
        self.startup_s = time.monotonic() - started
        self.metrics = RayIndexMetrics()
        self._observe()
        self.retriever.follow_pointer(settings.retrieval.reload_check_interval_s, after_check=self._observe)

    def _observe(self) -> None:
        try:
            self.metrics.update(self.retriever.status())
        except Exception as exc:  # metrics must never stop the pointer from being followed
            log.warning("index metrics not updated", extra={"fields": {"error": str(exc)[:200]}})

    async def retrieve(self, request: RetrievalRequest) -> tuple[list[RetrievedChunk], str]:
        chunks, info = await asyncio.to_thread(self.retriever.retrieve, request)
        return chunks, info.version

    async def sources(self, access: dict[str, Any] | None) -> list[str]:
        return await asyncio.to_thread(self.retriever.sources, access)

    async def index_status(self, access: dict[str, Any] | None) -> dict[str, Any]:
        return await asyncio.to_thread(self.retriever.index_status, access)

    def status(self) -> dict[str, Any]:
        return {**self.retriever.status(), "startup_s": self.startup_s}


@serve.deployment(**replica_options("Reranker", 16, 128))
class RerankerDeployment:
    def __init__(self, settings: RAGSettings):
        started = time.monotonic()
        configure_json_logging()
        device = "cuda" if settings.embedding_device.startswith("cuda") else "cpu"
        self.reranker = Reranker(settings.rerank.model, device, threads=_torch_threads(settings))  # as in the Embedder
        self.startup_s = time.monotonic() - started

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def rerank(self, requests: list[tuple[str, list[RetrievedChunk], int]]) -> list[tuple[list[RetrievedChunk], str]]:
        ranked = await asyncio.to_thread(self.reranker.rerank_many, requests)
        return [(chunks, self.reranker.name) for chunks in ranked]

    def status(self) -> dict[str, Any]:
        return {**self.reranker.status(), "startup_s": self.startup_s}


@serve.deployment(**replica_options("Generator", 16, 128))
class GeneratorDeployment:
    def __init__(self, settings: RAGSettings):
        started = time.monotonic()
        configure_json_logging()
        self.generator = AnswerGenerator.from_settings(settings)
        self.startup_s = time.monotonic() - started

    async def answer(self, question: str, chunks: list[RetrievedChunk]) -> Answer:
        return await asyncio.to_thread(self.generator.answer, question, chunks)

    def answer_stream(self, question: str, chunks: list[RetrievedChunk]) -> Any:
        yield from self.generator.stream(question, chunks)

    async def condense(self, history: list[Turn], question: str) -> Standalone:
        return await asyncio.to_thread(self.generator.condense, history, question)

    def status(self) -> dict[str, Any]:
        return {**self.generator.status(), "startup_s": self.startup_s}


class ServeStages(Stages):
    """The stages reached through DeploymentHandles."""

    def __init__(
        self,
        embedder: Any,
        retriever: Any,
        reranker: Any,
        generator: Any,
        local_answers: AnswerGenerator | None = None,
        replica_wait_s: float = REPLICA_WAIT_S,
        generator_wait_s: float = 30.0,
    ):
        """`local_answers`: when no LLM is configured, answers are extractive, about a millisecond
        of work against several for a replica hop (README, Serving latency), so the Ingress makes
        them itself; the Generator deployment carries LLM calls."""
        super().__init__(replica_wait_s)
        self.handles = {"embedder": embedder, "retriever": retriever, "reranker": reranker, "generator": generator}
        self.local_answers = local_answers
        self.generator_wait_s = generator_wait_s

    async def _result(self, stage: str, response: Any) -> Any:
        """`await response`, with its wait for a replica bounded. Serve's router waits without
        end while a deployment has no replica (one killed, its replacement starting): a fast
        stage's call that no replica takes within `replica_wait_s` is a 503 with Retry-After, and
        the request is withdrawn. The Generator's wait is its LLM budget (answers queue there).
        The work itself, once a replica has the request, is not bounded here."""
        assign = getattr(response, "_fetch_future_result_async", None)
        if assign is None:  # another Ray: no bound, as before
            return await response
        wait_s = self.generator_wait_s if stage == "generator" else self.replica_wait_s
        try:
            replica_result = await asyncio.wait_for(assign(), wait_s)
        except TimeoutError:
            response.cancel()
            raise ServiceUnavailable(
                f"no {stage} replica took the request within {wait_s:g} s (one is being replaced, or all are busy); retry shortly",
                REPLICA_RETRY_AFTER_S,
            ) from None
        return await replica_result.get_async()

    async def _call_embed(self, text: str) -> tuple[list[float], str]:
        return await self._result("embedder", self.handles["embedder"].embed.remote(text))

    async def _call_retrieve(self, request: RetrievalRequest) -> tuple[list[RetrievedChunk], str]:
        return await self._result("retriever", self.handles["retriever"].retrieve.remote(request))

    async def _call_rerank(self, query: str, chunks: list[RetrievedChunk], top_k: int) -> tuple[list[RetrievedChunk], str]:
        return await self._result("reranker", self.handles["reranker"].rerank.remote((query, chunks, top_k)))

    async def _call_answer(self, question: str, chunks: list[RetrievedChunk]) -> Answer:
        if self.local_answers is not None:
            return self.local_answers.answer(question, chunks)
        return await self._result("generator", self.handles["generator"].answer.remote(question, chunks))

    async def _call_answer_stream(self, question: str, chunks: list[RetrievedChunk]) -> AsyncIterator[dict[str, Any]]:
        if self.local_answers is not None:
            for event in self.local_answers.stream(question, chunks):
                yield event
            return
        async for event in self.handles["generator"].options(stream=True).answer_stream.remote(question, chunks):
            yield event

    async def _call_sources(self, access: dict[str, Any] | None) -> list[str]:
        return await self._result("retriever", self.handles["retriever"].sources.remote(access))

    async def _call_index_status(self, access: dict[str, Any] | None) -> dict[str, Any]:
        return await self._result("retriever", self.handles["retriever"].index_status.remote(access))

    async def _call_condense(self, history: list[Turn], question: str) -> Standalone:
        if self.local_answers is not None:  # no LLM: the deterministic rewrite, a fraction of a millisecond
            return self.local_answers.condense(history, question)
        return await self._result("generator", self.handles["generator"].condense.remote(history, question))

    async def _call_status(self, stage: str) -> dict[str, Any]:
        return await self.handles[stage].status.remote()


@serve.deployment(**replica_options("Ingress", 64, 512))
@serve.ingress()  # the app is built in each replica, after __init__, by __serve_build_asgi_app__
class Ingress:
    def __init__(self, embedder: Any, retriever: Any, reranker: Any, generator: Any, settings: RAGSettings):
        configure_json_logging()
        self.settings = settings
        redis = redis_from_settings(settings)  # one pool per replica: cache and rate limits
        local_answers = None if settings.llm_base_url else AnswerGenerator.from_settings(settings)
        stages = ServeStages(
            embedder, retriever, reranker, generator, local_answers, settings.api.replica_wait_s, settings.generator.timeout_s
        )
        self.service = QueryService.from_settings(stages, settings, redis, RayQueryMetrics())
        self.rate_limiter = RateLimiter(redis, settings.auth.rate_limit_prefix)
        self.documents = DocumentService(ActorRegistry(settings), settings) if settings.documents.enabled else None

    def __serve_build_asgi_app__(self) -> Any:
        app = create_app(echo_request_id=False)  # Serve's proxy echoes X-Request-ID itself
        install_limits(app, self.settings)
        install_security(app, self.settings, self.rate_limiter, serve_http_host(self.settings))
        app.state.service = self.service
        app.state.chat = ChatService(self.service)
        app.state.documents = self.documents
        app.state.metrics = self.service.metrics
        return app


def serve_http_host(settings: RAGSettings) -> str:
    """The address Serve's HTTP proxies listen on (http_options.host in serve.yaml)."""
    try:
        from ray.serve.context import _get_global_client

        return _get_global_client().http_config.host
    except Exception as exc:  # a private API: if it moves, fall back to the settings' host
        log.warning("cannot read Serve's HTTP host; using api.host", extra={"fields": {"error": str(exc)[:200]}})
        return settings.api.host
