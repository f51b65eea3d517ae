"""The contract between the query service and its four stages, and the logic both implementations
share: error mapping, the retry when the index switches embedding models mid-request, and the
health status of all stages.

`ServeStages` (serve_app.deployments) reaches the stages through DeploymentHandles; `LocalStages`
(serve_app.local) calls the same components in process. They differ only in how a call is made.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

from rag_core.index_reader import RetrievedChunk
from serve_app.conversation import REWRITE_AS_IS, ROLE_USER, Standalone, Turn, needs_history
from serve_app.generation import Answer
from serve_app.retrieval import IndexUnavailable, ModelMismatch
from serve_app.retrieval_request import RetrievalRequest

T = TypeVar("T")

STAGE_NAMES = ("embedder", "retriever", "reranker", "generator")


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
        raise ServiceUnavailable(f"overloaded, retry shortly ({type(exc).__name__})", retry_after_s=1, load_shed=True) from None
    except IndexUnavailable as exc:
        raise ServiceUnavailable(f"index not available: {exc}", retry_after_s=5) from None


class Stages(ABC):
    """The stages as QueryService calls them. Subclasses implement the `_call_*` methods."""

    async def embed(self, text: str) -> tuple[list[float], str]:
        return await guarded(self._call_embed(text))

    async def retrieve(self, request: RetrievalRequest) -> tuple[list[RetrievedChunk], str]:
        """Chunks and the index version that served them. If the index switched embedding models
        between the embedding and the search, the query is embedded again, once."""
        try:
            return await guarded(self._call_retrieve(request))
        except ModelMismatch as exc:
            if request.vector is None:
                raise ServiceUnavailable(f"index is switching embedding models: {exc}") from None
        await asyncio.sleep(0.5)
        request = request.embedded(*await self.embed(request.query))
        try:
            return await guarded(self._call_retrieve(request))
        except ModelMismatch as exc:
            raise ServiceUnavailable(f"index is switching embedding models: {exc}") from None

    async def rerank(self, query: str, chunks: list[RetrievedChunk], top_k: int) -> tuple[list[RetrievedChunk], str]:
        return await guarded(self._call_rerank(query, chunks, top_k))

    async def answer(self, question: str, chunks: list[RetrievedChunk]) -> Answer:
        return await guarded(self._call_answer(question, chunks))

    async def sources(self, access: dict[str, Any] | None) -> list[str]:
        """The index's named sources this read filter can see (what GET /v1/models lists)."""
        return await guarded(self._call_sources(access))

    async def index_status(self, access: dict[str, Any] | None) -> dict[str, Any]:
        """The served version's holdings for this read filter (all with None), versions, last ingest."""
        return await guarded(self._call_index_status(access))

    async def standalone(self, history: Sequence[Turn], question: str) -> Standalone:
        """The question to retrieve for: as it is when it stands alone (no call made), else rewritten
        from the history by the Generator (the LLM, or the deterministic rewrite without one)."""
        if not any(turn.role == ROLE_USER for turn in history) or not needs_history(question):
            return Standalone(question, REWRITE_AS_IS)
        return await guarded(self._call_condense(list(history), question))

    async def answer_stream(self, question: str, chunks: list[RetrievedChunk]) -> AsyncIterator[dict[str, Any]]:
        async for event in self._call_answer_stream(question, chunks):
            yield event

    async def status(self) -> dict[str, Any]:
        """Each stage's status; a stage that cannot answer is reported unavailable, not raised."""
        results = await asyncio.gather(*(self._call_status(name) for name in STAGE_NAMES), return_exceptions=True)
        status: dict[str, Any] = {}
        for name, result in zip(STAGE_NAMES, results):
            if isinstance(result, BaseException):
                status[name] = {"error": f"{type(result).__name__}", "name": "unavailable", "ready": False}
            else:
                status[name] = result
        return status

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
