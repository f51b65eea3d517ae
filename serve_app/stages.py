"""The contract between the query service and its four stages, and the logic both implementations
share: error mapping, the retry when the index switches embedding models mid-request, the retry
when a stage's replica dies mid-request, and the health status of all stages.

`ServeStages` (serve_app.deployments) reaches the stages through DeploymentHandles; `LocalStages`
(serve_app.local) calls the same components in process. They differ only in how a call is made.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from rag_core.index_reader import RetrievedChunk
from serve_app.conversation import REWRITE_AS_IS, ROLE_USER, Standalone, Turn, needs_history
from serve_app.generation import MODE_DEGRADED, Answer, cited_numbers
from serve_app.retrieval import IndexUnavailable, ModelMismatch
from serve_app.retrieval_request import RetrievalRequest

T = TypeVar("T")

log = logging.getLogger("serve_app.stages")

STAGE_NAMES = ("embedder", "retriever", "reranker", "generator")
# After a stage lost a replica, its calls wait this long (api.replica_wait_s) for another replica
# or the replacement, then answer 503 + Retry-After instead of holding the client until it is up.
REPLICA_WAIT_S = 3.0
REPLICA_RETRY_AFTER_S = 5
OVERLOAD_RETRY_AFTER_S = 1  # a full queue drains in well under a second at this service's latencies
STATUS_TIMEOUT_S = 2.0  # /health reports a stage that cannot answer this fast as unavailable


class ServiceUnavailable(RuntimeError):
    """A stage cannot serve now (no index, a swap in progress, load shedding); maps to 503."""

    def __init__(self, message: str, retry_after_s: int = 1, load_shed: bool = False):
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.load_shed = load_shed  # refused because a stage's queue is full (counted as shed load)


async def guarded(call: Awaitable[T]) -> T:
    """A stage's result; an overloaded replica or a missing index becomes a 503, never a trace."""
    try:
        return await call
    except (BackPressureError, DeploymentUnavailableError) as exc:
        message = f"overloaded, retry shortly ({type(exc).__name__})"
        raise ServiceUnavailable(message, retry_after_s=OVERLOAD_RETRY_AFTER_S, load_shed=True) from None
    except IndexUnavailable as exc:
        raise ServiceUnavailable(f"index not available: {exc}", retry_after_s=5) from None


class Stages(ABC):
    """The stages as QueryService calls them. Subclasses implement the `_call_*` methods.

    A call that fails because the replica serving it died (RayActorError: killed, its node lost)
    is made once more: Serve's router has dropped the dead replica, so the retry goes to another
    one, or waits up to `replica_wait_s` for the replacement. Every call is a read, so a retry is
    safe; only a stream that has started is not retried. Until a call to that stage succeeds
    again, its calls wait at most `replica_wait_s`, then answer 503 with Retry-After."""

    def __init__(self, replica_wait_s: float = REPLICA_WAIT_S) -> None:
        self.replica_wait_s = replica_wait_s
        self._recovering: dict[str, float] = {}  # stage -> when it lost a replica (monotonic)

    async def embed(self, text: str) -> tuple[list[float], str]:
        return await self._call("embedder", lambda: self._call_embed(text))

    async def retrieve(self, request: RetrievalRequest) -> tuple[list[RetrievedChunk], str]:
        """Chunks and the index version that served them. If the index switched embedding models
        between the embedding and the search, the query is embedded again, once."""
        try:
            return await self._call("retriever", lambda: self._call_retrieve(request))
        except ModelMismatch as exc:
            if request.vector is None:
                raise ServiceUnavailable(f"index is switching embedding models: {exc}") from None
        await asyncio.sleep(0.5)
        request = request.embedded(*await self.embed(request.query))
        try:
            return await self._call("retriever", lambda: self._call_retrieve(request))
        except ModelMismatch as exc:
            raise ServiceUnavailable(f"index is switching embedding models: {exc}") from None

    async def rerank(self, query: str, chunks: list[RetrievedChunk], top_k: int) -> tuple[list[RetrievedChunk], str]:
        return await self._call("reranker", lambda: self._call_rerank(query, chunks, top_k))

    async def answer(self, question: str, chunks: list[RetrievedChunk]) -> Answer:
        return await self._call("generator", lambda: self._call_answer(question, chunks))

    async def sources(self, access: dict[str, Any] | None) -> list[str]:
        """The index's named sources this read filter can see (what GET /v1/models lists)."""
        return await self._call("retriever", lambda: self._call_sources(access))

    async def index_status(self, access: dict[str, Any] | None) -> dict[str, Any]:
        """The served version's holdings for this read filter (all with None), versions, last ingest."""
        return await self._call("retriever", lambda: self._call_index_status(access))

    async def standalone(self, history: Sequence[Turn], question: str) -> Standalone:
        """The question to retrieve for: as it is when it stands alone (no call made), else rewritten
        from the history by the Generator (the LLM, or the deterministic rewrite without one)."""
        if not any(turn.role == ROLE_USER for turn in history) or not needs_history(question):
            return Standalone(question, REWRITE_AS_IS)
        return await self._call("generator", lambda: self._call_condense(list(history), question))

    async def answer_stream(self, question: str, chunks: list[RetrievedChunk]) -> AsyncIterator[dict[str, Any]]:
        """The Generator's events. If it fails before its first token, the error maps as any
        call's (a lost replica: 503); after it, the stream still ends with a `done` event: the
        text so far, marked degraded, so no client is left with a stream that just stops."""
        parts: list[str] = []
        events = self._call_answer_stream(question, chunks)
        try:
            while True:
                try:
                    event = await guarded(self._bounded("generator", anext(events)))
                except StopAsyncIteration:
                    return
                if "token" in event:
                    parts.append(event["token"])
                yield event
        except (RayActorError, ServiceUnavailable) as exc:
            if isinstance(exc, RayActorError):
                self._lost("generator", exc)
            if not parts:
                raise self._unavailable("generator") if isinstance(exc, RayActorError) else exc from None
            text = "".join(parts)
            error = f"the generator stage failed mid-answer ({type(exc).__name__})"
            yield {"done": Answer(text, MODE_DEGRADED, "generator", error=error, cited=cited_numbers(text, len(chunks)))}

    async def status(self) -> dict[str, Any]:
        """Each stage's status; a stage that cannot answer (in STATUS_TIMEOUT_S) is reported
        unavailable, not raised."""
        results = await asyncio.gather(
            *(asyncio.wait_for(self._call_status(name), STATUS_TIMEOUT_S) for name in STAGE_NAMES), return_exceptions=True
        )
        status: dict[str, Any] = {}
        for name, result in zip(STAGE_NAMES, results):
            if isinstance(result, BaseException):
                status[name] = {"error": f"{type(result).__name__}", "name": "unavailable", "ready": False}
            else:
                status[name] = result
        return status

    async def _call(self, stage: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` on `stage`, made once more if the replica serving it died."""
        try:
            return await guarded(self._bounded(stage, call()))
        except RayActorError as exc:
            self._lost(stage, exc)
        try:
            return await guarded(self._bounded(stage, call()))
        except RayActorError:
            raise self._unavailable(stage) from None

    async def _bounded(self, stage: str, call: Awaitable[T]) -> T:
        """The call's result; bounded by `replica_wait_s` while `stage` is replacing a replica."""
        if stage not in self._recovering:
            return await call
        try:
            result = await asyncio.wait_for(call, self.replica_wait_s)
        except TimeoutError:
            raise self._unavailable(stage) from None
        if self._recovering.pop(stage, None) is not None:
            log.info("stage recovered", extra={"fields": {"stage": stage}})
        return result

    def _lost(self, stage: str, exc: RayActorError) -> None:
        if stage not in self._recovering:
            self._recovering[stage] = time.monotonic()
            log.warning("stage replica lost", extra={"fields": {"stage": stage, "error": f"{type(exc).__name__}: {exc}"[:300]}})

    def _unavailable(self, stage: str) -> ServiceUnavailable:
        return ServiceUnavailable(f"the {stage} stage lost a replica and is replacing it; retry shortly", REPLICA_RETRY_AFTER_S)

    @abstractmethod
    async def _call_embed(self, text: str) -> tuple[list[float], str]: ...

    @abstractmethod
    async def _call_retrieve(self, request: RetrievalRequest) -> tuple[list[RetrievedChunk], str]: ...

    @abstractmethod
    async def _call_rerank(self, query: str, chunks: list[RetrievedChunk], top_k: int) -> tuple[list[RetrievedChunk], str]: ...

    @abstractmethod
    async def _call_answer(self, question: str, chunks: list[RetrievedChunk]) -> Answer: ...

    @abstractmethod
    def _call_answer_stream(self, question: str, chunks: list[RetrievedChunk]) -> AsyncIterator[dict[str, Any]]: ...

    @abstractmethod
    async def _call_sources(self, access: dict[str, Any] | None) -> list[str]: ...

    @abstractmethod
    async def _call_index_status(self, access: dict[str, Any] | None) -> dict[str, Any]: ...

    @abstractmethod
    async def _call_condense(self, history: list[Turn], question: str) -> Standalone: ...

    @abstractmethod
    async def _call_status(self, stage: str) -> dict[str, Any]: ...
