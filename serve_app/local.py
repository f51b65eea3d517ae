"""The same stages in one process behind the same FastAPI app: the benchmark baseline, and a way
to serve without a Ray cluster (`python -m serve_app.local`)."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI

from rag_core.index_reader import RetrievedChunk
from rag_core.index_store import VersionedIndex
from rag_core.logs import configure_json_logging
from rag_core.settings import RAGSettings, load_settings
from serve_app.api import create_app, install_limits, install_security
from serve_app.chat.serving import ChatService
from serve_app.conversation import Standalone, Turn
from serve_app.documents.in_process import InProcessRegistry
from serve_app.documents.serving import DocumentService
from serve_app.embedder import QueryEmbedder
from serve_app.generation import Answer, AnswerGenerator
from serve_app.rate_limit import RateLimiter
from serve_app.redis_conn import redis_from_settings
from serve_app.reranking import Reranker
from serve_app.retrieval import HybridRetriever
from serve_app.retrieval_request import RetrievalRequest
from serve_app.service import QueryService
from serve_app.stages import Stages


class LocalStages(Stages):
    """The stages as in-process components (each call on a worker thread)."""

    def __init__(self, settings: RAGSettings, torch_threads: int | None = None):
        super().__init__()
        index = VersionedIndex.from_settings(settings)
        self.embedder = QueryEmbedder(
            index, settings.embedding_device, torch_threads, settings.retrieval.reload_check_interval_s, settings.embedding_backend
        )
        self.embedder.ensure_model(force=True)
        self.retriever = HybridRetriever(index, settings.retrieval)
        self.retriever.maybe_reload()
        self.retriever.follow_pointer(settings.retrieval.reload_check_interval_s)
        self.reranker = Reranker(settings.rerank.model)
        self.generator = AnswerGenerator.from_settings(settings)

    async def _call_embed(self, text: str) -> tuple[list[float], str]:
        vectors, model = await asyncio.to_thread(self.embedder.embed, [text])
        return vectors[0].tolist(), model

    async def _call_retrieve(self, request: RetrievalRequest) -> tuple[list[RetrievedChunk], str]:
        chunks, info = await asyncio.to_thread(self.retriever.retrieve, request)
        return chunks, info.version

    async def _call_rerank(self, query: str, chunks: list[RetrievedChunk], top_k: int) -> tuple[list[RetrievedChunk], str]:
        return await asyncio.to_thread(self.reranker.rerank, query, chunks, top_k), self.reranker.name

    async def _call_answer(self, question: str, chunks: list[RetrievedChunk]) -> Answer:
        return await asyncio.to_thread(self.generator.answer, question, chunks)

    async def _call_answer_stream(self, question: str, chunks: list[RetrievedChunk]) -> AsyncIterator[dict[str, Any]]:
        for event in await asyncio.to_thread(lambda: list(self.generator.stream(question, chunks))):
            yield event

    async def _call_sources(self, access: dict[str, Any] | None) -> list[str]:
        return await asyncio.to_thread(self.retriever.sources, access)

    async def _call_index_status(self, access: dict[str, Any] | None) -> dict[str, Any]:
        return await asyncio.to_thread(self.retriever.index_status, access)

    async def _call_condense(self, history: list[Turn], question: str) -> Standalone:
        return await asyncio.to_thread(self.generator.condense, history, question)

    async def _call_status(self, stage: str) -> dict[str, Any]:
        component = {"embedder": self.embedder, "retriever": self.retriever, "reranker": self.reranker, "generator": self.generator}[stage]
        return component.status()


def create_local_app(settings: RAGSettings, torch_threads: int | None = None) -> FastAPI:
    started = time.monotonic()
    app = create_app()
    install_limits(app, settings)
    redis = redis_from_settings(settings)
    install_security(app, settings, RateLimiter(redis, settings.auth.rate_limit_prefix), settings.api.host)
    service = QueryService.from_settings(LocalStages(settings, torch_threads), settings, redis)
    service.startup_time_seconds = time.monotonic() - started
    app.state.service = service
    app.state.chat = ChatService(service)
    if settings.documents.enabled:
        app.state.documents = DocumentService(InProcessRegistry(settings), settings)
    return app


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config")
    args = parser.parse_args()
    configure_json_logging()
    settings = load_settings(args.config)
    uvicorn.run(create_local_app(settings), host=settings.api.host, port=settings.api.port, log_level="warning")


if __name__ == "__main__":
    main()
