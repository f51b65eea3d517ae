"""The query logic behind the HTTP routes, independent of where the stages run.

`Stages` is implemented twice: by DeploymentHandles in the Serve graph (serve_app.deployments) and
by in-process components (serve_app.local), which is also the single-process benchmark baseline.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Protocol

from rag_core.access import Access
from rag_core.index_reader import RetrievedChunk
from serve_app.cache import AnswerCache, CacheHit, CacheScope, CacheUnavailable, pipeline_identity, scope_for_version
from serve_app.generation import MODE_DEGRADED, Answer
from serve_app.schemas import HealthResponse, QueryRequest, QueryResponse, RetrieveRequest, RetrieveResponse, Source

log = logging.getLogger("serve_app.query")


class ServiceUnavailable(RuntimeError):
    """A stage cannot serve now (no index, a swap in progress, load shedding); maps to 503."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


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


class Stages(Protocol):
    async def embed(self, text: str) -> tuple[list[float], str]: ...
    async def retrieve(self, query: str, vector: list[float] | None, model: str | None, top_k: int, where: dict | None, mode: str, mmr: bool | None,
                       access: dict | None) -> tuple[list[RetrievedChunk], str]: ...
    async def rerank(self, query: str, chunks: list[RetrievedChunk], top_k: int) -> tuple[list[RetrievedChunk], str]: ...
    async def answer(self, question: str, chunks: list[RetrievedChunk]) -> Answer: ...
    def answer_stream(self, question: str, chunks: list[RetrievedChunk]) -> AsyncIterator[dict[str, Any]]: ...
    async def status(self) -> dict[str, Any]: ...


def to_sources(chunks: list[RetrievedChunk]) -> list[Source]:
    return [Source(file=c.file, page=c.page, chunk_id=c.chunk_id, score=round(c.score, 6), text=c.text) for c in chunks]


class QueryService:
    def __init__(self, stages: Stages, settings: Any, cache: AnswerCache | None = None,
                 index_version: Callable[[], str | None] | None = None):
        """`cache` with `index_version` (the current version pointer, read before any downstream
        call) enables answer caching; without them every query is answered afresh."""
        self.stages = stages
        self.settings = settings
        self.cache = cache if cache is not None and index_version is not None else None
        self.index_version = index_version
        self.pipeline = pipeline_identity(settings)
        self.startup_time_seconds: float | None = None

    async def _retrieve(self, access: Access, text: str, top_k: int, where: dict | None, mode: str | None, rerank: bool | None, mmr: bool | None,
                        embedding: tuple[list[float], str] | None = None) -> Retrieved:
        mode = mode or self.settings.retrieval.mode
        rerank = self.settings.rerank.enabled if rerank is None else rerank
        candidates = max(top_k, self.settings.rerank.candidates) if rerank else top_k
        vector, model = (None, None)
        if mode != "lexical":
            vector, model = embedding or await self.stages.embed(text)
        chunks, version = await self.stages.retrieve(text, vector, model, candidates, where, mode, mmr, access.read_filter())
        reranker = None
        if rerank and chunks:
            chunks, reranker = await self.stages.rerank(text, chunks, top_k)
        return Retrieved(chunks[:top_k], version, reranker)

    async def retrieve(self, request: RetrieveRequest, access: Access) -> RetrieveResponse:
        started = time.perf_counter()
        got = await self._retrieve(access, request.query, request.top_k, request.filters, request.mode, request.rerank, request.mmr)
        return RetrieveResponse(
            results=to_sources(got.chunks), index_version=got.index_version, reranker=got.reranker,
            mode=request.mode or self.settings.retrieval.mode, latency_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    async def _check_cache(self, request: QueryRequest, access: Access) -> CacheLookup:
        """Exact lookup before any downstream call; on a miss, the query is embedded once, for the
        semantic lookup and then for retrieval."""
        version = self.index_version() if self.cache and self.index_version else None
        if version is None:  # no cache, or no index yet (retrieval will say so)
            return CacheLookup(None)
        assert self.cache is not None
        lookup = CacheLookup(CacheScope(version, request.filters, request.top_k, self.pipeline, access.scope_key))
        if request.use_cache:
            lookup.hit = await self.cache.lookup_exact(lookup.scope, request.question)
            if lookup.hit:
                return lookup
        if self.settings.retrieval.mode != "lexical":
            lookup.embedding = await self.stages.embed(request.question)
            if request.use_cache:
                lookup.hit = await self.cache.lookup_semantic(lookup.scope, request.question, lookup.embedding[0])
        return lookup

    async def _remember(self, lookup: CacheLookup, request: QueryRequest, response: QueryResponse) -> None:
        # A degraded answer (LLM down) is not worth keeping: the next request may get a real one.
        if self.cache is None or lookup.scope is None or response.mode == MODE_DEGRADED:
            return
        # Filed under the version that actually answered: the retriever may lag the pointer briefly.
        scope = scope_for_version(lookup.scope, response.index_version)
        vector = lookup.embedding[0] if lookup.embedding else None
        await self.cache.store_response(scope, request.question, vector, response.model_dump(exclude=_PER_REQUEST_FIELDS))

    def _cached(self, hit: CacheHit, request_id: str, started: float) -> QueryResponse:
        return QueryResponse(**hit.response, cached=True, cache=hit.kind, request_id=request_id,
                             latency_ms=round((time.perf_counter() - started) * 1000, 2))

    async def query(self, request: QueryRequest, request_id: str, access: Access) -> QueryResponse:
        started = time.perf_counter()
        lookup = await self._check_cache(request, access)
        if lookup.hit:
            response = self._cached(lookup.hit, request_id, started)
        else:
            got = await self._retrieve(access, request.question, request.top_k, request.filters, None, None, None, lookup.embedding)
            answer = await self.stages.answer(request.question, got.chunks)
            response = self._response(request, request_id, got, answer, started)
            await self._remember(lookup, request, response)
        self._log(request, response)
        return response

    async def query_events(self, request: QueryRequest, request_id: str, access: Access) -> AsyncIterator[str]:
        """Server-sent events: `token` events with answer text, then one `done` event (the full response).
        A cached answer is streamed the same way: its text as one token event, then `done`."""
        started = time.perf_counter()
        lookup = await self._check_cache(request, access)
        if lookup.hit:
            response = self._cached(lookup.hit, request_id, started)
            yield f"event: token\ndata: {json.dumps({'text': response.answer})}\n\n"
            self._log(request, response)
            yield f"event: done\ndata: {response.model_dump_json()}\n\n"
            return
        got = await self._retrieve(access, request.question, request.top_k, request.filters, None, None, None, lookup.embedding)
        async for event in self.stages.answer_stream(request.question, got.chunks):
            if "token" in event:
                yield f"event: token\ndata: {json.dumps({'text': event['token']})}\n\n"
            else:
                response = self._response(request, request_id, got, event["done"], started)
                await self._remember(lookup, request, response)
                self._log(request, response)
                yield f"event: done\ndata: {response.model_dump_json()}\n\n"

    async def purge_cache(self, index_version: str | None = None) -> int:
        if self.cache is None:
            return 0
        try:
            return await self.cache.purge(index_version)
        except CacheUnavailable as exc:
            raise ServiceUnavailable(f"cache not reachable: {exc}", retry_after_s=5) from None

    def _response(self, request: QueryRequest, request_id: str, got: Retrieved, answer: Answer, started: float) -> QueryResponse:
        return QueryResponse(
            answer=answer.text, sources=to_sources(got.chunks), mode=answer.mode, cached=False, cache=None,
            latency_ms=round((time.perf_counter() - started) * 1000, 2), request_id=request_id,
            index_version=got.index_version, reranker=got.reranker, generator=answer.generator,
        )

    def _log(self, request: QueryRequest, response: QueryResponse) -> None:
        fields = {
            "request_id": response.request_id, "question_chars": len(request.question), "latency_ms": response.latency_ms,
            "chunks_retrieved": len(response.sources), "cached": response.cached, "cache": response.cache, "answer_chars": len(response.answer),
            "sources": [s.chunk_id for s in response.sources], "mode": response.mode, "index_version": response.index_version,
        }
        if self.settings.api.log_questions:
            fields["question"] = request.question
        log.info("query", extra={"fields": fields})

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
        cache = await self.cache.status() if self.cache else {"backend": "off", "connected": False}
        if self.cache and not cache["connected"]:
            reasons.append(f"cache: {cache['backend']} not reachable, answering uncached")
        state = "unhealthy" if unhealthy else ("degraded" if reasons else "healthy")
        return HealthResponse(
            status=state, reasons=reasons, chunks_indexed=retriever.get("chunks_indexed", 0),
            index_version=retriever.get("index_version"), embedding_model=embedder.get("model") or retriever.get("embedding_model"),
            reranker=reranker["name"], generator=generator["name"], cache=cache["backend"], cache_connected=cache["connected"],
            last_indexed_at=retriever.get("last_indexed_at"),
            startup_time_seconds=round(self._startup_seconds(status), 3),
        )
