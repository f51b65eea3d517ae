"""Chat completions on top of the one query path.

A chat request becomes a QueryRequest for the standalone question (the follow-up made standalone
from the conversation, serve_app.conversation) and goes through QueryService exactly as /v1/query
does: the same access filter, answer cache (keyed by the standalone question, never the raw
follow-up), metrics and query log line. Only the protocol around it differs.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from functools import cached_property
from pathlib import Path
from typing import Any

from rag_core.access import Access
from serve_app.chat.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    RagInfo,
    Usage,
)
from serve_app.conversation import ROLE_ASSISTANT, ROLE_USER, Standalone, Turn
from serve_app.filters import normalize_filter
from serve_app.http_common import NotFound
from serve_app.schemas import MAX_QUESTION_CHARS, QueryRequest, QueryResponse
from serve_app.service import QueryService, StageClock

DEFAULT_MODEL = "rag"


class TokenCounter:
    """Usage counts with one fixed tokenizer (the packaged all-MiniLM-L6-v2's WordPiece), whatever
    model answers: extractive answers have no tokenizer of their own, and an LLM behind an
    OpenAI-compatible endpoint may not report usage on every path (streams, fallbacks)."""

    @cached_property
    def _tokenizer(self) -> Any:
        from tokenizers import Tokenizer

        from rag_core.embedding import packaged_minilm_path

        tokenizer = Tokenizer.from_file(str(Path(packaged_minilm_path()) / "tokenizer.json"))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return tokenizer

    def count(self, texts: list[str]) -> int:
        texts = [t for t in texts if t]
        if not texts:
            return 0
        return sum(len(e.ids) - 2 for e in self._tokenizer.encode_batch(texts, add_special_tokens=True))  # without [CLS]/[SEP]


def conversation_of(request: ChatCompletionRequest) -> tuple[list[Turn], str]:
    """The user and assistant turns before the question, and the question (the last message)."""
    *earlier, last = request.messages
    history = [Turn(m.role, m.text()) for m in earlier if m.role in (ROLE_USER, ROLE_ASSISTANT) and m.text().strip()]
    return history, last.text()


def bounded(question: str) -> str:
    """A rewrite keeps within the query API's question limit: the added context is cut, never the question."""
    return question if len(question) <= MAX_QUESTION_CHARS else question[: MAX_QUESTION_CHARS - 1].rstrip() + ")"


class ChatService:
    def __init__(self, queries: QueryService, model_name: str = DEFAULT_MODEL):
        self.queries = queries
        self.model_name = model_name
        self.tokens = TokenCounter()
        self.created = int(time.time())

    async def models(self, access: Access) -> ModelList:
        """`rag` (the whole index) and `rag/<source>` for each named source this caller can read."""
        cards = [ModelCard(id=self.model_name, created=self.created, description="Answers from the current index, cited.")]
        for source in await self.queries.stages.sources(access.read_filter()):
            description = f"Answers from the documents of the source {source!r} only, cited."
            cards.append(ModelCard(id=f"{self.model_name}/{source}", created=self.created, description=description))
        return ModelList(data=cards)

    async def _filters_for(self, model: str, filters: dict[str, Any] | None, access: Access) -> dict[str, Any] | None:
        """The request's filters, narrowed to the source a `rag/<source>` model names. The model
        never widens what the caller reads: the access filter is applied below it, as on /v1/query."""
        if model == self.model_name:
            return filters
        prefix = f"{self.model_name}/"
        source = model[len(prefix) :] if model.startswith(prefix) else None
        if not source or source not in await self.queries.stages.sources(access.read_filter()):
            raise NotFound(f"model {model!r} not found: GET /v1/models lists what answers here")
        return normalize_filter({"$and": [filters, {"source": source}]} if filters else {"source": source})

    async def _standalone(self, request: ChatCompletionRequest, access: Access, clock: StageClock) -> tuple[Standalone, QueryRequest]:
        filters = await self._filters_for(request.model, request.filters, access)
        history, question = conversation_of(request)
        with clock.stage("rewrite"):
            standalone = await self.queries.stages.standalone(history, question)
        query = QueryRequest(question=bounded(standalone.question), top_k=request.top_k, filters=filters, use_cache=request.use_cache)
        return standalone, query

    def _usage(self, request: ChatCompletionRequest, answer: str) -> Usage:
        prompt = self.tokens.count([m.text() for m in request.messages])
        completion = self.tokens.count([answer])
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)

    @staticmethod
    def _rag(standalone: Standalone, query: QueryRequest, response: QueryResponse) -> RagInfo:
        return RagInfo(
            standalone_question=query.question,
            rewrite=standalone.how,
            mode=response.mode,
            cached=response.cached,
            cache=response.cache,
            index_version=response.index_version,
            generator=response.generator,
            request_id=response.request_id,
        )

    async def complete(self, request: ChatCompletionRequest, request_id: str, access: Access, clock: StageClock) -> ChatCompletion:
        standalone, query = await self._standalone(request, access, clock)
        response = await self.queries.query(query, request_id, access, clock)
        return ChatCompletion(
            id=f"chatcmpl-{request_id}",
            created=int(time.time()),
            model=request.model,
            choices=[Choice(message=AssistantMessage(content=response.answer))],
            usage=self._usage(request, response.answer),
            sources=response.sources,
            rag=self._rag(standalone, query, response),
        )

    async def stream(self, request: ChatCompletionRequest, request_id: str, access: Access) -> AsyncIterator[str]:
        """OpenAI's chunk stream: the role, the answer's text as it comes, a chunk that finishes the
        choice with the sources, the usage when asked for, then [DONE]. Errors before the first
        chunk (an unknown model, no index) surface when the first chunk is awaited."""
        clock = StageClock()
        standalone, query = await self._standalone(request, access, clock)
        events = self.queries.answer_events(query, request_id, access, clock)
        first = await anext(events)  # retrieval errors become HTTP errors, not a broken stream
        base = {"id": f"chatcmpl-{request_id}", "created": int(time.time()), "model": request.model}

        def chunk(delta: Delta, **extra: Any) -> str:
            body = ChatCompletionChunk(**base, choices=[ChunkChoice(delta=delta, **extra.pop("choice", {}))], **extra).model_dump(
                mode="json", exclude={name for name in ("usage", "sources", "rag") if name not in extra}
            )
            # As OpenAI streams: finish_reason and logprobs always present (null), a delta only with what it carries.
            body["choices"][0]["delta"] = delta.model_dump(exclude_none=True)
            return f"data: {json.dumps(body)}\n\n"

        async def relay() -> AsyncIterator[str]:
            yield chunk(Delta(role="assistant", content=""))
            text: list[str] = []
            async for event in _prepend(first, events):
                if "token" in event:
                    text.append(event["token"])
                    yield chunk(Delta(content=event["token"]))
                    continue
                response: QueryResponse = event["done"]
                yield chunk(Delta(), choice={"finish_reason": "stop"}, sources=response.sources, rag=self._rag(standalone, query, response))
                if request.stream_options and request.stream_options.include_usage:
                    usage = self._usage(request, "".join(text))
                    yield f"data: {json.dumps({**base, 'object': 'chat.completion.chunk', 'choices': [], 'usage': usage.model_dump()})}\n\n"
            yield "data: [DONE]\n\n"

        return relay()


async def _prepend(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for item in rest:
        yield item
