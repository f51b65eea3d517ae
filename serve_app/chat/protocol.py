"""OpenAI chat-completions request and response models, plus what this service adds.

Requests follow OpenAI's leniency: unknown fields (`presence_penalty`, `tools`, `seed`, ...) are
accepted and ignored, as OpenAI's own API does; the fields read here are typed strictly. Responses
carry two extra top-level fields that the official `openai` client keeps on its models (their
pydantic config allows extras): `sources`, the cited passages ([n] in the answer is `sources[n-1]`),
and `rag`, how the answer was made (the standalone question retrieval used, cache, index version).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from serve_app.schemas import MAX_QUESTION_CHARS, Source, valid_filter

MAX_MESSAGES = 64


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ContentPart(_Lenient):
    type: str
    text: str | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text; parts other than text (images, audio) are refused by the request."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text or "" for part in self.content if part.type == "text")


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str = Field(..., min_length=1, max_length=200, description="What answers: an id from GET /v1/models.", examples=["rag"])
    messages: list[ChatMessage] = Field(
        ...,
        min_length=1,
        max_length=MAX_MESSAGES,
        description="The conversation, oldest first; the last message is the user's question. System messages are ignored: the "
        "service's own instructions govern answers.",
    )
    stream: bool = Field(False, description="Server-sent events in OpenAI's chunk format, ending with `data: [DONE]`.")
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2, description="Accepted for compatibility; the configured generator's is used.")
    max_tokens: int | None = Field(None, ge=1, description="Accepted for compatibility; the configured generator's is used.")
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="One choice only.")
    user: str | None = None
    # This service's own options (the openai client sends them with extra_body=...).
    top_k: int = Field(5, ge=1, le=20, description="Passages retrieved and cited.")
    filters: dict[str, Any] | None = Field(None, description="Metadata filter, as on /v1/query.")
    use_cache: bool = Field(True, description="As on /v1/query: false forces a fresh answer.")

    _valid_filter = field_validator("filters")(classmethod(lambda cls, v: valid_filter(v)))

    @field_validator("messages")
    @classmethod
    def _ends_with_a_question(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        last = messages[-1]
        if last.role != "user":
            raise ValueError("the last message must be the user's question (role 'user')")
        for message in messages:
            if isinstance(message.content, list) and any(part.type != "text" for part in message.content):
                raise ValueError("only text content is supported")
        question = last.text()
        if not question.strip():
            raise ValueError("the user's question must not be blank")
        if len(question) > MAX_QUESTION_CHARS:
            raise ValueError(f"the user's question is over {MAX_QUESTION_CHARS} characters")
        return messages


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RagInfo(BaseModel):
    """How this answer was made."""

    standalone_question: str = Field(..., description="What was retrieved for: the question, or the follow-up made standalone.")
    rewrite: Literal["as-is", "rules", "llm"] = Field(
        ..., description="as-is: the question stood alone; rules: the deterministic rewrite; llm: rewritten by the LLM."
    )
    mode: Literal["generative", "extractive", "degraded"]
    cached: bool
    cache: Literal["exact", "semantic"] | None = None
    index_version: str
    generator: str
    request_id: str


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    sources: list[Source] = Field(..., description="The passages the answer cites: [n] is sources[n-1].")
    rag: RagInfo


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One server-sent event of a streamed completion. The chunk that finishes the choice also
    carries `sources` and `rag`; with stream_options.include_usage a last chunk has no choices and
    the usage."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    sources: list[Source] | None = None
    rag: RagInfo | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "rag-service"
    description: str | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
