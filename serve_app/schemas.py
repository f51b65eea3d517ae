"""Request and response models of the HTTP API (the OpenAPI schema is generated from these)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from serve_app.filters import FilterError, normalize_filter

MAX_QUESTION_CHARS = 4000


def valid_filter(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """A request's `filters` normalized, or a validation error naming what is wrong."""
    try:
        return normalize_filter(value)
    except FilterError as exc:
        raise ValueError(str(exc)) from None


class _Request(BaseModel):
    # Strict: `"use_cache": 0` or `"top_k": "5"` is an error, not silently coerced (found by fuzzing).
    model_config = ConfigDict(extra="forbid", strict=True)

    filters: dict[str, Any] | None = Field(
        None,
        description="Metadata filter: equality shorthand {'file': 'a.pdf'}, operators $eq $ne $in $nin, and $and / $or lists.",
        examples=[{"file": {"$in": ["vacation-policy.md", "security-faq.txt"]}}],
    )

    _valid_filter = field_validator("filters")(classmethod(lambda cls, v: valid_filter(v)))


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


class QueryRequest(_Request):
    question: str = Field(..., min_length=1, max_length=MAX_QUESTION_CHARS, examples=["How many vacation days do employees get?"])
    top_k: int = Field(5, ge=1, le=20, description="Passages retrieved and cited.")
    use_cache: bool = Field(
        True, description="Answer from the cache when possible; false forces a fresh answer (which refreshes the cache)."
    )
    stream: bool = Field(False, description="Server-sent events: answer tokens, then a final event with the sources.")

    _question_not_blank = field_validator("question")(classmethod(lambda cls, v: _not_blank(v)))


class RetrieveRequest(_Request):
    query: str = Field(..., min_length=1, max_length=MAX_QUESTION_CHARS, examples=["vacation carry-over"])
    top_k: int = Field(10, ge=1, le=100)
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(None, description="Default: retrieval.mode from the settings.")
    rerank: bool | None = Field(None, description="Default: rerank.enabled from the settings.")
    mmr: bool | None = Field(
        None, description="Diversify with maximal marginal relevance. Default: retrieval.mmr; never with group_by: document."
    )
    group_by: Literal["chunk", "document"] = Field(
        "chunk",
        description="document: rank files by all their matching passages (retrieval.document_decay), return top_k of them in "
        "`documents`, and each one's best passage in `results`. With rerank, only the reranked candidates form documents.",
    )

    _query_not_blank = field_validator("query")(classmethod(lambda cls, v: _not_blank(v)))

    @model_validator(mode="after")
    def _mmr_ranks_chunks(self) -> RetrieveRequest:
        if self.mmr and self.group_by == "document":
            raise ValueError("mmr diversifies chunks; with group_by: document each result is already another document")
        return self


class SourceLocation(BaseModel):
    """Where the passage sits in its file. `kind` says what `page` counts."""

    kind: Literal["page", "slide", "sheet", "section"] = Field(
        ...,
        description="page: a PDF page or image frame; slide: a presentation slide; sheet: a spreadsheet table; "
        "section: text under a heading.",
    )
    page: int = Field(
        ..., description="The PDF page, slide number, sheet position (1-based) or, for flowing text, 1 (the chapter of an EPUB)."
    )
    slide: int | None = Field(None, description="Slide number (presentations).")
    sheet: str | None = Field(None, description="Sheet name (workbooks; the file name for CSV).")
    rows: str | None = Field(None, description="The sheet's row numbers the passage covers, e.g. '12-40'.")
    heading: str | None = Field(None, description="The section's heading path ('Benefits > Vacation'), a slide's title or a table's title.")
    ocr: bool = Field(False, description="The text was read from an image by OCR.")
    ocr_confidence: float | None = Field(None, description="Mean OCR word confidence, 0-100.")


class Source(BaseModel):
    file: str = Field(..., description="Path relative to its source folder.")
    source: str | None = Field(
        None, description="The named source holding the file (--source-name); null: indexed before sources had names."
    )
    page: int = Field(..., description="Kept for older clients: location.page.")
    location: SourceLocation
    chunk_id: str
    score: float
    text: str


class QueryResponse(BaseModel):
    answer: str
    sources: list[Source]
    mode: Literal["generative", "extractive", "degraded"]
    cached: bool
    cache: Literal["exact", "semantic"] | None = Field(None, description="How a cached answer matched: the same question, or a rephrasing.")
    latency_ms: float
    request_id: str
    index_version: str
    reranker: str | None = Field(None, description="Scorer that ordered the sources; null when not reranked.")
    generator: str


class RetrievedDocument(BaseModel):
    file: str
    source: str | None = None
    title: str | None = Field(None, description="The document's title, where it states one.")
    score: float = Field(..., description="Its passages' scores, best first, summed with weights 1, decay, decay², ...")
    passages: list[Source] = Field(..., description="Its passages among the candidates, best first.")


class RetrieveResponse(BaseModel):
    results: list[Source]
    documents: list[RetrievedDocument] | None = Field(None, description="With group_by: document, the ranked documents.")
    index_version: str
    latency_ms: float
    reranker: str | None = None
    mode: Literal["dense", "lexical", "hybrid"]


class LivenessResponse(BaseModel):
    status: Literal["alive"]


class HealthResponse(BaseModel):
    status: Literal["healthy", "degraded", "unhealthy"]
    reasons: list[str] = Field(default_factory=list, description="Why the status is not healthy.")
    chunks_indexed: int
    index_version: str | None
    embedding_model: str | None
    reranker: str
    generator: str
    cache: Literal["redis", "local", "off"] = Field(..., description="Answer cache: shared Redis, in-process per replica, or disabled.")
    cache_connected: bool
    last_indexed_at: str | None
    startup_time_seconds: float


class ErrorResponse(BaseModel):
    error: str
    detail: Any = None
    request_id: str | None = None


class CachePurgeResponse(BaseModel):
    purged_keys: int = Field(..., description="Redis keys (or in-process entries of this replica) deleted.")
    version: str | None = None
