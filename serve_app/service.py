"""The query logic behind the HTTP routes, independent of where the stages run.

The stages (serve_app.stages) are reached through DeploymentHandles in the Serve graph
(serve_app.deployments) or called in process (serve_app.local, also the single-process benchmark
baseline).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from rag_core.access import Access
from rag_core.contextual import DOCUMENT_TITLE_KEY
from rag_core.index_reader import RetrievedChunk
from rag_core.index_store import VersionedIndex
from serve_app.cache import AnswerCache, CacheHit, CacheScope, CacheUnavailable, pipeline_identity
from serve_app.document_ranking import min_max_scaled, rank_documents
from serve_app.faithfulness import answer_sentences, supported_share
from serve_app.generation import ABSTAIN_ANSWER, MODE_DEGRADED, MODE_GENERATIVE, Answer, llm_event
from serve_app.metrics import NullMetrics, QueryMetrics
from serve_app.redis_conn import FailFastRedis
from serve_app.retrieval_request import RetrievalRequest
from serve_app.schemas import (
    HealthResponse,
    QueryRequest,
    QueryResponse,
    RetrievedDocument,
    RetrieveRequest,
    RetrieveResponse,
    Source,
    SourceLocation,
)
from serve_app.stages import ServiceUnavailable, Stages

log = logging.getLogger("serve_app.query")


@dataclass
class Retrieved:
    chunks: list[RetrievedChunk]
    index_version: str
    reranker: str | None


@dataclass
class CacheLookup:
    """What the cache check found, and what a miss reuses: the scope and the query embedding."""

    scope: CacheScope | None
    embedding: tuple[list[float], str] | None = None
    hit: CacheHit | None = None


# Set on a response by the request that produced it, never taken from the cache.
_PER_REQUEST_FIELDS = {"request_id", "latency_ms", "cached", "cache"}


def source_location(chunk: RetrievedChunk) -> SourceLocation:
    confidence = chunk.metadata.get("ocr_confidence")
    return SourceLocation(
        **chunk.location.to_dict(),
        ocr=bool(chunk.metadata.get("ocr", False)),
        ocr_confidence=float(confidence) if confidence is not None else None,
    )


def to_sources(chunks: list[RetrievedChunk]) -> list[Source]:
    return [
        Source(
            file=c.file,
            source=c.metadata.get("source") or None,
            page=c.page,
            location=source_location(c),
            chunk_id=c.chunk_id,
            score=round(c.score, 6),
            text=c.text,
        )
        for c in chunks
    ]


class StageClock:
    """Per-request stage latencies (milliseconds), for the query log line and the metrics."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        began = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = round(self.ms.get(name, 0.0) + (time.perf_counter() - began) * 1000, 3)

    def total_ms(self) -> float:
        return round((time.perf_counter() - self.started) * 1000, 3)

    def server_timing(self) -> str:
        """The stages as an HTTP Server-Timing header value (shown by browsers' developer tools)."""
        stages = [(name, ms) for name, ms in self.ms.items() if name != "total"]
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in [*stages, ("total", self.ms.get("total", self.total_ms()))])


class QueryService:
    def __init__(
        self,
        stages: Stages,
        settings: Any,
        cache: AnswerCache | None = None,
        index_version: Callable[[], str | None] | None = None,
        metrics: QueryMetrics | None = None,
    ):
        """`cache` with `index_version` (the current version pointer, read before any downstream
        call) enables answer caching; without them every query is answered afresh."""
        self.stages = stages
        self.settings = settings
        self.cache = cache if cache is not None and index_version is not None else None
        self.index_version = index_version
        self.metrics: QueryMetrics = metrics or NullMetrics()
        self.pipeline = pipeline_identity(settings)
        self.startup_time_seconds: float | None = None
        self._background: set[asyncio.Task] = set()

    @classmethod
    def from_settings(cls, stages: Stages, settings: Any, redis: FailFastRedis | None, metrics: QueryMetrics | None = None) -> QueryService:
        """The answer cache (on the replica's Redis pool, else in-process) as the settings say."""
        cache = AnswerCache.from_settings(settings, redis) if settings.cache.enabled else None
        return cls(stages, settings, cache=cache, index_version=VersionedIndex.from_settings(settings).current_version, metrics=metrics)

    async def _retrieve(
        self,
        access: Access,
        *,
        query: str,
        top_k: int,
        where: dict | None,
        mode: str | None = None,
        rerank: bool | None = None,
        mmr: bool | None = None,
        embedding: tuple[list[float], str] | None = None,
        clock: StageClock | None = None,
    ) -> Retrieved:
        """Embed (unless `embedding` is given or the mode is lexical), retrieve, rerank; the
        client's choices over the settings' defaults, resolved here once."""
        clock = clock or StageClock()
        rerank = self.settings.rerank.enabled if rerank is None else rerank
        candidates = max(top_k, self.settings.rerank.candidates) if rerank else top_k
        request = RetrievalRequest.resolve(
            self.settings.retrieval, query=query, top_k=candidates, mode=mode, mmr=mmr, where=where, access=access.read_filter()
        )
        if request.needs_vector:
            if embedding is None:
                with clock.stage("embed"):
                    embedding = await self.stages.embed(query)
            request = request.embedded(*embedding)
        with clock.stage("retrieve"):
            chunks, version = await self.stages.retrieve(request)
        reranker = None
        if rerank and chunks:
            with clock.stage("rerank"):
                chunks, reranker = await self.stages.rerank(query, chunks, top_k)
        if chunks:
            self.metrics.top_score(chunks[0].score)
        return Retrieved(chunks[:top_k], version, reranker)

    async def retrieve(self, request: RetrieveRequest, access: Access, clock: StageClock | None = None) -> RetrieveResponse:
        clock = clock or StageClock()
        by_document = request.group_by == "document"
        rerank = self.settings.rerank.enabled if request.rerank is None else request.rerank
        top_k = request.top_k
        if by_document:
            # Documents are formed from the candidates: the fused ones, or, when reranking, only
            # those the reranker scores (a cross-encoder over 100 passages would take seconds).
            top_k = max(top_k, self.settings.rerank.candidates if rerank else self.settings.retrieval.document_candidates)
        got = await self._retrieve(
            access,
            query=request.query,
            top_k=top_k,
            where=request.filters,
            mode=request.mode,
            rerank=rerank,
            mmr=False if by_document else request.mmr,  # MMR diversifies chunks; documents are distinct already
            clock=clock,
        )
        documents = self._rank_documents(got.chunks, request.top_k, reranked=got.reranker is not None) if by_document else None
        return RetrieveResponse(
            results=[document.passages[0] for document in documents] if documents is not None else to_sources(got.chunks),
            documents=documents,
            index_version=got.index_version,
            reranker=got.reranker,
            mode=request.mode or self.settings.retrieval.mode,
            latency_ms=round(clock.total_ms(), 2),
        )

    def _rank_documents(self, chunks: list[RetrievedChunk], top_k: int, *, reranked: bool) -> list[RetrievedDocument]:
        # A cross-encoder's scores are logits, often negative, where a further passage would lower
        # its document's sum: they are min-max scaled over the candidates first.
        scores = min_max_scaled([chunk.score for chunk in chunks]) if reranked else [chunk.score for chunk in chunks]
        ranked = rank_documents(
            zip(chunks, scores),
            key=lambda chunk: (chunk.metadata.get("source") or None, chunk.file),
            decay=self.settings.retrieval.document_decay,
            top_k=top_k,
        )
        return [
            RetrievedDocument(
                file=document.items[0].file,
                source=document.key[0],
                title=document.items[0].metadata.get(DOCUMENT_TITLE_KEY) or None,
                score=round(document.score, 6),
                passages=to_sources(document.items),
            )
            for document in ranked
        ]

    async def _check_cache(self, request: QueryRequest, access: Access, clock: StageClock) -> CacheLookup:
        """Exact lookup before any downstream call; on a miss, the query is embedded once, for the
        semantic lookup and then for retrieval."""
        version = self._current_version() if self.cache else None
        if version is None:  # no cache, no index yet or an unreadable pointer (retrieval will say so)
            return CacheLookup(None)
        assert self.cache is not None
        lookup = CacheLookup(CacheScope(version, request.filters, request.top_k, self.pipeline, access.scope_key))
        if request.use_cache:
            with clock.stage("cache"):
                lookup.hit = await self.cache.lookup_exact(lookup.scope, request.question)
            if lookup.hit:
                self.metrics.cache("exact")
                return lookup
        if self.settings.retrieval.mode != "lexical":
            with clock.stage("embed"):
                lookup.embedding = await self.stages.embed(request.question)
            if request.use_cache:
                with clock.stage("cache"):
                    lookup.hit = await self.cache.lookup_semantic(lookup.scope, request.question, lookup.embedding[0])
        if request.use_cache:
            self.metrics.cache(lookup.hit.kind if lookup.hit else "miss")
        return lookup

    def _current_version(self) -> str | None:
        if self.index_version is None:
            return None
        try:
            return self.index_version()
        except Exception as exc:  # answer uncached rather than fail: the retriever has its own copy
            log.warning("index pointer unreadable; cache skipped", extra={"fields": {"error": str(exc)[:200]}})
            return None

    async def _remember(self, lookup: CacheLookup, request: QueryRequest, response: QueryResponse) -> None:
        # A degraded answer (LLM down) is not worth keeping: the next request may get a real one.
        if self.cache is None or lookup.scope is None or response.mode == MODE_DEGRADED:
            return
        # Filed under the version that actually answered: the retriever may lag the pointer briefly.
        scope = replace(lookup.scope, index_version=response.index_version)
        vector = lookup.embedding[0] if lookup.embedding else None
        await self.cache.store_response(scope, request.question, vector, response.model_dump(exclude=_PER_REQUEST_FIELDS))

    def _cached(self, hit: CacheHit, request_id: str, clock: StageClock) -> QueryResponse:
        return QueryResponse(**hit.response, cached=True, cache=hit.kind, request_id=request_id, latency_ms=round(clock.total_ms(), 2))

    async def query(self, request: QueryRequest, request_id: str, access: Access, clock: StageClock | None = None) -> QueryResponse:
        clock = clock or StageClock()
        try:
            lookup = await self._check_cache(request, access, clock)
            if lookup.hit:
                response = self._cached(lookup.hit, request_id, clock)
            else:
                got = await self._retrieve(
                    access, query=request.question, top_k=request.top_k, where=request.filters, embedding=lookup.embedding, clock=clock
                )
                with clock.stage("generate"):
                    answer = await self.stages.answer(request.question, got.chunks)
                response = self._response(request_id, got, answer, clock)
                self._observe_answer(answer, got)
                await self._remember(lookup, request, response)
        except Exception as exc:
            self._finish(request, request_id, access, clock, None, exc)
            raise
        self._finish(request, request_id, access, clock, response, None)
        return response

    async def query_events(self, request: QueryRequest, request_id: str, access: Access) -> AsyncIterator[str]:
        """Server-sent events: `token` events with answer text, then one `done` event (the full response).
        A cached answer is streamed the same way: its text as one token event, then `done`."""
        async for event in self.answer_events(request, request_id, access):
            if "token" in event:
                yield f"event: token\ndata: {json.dumps({'text': event['token']})}\n\n"
            else:
                yield f"event: done\ndata: {event['done'].model_dump_json()}\n\n"

    async def answer_events(
        self, request: QueryRequest, request_id: str, access: Access, clock: StageClock | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The answer as it is made: {"token": text} events, then one {"done": QueryResponse}.
        A cached answer comes as one token event with its whole text."""
        clock = clock or StageClock()
        try:
            lookup = await self._check_cache(request, access, clock)
            if lookup.hit:
                response = self._cached(lookup.hit, request_id, clock)
                yield {"token": response.answer}
                self._finish(request, request_id, access, clock, response, None)
                yield {"done": response}
                return
            got = await self._retrieve(
                access, query=request.question, top_k=request.top_k, where=request.filters, embedding=lookup.embedding, clock=clock
            )
            generation_started = time.perf_counter()
            async for event in self.stages.answer_stream(request.question, got.chunks):
                if "token" in event:
                    yield {"token": event["token"]}
                else:
                    clock.ms["generate"] = round((time.perf_counter() - generation_started) * 1000, 3)
                    response = self._response(request_id, got, event["done"], clock)
                    self._observe_answer(event["done"], got)
                    await self._remember(lookup, request, response)
                    self._finish(request, request_id, access, clock, response, None)
                    yield {"done": response}
        except Exception as exc:
            self._finish(request, request_id, access, clock, None, exc)
            raise

    async def purge_cache(self, index_version: str | None = None) -> int:
        if self.cache is None:
            return 0
        try:
            return await self.cache.purge(index_version)
        except CacheUnavailable as exc:
            raise ServiceUnavailable(f"cache not reachable: {exc}", retry_after_s=5) from None

    def _response(self, request_id: str, got: Retrieved, answer: Answer, clock: StageClock) -> QueryResponse:
        return QueryResponse(
            answer=answer.text,
            sources=to_sources(got.chunks),
            mode=answer.mode,
            cached=False,
            cache=None,
            latency_ms=round(clock.total_ms(), 2),
            request_id=request_id,
            index_version=got.index_version,
            reranker=got.reranker,
            generator=answer.generator,
        )

    def _observe_answer(self, answer: Answer, got: Retrieved) -> None:
        """LLM events now; the faithfulness estimate after the response, off the request path."""
        if answer.mode == MODE_DEGRADED:
            self.metrics.llm("degraded")
            self.metrics.llm(llm_event(answer.error))
        if answer.mode == MODE_GENERATIVE and answer.text != ABSTAIN_ANSWER and self.settings.observability.faithfulness and got.chunks:
            task = asyncio.create_task(self._estimate_faithfulness(answer.text, [c.text for c in got.chunks]))
            self._background.add(task)  # keep a reference until it is done
            task.add_done_callback(self._background.discard)

    async def _estimate_faithfulness(self, answer: str, passages: list[str]) -> None:
        sentences = answer_sentences(answer)
        if not sentences:
            return
        try:
            vectors = await asyncio.gather(*(self.stages.embed(text) for text in sentences + passages))
        except Exception as exc:  # an estimate that cannot be made is logged, never raised
            log.warning("faithfulness not estimated", extra={"fields": {"error": f"{type(exc).__name__}: {exc}"[:200]}})
            return
        share = supported_share(
            [v for v, _ in vectors[: len(sentences)]],
            [v for v, _ in vectors[len(sentences) :]],
            self.settings.observability.faithfulness_threshold,
        )
        if share is not None:
            self.metrics.faithfulness(share)

    def _finish(
        self,
        request: QueryRequest,
        request_id: str,
        access: Access,
        clock: StageClock,
        response: QueryResponse | None,
        error: BaseException | None,
    ) -> None:
        """Stage metrics and the one structured log line of this query."""
        clock.ms["total"] = clock.total_ms()
        for stage, ms in clock.ms.items():
            self.metrics.stage_seconds(stage, ms / 1000)
        fields: dict[str, Any] = {
            "request_id": request_id,
            "question_chars": len(request.question),
            "tenant": access.tenant,
            "latency_ms": clock.ms["total"],
            "stages_ms": clock.ms,
            "chunks_retrieved": len(response.sources) if response else 0,
            "cached": response.cached if response else False,
            "cache": response.cache if response else None,
            "answer_chars": len(response.answer) if response else 0,
            "sources": [s.chunk_id for s in response.sources] if response else [],
            "mode": response.mode if response else None,
            "index_version": response.index_version if response else None,
            "error": f"{type(error).__name__}: {error}"[:500] if error else None,
        }
        if self.settings.api.log_questions:
            fields["question"] = request.question
        log.log(logging.WARNING if error else logging.INFO, "query", extra={"fields": fields})

    def _startup_seconds(self, status: dict[str, Any]) -> float:
        """How long the service took to start: set by the caller, else the slowest stage's startup."""
        if self.startup_time_seconds is not None:
            return self.startup_time_seconds
        stage_startups = [part.get("startup_s") for part in status.values() if isinstance(part, dict)]
        return max((s for s in stage_startups if isinstance(s, (int, float))), default=0.0)

    async def health(self) -> HealthResponse:
        status = await self.stages.status()
        reasons: list[str] = []
        retriever = status["retriever"]
        embedder = status["embedder"]
        if not retriever.get("ready"):
            reasons.append(f"index: {retriever.get('error')}")
        if embedder.get("error"):
            reasons.append(f"embedding model: {embedder['error']}")
        unhealthy = bool(reasons)
        reranker = status["reranker"]
        generator = status["generator"]
        if self.settings.rerank.enabled and reranker.get("fallback"):
            reasons.append(f"reranker fallback: {reranker.get('reason')}")
        if generator.get("last_error"):
            reasons.append(f"LLM: {generator['last_error']}")
        ingest = retriever.get("last_ingest")
        stale_after = self.settings.observability.stale_index_after_s
        if not unhealthy and ingest and ingest.get("age_s") is not None and ingest["age_s"] > stale_after:
            reasons.append(f"index stale: no successful ingest for {ingest['age_s'] / 3600:.1f} h (limit {stale_after / 3600:.1f} h)")
        cache = await self.cache.status() if self.cache else {"backend": "off", "connected": False}
        if self.cache and not cache["connected"]:
            reasons.append(f"cache: {cache['backend']} not reachable, answering uncached")
        state = "unhealthy" if unhealthy else ("degraded" if reasons else "healthy")
        return HealthResponse(
            status=state,
            reasons=reasons,
            chunks_indexed=retriever.get("chunks_indexed", 0),
            index_version=retriever.get("index_version"),
            embedding_model=embedder.get("model") or retriever.get("embedding_model"),
            reranker=reranker["name"],
            generator=generator["name"],
            cache=cache["backend"],
            cache_connected=cache["connected"],
            last_indexed_at=retriever.get("last_indexed_at"),
            startup_time_seconds=round(self._startup_seconds(status), 3),
        )
