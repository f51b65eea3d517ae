"""One typed settings model for ingest and serve: defaults < YAML (configs/) < RAG_* environment.

Nested groups are overridden with a double underscore, e.g. RAG_CHUNKING__CHUNK_SIZE=256.
The config file is chosen by the explicit argument, else RAG_CONFIG, else configs/rag.yaml
in the working directory when present (the defaults below mirror that file).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from rag_core.access import NAME_PATTERN

DEFAULT_CONFIG_FILE = Path("configs/rag.yaml")


def default_index_dir() -> Path:
    # Absolute by default: `ray job submit --working-dir .` runs the job in a temporary copy of
    # the repo, so a relative path would put the index somewhere that is deleted afterwards.
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "rag-service" / "index"


class ChunkingSettings(BaseModel):
    chunk_size: int = Field(512, ge=32, description="Maximum characters per chunk.")
    chunk_overlap: int = Field(64, ge=0, description="Characters shared by neighbouring chunks.")
    separators: list[str] = Field(
        default_factory=lambda: ["\n\n", "\n", ". ", " ", ""],
        description="Split points tried in order; '' means a hard cut.",
    )
    contextual: bool = Field(
        False,
        description="Embed and BM25-index each chunk with its document's title and section heading in front "
        "(rag_core.contextual); the stored and returned text stays the chunk's own. Off by default (README).",
    )

    @model_validator(mode="after")
    def _overlap_below_size(self) -> ChunkingSettings:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunking.chunk_overlap must be smaller than chunking.chunk_size")
        return self


GroupName = Annotated[str, Field(pattern=NAME_PATTERN)]


class AccessRule(BaseModel):
    """Documents under `prefix` (a folder relative to --source) belong to `tenant` and `groups`."""

    model_config = ConfigDict(extra="forbid")
    prefix: str = Field(..., description="Folder relative to the source, e.g. 'hr/'; '' matches everything.")
    tenant: str = Field(..., pattern=NAME_PATTERN)
    groups: list[GroupName] = Field(default_factory=list)


class PIISettings(BaseModel):
    mode: Literal["redact", "mask", "off"] = Field(
        "redact", description="redact: replace with <TYPE>; mask: keep the last 4 characters; off: keep the text."
    )
    entities: list[str] = Field(
        default_factory=lambda: ["EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "US_SSN", "IBAN_CODE", "IP_ADDRESS", "PERSON"],
        description="Presidio entity types to detect.",
    )
    score_threshold: float = Field(
        0.4,
        ge=0,
        le=1,
        description="Presidio confidence needed to redact. 0.4: unambiguous formats, plus ambiguous ones with a context "
        "word before them (phone, fax, card, ssn, ip...); 0.5 or more: unambiguous formats only; 0.1 or less: ambiguous "
        "ones without context too (section numbers, table cells: not advised). Measured on the 118 PDFs (README).",
    )
    spacy_model: str | None = Field(None, description="An installed spaCy NER model (e.g. en_core_web_lg) for PERSON; none offline.")


class OCRSettings(BaseModel):
    enabled: bool = Field(True, description="Read scanned PDF pages and image files with Tesseract (a system package).")
    languages: list[str] = Field(
        default_factory=lambda: ["eng", "fra", "nld", "kor"],
        description="Tesseract language packs to read with (those installed are used); see README, OCR.",
    )
    dpi: int = Field(300, ge=72, le=600, description="Resolution PDF pages are rendered at for OCR.")
    tesseract_cmd: str = Field("tesseract", min_length=1, description="The tesseract binary (name on PATH or a path).")
    timeout_s: float = Field(120.0, gt=0, description="Limit for one page's OCR.")
    cache_dir: str | None = Field(
        "~/.cache/rag-service/ocr",
        description="Page texts already read, on each node's disk (rag_core/ocr_cache.py), so a re-parse does not OCR a "
        "page image again; keyed by the image and the engine's signature. null: no cache.",
    )


DEFAULT_EXTENSIONS = [
    ".pdf",
    ".txt",
    ".md",
    ".docx",
    ".pptx",
    ".xlsx",
    ".csv",
    ".html",
    ".htm",
    ".epub",
    ".odt",
    ".png",
    ".jpg",
    ".jpeg",
    ".tif",
    ".tiff",
]


class IngestSettings(BaseModel):
    model_config = ConfigDict(validate_default=True, populate_by_name=True)

    extensions: list[str] = Field(default_factory=lambda: list(DEFAULT_EXTENSIONS))
    max_file_mb: float = Field(50.0, gt=0, description="Larger files are listed as failed.")
    passwords: list[SecretStr] = Field(
        default_factory=list,
        description="Tried on encrypted PDFs (after the empty password) and password-protected Office files. "
        "'pdf_passwords' is accepted as the older name.",
    )
    embed_batch_size: int = Field(64, ge=1, description="Chunks per embedding call on a worker.")
    embed_actors_min: int = Field(1, ge=1, description="Embedding actor pool: minimum size.")
    embed_actors_max: int = Field(1, ge=1, description="Embedding actor pool: maximum size.")
    embed_num_cpus: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="CPUs each embedding actor asks Ray for. 'auto': a share of what is free in the cluster when the job "
        "starts (at least 0.05, at most 1), so an ingest fits beside a serving graph; a number is used as given.",
    )
    embed_num_gpus: Annotated[float, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="GPUs per embedding actor. 'auto': 1 when the cluster has GPUs when the job starts, else 0; "
        "a number > 0 also makes an autoscaling cluster start GPU workers for the job.",
    )
    embed_torch_threads: int | None = Field(None, ge=1, description="Torch threads per embedding actor; default: the node's cores.")
    parse_num_cpus: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="CPUs each parse task asks Ray for. 'auto': a share of what is free in the cluster when the job starts "
        "(at least 0.05, at most 1); a number is used as given.",
    )
    parse_concurrency: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="Parse tasks running at once. 'auto': the cores of the cluster's nodes (not their logical CPUs)."
    )
    block_max_files: int = Field(64, ge=1, description="Small files are parsed together, up to this many per block (one task).")
    block_max_mb: float = Field(
        1.0, gt=0, description="A block of small files holds at most this many MB; a file this large or larger is a block alone."
    )
    stall_timeout_s: float = Field(
        300.0,
        gt=0,
        description="Fail the run when no chunk has come out of the pipeline for this long while Ray cannot place the job's "
        "tasks or actors (pending resource demands); raise it on clusters that start nodes for the job.",
    )
    write_batch_size: int = Field(512, ge=1, description="Chunks per store write on the driver.")
    keep_versions: int = Field(5, ge=1, description="Committed versions kept for rollback.")
    lock_timeout_s: float = Field(0.0, ge=0, description="How long a second run waits for the lock.")
    progress_interval_s: float = Field(10.0, gt=0)
    default_tenant: str = Field("default", pattern=NAME_PATTERN, description="Tenant of documents no rule or sidecar assigns.")
    access: list[AccessRule] = Field(default_factory=list, description="Folder prefix -> tenant and groups; first match wins.")
    pii: PIISettings = Field(default_factory=PIISettings)
    ocr: OCRSettings = Field(default_factory=OCRSettings)
    pdf_tables: bool = Field(
        True, description="Read ruled tables on tabular-looking PDF pages with pdfplumber, rows with their headers (measured: README)."
    )

    @model_validator(mode="before")
    @classmethod
    def _older_password_name(cls, data: Any) -> Any:
        """`pdf_passwords` (the older name) adds to `passwords`: the file may set one name and the
        environment the other, and every password given is tried."""
        if isinstance(data, dict) and "pdf_passwords" in data:
            data = dict(data)
            older = data.pop("pdf_passwords") or []
            if isinstance(older, str):
                older = json.loads(older)
            current = data.get("passwords") or []
            if isinstance(current, str):
                current = json.loads(current)
            # Settings are validated twice (load_settings), the second time from SecretStr values.
            current = [p.get_secret_value() if isinstance(p, SecretStr) else p for p in current]
            data["passwords"] = [*current, *(p for p in older if p not in current)]
        return data

    @field_validator("extensions")
    @classmethod
    def _normalise_extensions(cls, value: list[str]) -> list[str]:
        return sorted({(e if e.startswith(".") else f".{e}").lower() for e in value})

    @model_validator(mode="after")
    def _pool_bounds(self) -> IngestSettings:
        if self.embed_actors_max < self.embed_actors_min:
            raise ValueError("ingest.embed_actors_max must be >= ingest.embed_actors_min")
        return self


class RetrievalSettings(BaseModel):
    mode: Literal["dense", "lexical", "hybrid"] = Field("hybrid", description="Default retrieval mode.")
    fetch_k: int = Field(100, ge=1, le=500, description="Candidates per retriever before fusion.")
    fusion: Literal["convex", "rrf"] = Field(
        "convex", description="convex: weighted sum of min-max normalised scores; rrf: reciprocal rank fusion."
    )
    rrf_k: int = Field(60, ge=1, description="Reciprocal rank fusion constant.")
    dense_weight: float = Field(0.6, ge=0)
    lexical_weight: float = Field(0.4, ge=0)
    short_query_words: int = Field(
        6, ge=0, description="Queries of at most this many words are fused with the short_query_* weights (0: never)."
    )
    short_query_dense_weight: float = Field(0.5, ge=0)
    short_query_lexical_weight: float = Field(0.5, ge=0)
    bm25_k1: float = Field(0.6, gt=0)
    bm25_b: float = Field(0.75, ge=0, le=1)
    bm25_stemmer: str | None = Field("english", description="PyStemmer language; null disables stemming.")
    mmr: bool = Field(False, description="Diversify results with maximal marginal relevance.")
    mmr_lambda: float = Field(0.5, ge=0, le=1)
    mmr_fetch_k: int = Field(20, ge=1, le=500)
    document_candidates: int = Field(
        100, ge=1, le=500, description="Chunks grouped into documents when /v1/retrieve is asked for documents (group_by: document)."
    )
    document_decay: float = Field(
        0.3, ge=0, le=1, description="A document's score: its chunks' scores, best first, weighted 1, decay, decay², ... (0: best chunk)."
    )
    reload_check_interval_s: float = Field(2.0, gt=0, description="How often replicas look for a new index version.")

    def fusion_weights(self, query: str) -> tuple[float, float]:
        """(dense, lexical) weights for this query: a short query (a few keywords, a title) leans
        more on BM25's exact terms, which tuning on SciFact train and NFCorpus dev preferred."""
        if len(query.split()) <= self.short_query_words:
            return self.short_query_dense_weight, self.short_query_lexical_weight
        return self.dense_weight, self.lexical_weight


class RerankSettings(BaseModel):
    model: str = Field("cross-encoder/ms-marco-MiniLM-L-6-v2", description="sentence-transformers CrossEncoder id or folder.")
    enabled: bool = Field(False, description="Rerank by default (measured effect: see README).")
    candidates: int = Field(20, ge=1, le=200, description="Top fused candidates passed to the reranker.")


class GeneratorSettings(BaseModel):
    timeout_s: float = Field(30.0, gt=0, description="Budget for the whole LLM call, retries included.")
    max_retries: int = Field(1, ge=0, le=5)
    circuit_failures: int = Field(
        3, ge=1, le=100, description="Failed LLM calls in a row that open the circuit: answers then degrade at once, without a call."
    )
    circuit_open_s: float = Field(
        30.0, gt=0, le=300, description="Seconds the circuit stays open before one probe call (longer if the endpoint's Retry-After asks)."
    )
    max_tokens: int = Field(384, ge=1)
    temperature: float = Field(0.1, ge=0, le=2)
    context_passages: int = Field(5, ge=1, le=20)
    extractive_sentences: int = Field(3, ge=1, le=10)


class APISettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = Field(65_536, ge=1024)
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins; none by default.")
    embedder_torch_threads: int | None = Field(
        None, ge=1, description="Torch threads in Embedder and Reranker replicas; default: the node's cores."
    )
    embed_batch_wait_s: float = Field(
        0.0, ge=0, description="@serve.batch wait for more queries; 0: a batch is whatever queued while the model ran."
    )
    embed_max_batch_size: int = Field(16, ge=1)
    replica_wait_s: float = Field(
        3.0, gt=0, le=60, description="After a stage lost a replica: how long a call waits for another one before 503 + Retry-After."
    )
    log_questions: bool = Field(False, description="Put question text in logs.")


class APIKeySettings(BaseModel):
    """One API key, stored as the SHA-256 of the key (`python -m serve_app.keys new` makes both)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, max_length=64, description="Shown in logs; never the key itself.")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key.")
    tenant: str = Field(..., pattern=NAME_PATTERN)
    groups: list[GroupName] = Field(default_factory=list)
    rate_per_minute: float | None = Field(None, gt=0, description="Default: auth.rate_per_minute.")
    burst: int | None = Field(None, ge=1, description="Default: auth.burst.")
    admin: bool = Field(False, description="May call /admin routes (cache purge).")


class AuthSettings(BaseModel):
    enabled: bool = Field(True, description="false = no keys asked (only for trusted networks).")
    keys: list[APIKeySettings] = Field(default_factory=list)
    anonymous_tenant: str = Field(
        "default",
        pattern=NAME_PATTERN,
        description="Tenant of callers without a key: the loopback demo without keys, or auth disabled.",
    )
    rate_per_minute: float = Field(120.0, gt=0, description="Token-bucket refill per key.")
    burst: int = Field(20, ge=1, description="Token-bucket size per key.")
    rate_limit_enabled: bool = True
    rate_limit_prefix: str = Field("rag:ratelimit", min_length=1, description="Redis key namespace of the buckets.")


class CacheSettings(BaseModel):
    enabled: bool = Field(True, description="Answer repeated questions from the cache.")
    ttl_s: int = Field(3600, ge=1, description="Lifetime of a cached answer (old versions' entries expire with it).")
    semantic: bool = Field(True, description="Also hit on rephrased questions (query-embedding cosine).")
    semantic_threshold: float = Field(
        0.95, gt=0, le=1, description="Cosine at or above which a rephrasing hits; measured on SQuAD (README)."
    )
    semantic_max_entries: int = Field(256, ge=1, le=10_000, description="Cached questions compared per scope, newest first.")
    key_prefix: str = Field("rag:cache", min_length=1, description="Namespace of every Redis key.")
    local_max_entries: int = Field(2048, ge=1, description="In-process cache size per ingress replica (no Redis).")


class RedisSettings(BaseModel):
    """The ingress replicas' Redis pool (answer cache and rate limits), used when redis_url is set."""

    pool_size: int = Field(16, ge=1, description="Connections per ingress replica.")
    socket_timeout_s: float = Field(0.05, gt=0, description="Connect and read timeout; a slower Redis is skipped.")
    retry_after_s: float = Field(1.0, ge=0, description="After a Redis failure, skip it this long, then reconnect.")


class ObservabilitySettings(BaseModel):
    faithfulness: bool = Field(True, description="Estimate faithfulness of generated answers (extra embeddings, after the response).")
    faithfulness_threshold: float = Field(
        0.35, gt=0, le=1, description="Cosine at which a passage supports an answer sentence; measured on SQuAD (README)."
    )
    stale_index_after_s: float = Field(
        604_800, gt=0, description="/health is degraded when no ingest has succeeded for this long (default 7 days)."
    )


class DocumentsSettings(BaseModel):
    """The document API (POST/GET/DELETE /v1/documents): uploads staged on the head node, indexed
    by Ray jobs of `python -m ingest_jobs.index` as the named source `source_name`."""

    enabled: bool = Field(True, description="Serve the document routes (on a Ray cluster; the single-process app answers 501).")
    staging_dir: Path | None = Field(
        None, description="Head-node folder of uploads waiting for their ingest, and the registry; default: <index_dir>/uploads."
    )
    source_name: str = Field("uploads", pattern=NAME_PATTERN, description="The named source uploads are indexed under.")
    max_file_mb: float = Field(50.0, gt=0, description="Largest file an upload may carry.")
    max_files: int = Field(20, ge=1, description="Files per upload request.")
    max_request_mb: float = Field(100.0, gt=0, description="Body limit of POST /v1/documents (the JSON routes keep api.max_body_bytes).")
    batch_wait_s: float = Field(
        2.0, ge=0, description="Quiet time after the last upload or delete before a run starts: a burst is one run."
    )
    poll_interval_s: float = Field(1.0, gt=0, description="How often the registry looks at its running job.")
    retry_after_s: float = Field(30.0, gt=0, description="Wait before retrying a run the index lock or the job server refused.")
    purge_deleted: bool = Field(True, description="A delete also drops kept versions holding the document, so no rollback brings it back.")
    ray_dashboard: str = Field(
        "auto", description="Where jobs are submitted: 'auto' (the cluster the service runs in) or the dashboard's http:// address."
    )
    keep_finished_runs: int = Field(1000, ge=1, description="Finished ingest runs kept in the registry.")


class RAGSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAG_", env_nested_delimiter="__", extra="forbid", validate_default=True)
    # Set on the subclass that load_settings() builds; None = defaults and environment only.
    yaml_config_file: ClassVar[Path | None] = None

    index_dir: Path = Field(
        default_factory=default_index_dir,
        description="Holds the versions, manifests, Parquet and audit trail (and, without chroma_url, the pointer).",
    )
    embedding_model: str = Field(
        "auto",
        description="'auto' (bge-small-en-v1.5 if loadable, else packaged all-MiniLM-L6-v2), a Hugging Face id, or a local folder.",
    )
    embedding_device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    embedding_backend: Literal["torch", "onnx", "onnx-int8"] = Field(
        "onnx",
        description="What runs the embedding model: ONNX Runtime (fp32 'onnx', or 'onnx-int8' quantized) from a local export "
        "cached in ~/.cache/rag-service/onnx, or 'torch'. Recorded in the index: an onnx-int8 index is its own vector space "
        "(switching re-embeds, its queries use int8); torch and onnx vectors are interchangeable (measured: README, Embedding model).",
    )
    embedding_query_instruction: str = Field("auto", description="'auto' (bge instruction for bge models), 'none', or a literal prefix.")
    hub_probe_timeout_s: float = Field(3.0, gt=0, description="How long 'auto' waits for the Hugging Face Hub before falling back.")
    chroma_url: str | None = Field(
        None, description="ChromaDB server, required on a multi-node cluster (every node reads the index there); unset = embedded store."
    )
    chroma_collection_prefix: str = "rag"
    chroma_pointer_cache_s: float = Field(
        1.0, ge=0, description="How long a reader trusts the current-version pointer read from the Chroma server."
    )
    redis_url: str | None = Field(None, description="Shared answer cache and rate limits; unset = in-process cache.")
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: SecretStr | None = None
    ray_address: str | None = Field(None, description="Ray cluster to join; unset = RAY_ADDRESS or local.")
    triggered_by: str | None = Field(None, description="Recorded in the audit trail; default user@host.")
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings)
    retrieval: RetrievalSettings = Field(default_factory=RetrievalSettings)
    rerank: RerankSettings = Field(default_factory=RerankSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    api: APISettings = Field(default_factory=APISettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    documents: DocumentsSettings = Field(default_factory=DocumentsSettings)

    @field_validator("index_dir")
    @classmethod
    def _absolute_index_dir(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def uploads_dir(self) -> Path:
        """Where the document API stages uploads (on the head node, beside the index's files)."""
        folder = self.documents.staging_dir
        return folder.expanduser().resolve() if folder is not None else self.index_dir / "uploads"

    def as_config(self, exclude: set[str] = frozenset()) -> dict[str, Any]:
        """These settings as a config file's mapping, secrets in clear (for a job's --config, a
        file only its owner reads); `exclude` leaves top-level keys out."""

        def reveal(value: Any) -> Any:
            if isinstance(value, SecretStr):
                return value.get_secret_value()
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, dict):
                return {k: reveal(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [reveal(v) for v in value]
            return value

        return reveal(self.model_dump(exclude=set(exclude)))

    @field_validator("chroma_url", "redis_url", "llm_base_url", "llm_model", "ray_address", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls.yaml_config_file is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=cls.yaml_config_file))
        return tuple(sources)


class ConfigFileError(ValueError):
    """The named config file is missing or unreadable."""


def resolve_config_file(config_file: str | os.PathLike[str] | None = None) -> Path | None:
    explicit = config_file or os.environ.get("RAG_CONFIG")
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigFileError(f"config file not found: {path}")
        return path
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None


def load_settings(config_file: str | os.PathLike[str] | None = None, **overrides: Any) -> RAGSettings:
    """Settings from (in rising priority) defaults, the YAML file, RAG_* variables, `overrides`.

    Returns a plain RAGSettings (picklable, so Serve replicas get exactly the driver's values)."""
    path = resolve_config_file(config_file)
    bound = type("RAGSettingsFromFile", (RAGSettings,), {"yaml_config_file": path})
    return RAGSettings.model_validate(bound(**overrides).model_dump())
