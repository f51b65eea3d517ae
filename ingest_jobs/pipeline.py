"""The stages of the ingest pipeline as plain callables, and their composition as a Ray Data
dataset: files -> parse + chunk (parallel tasks) -> embed (actor pool, GPUs when configured).

Every file leaves the parse stage either as chunk rows or as exactly one failure row (non-empty
`error`), so a bad file is recorded downstream instead of raising and aborting the run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ingest_jobs.redaction import shared_redactor
from rag_core.chunking import RecursiveChunker
from rag_core.embedding import EmbeddingModelSpec, load_for_spec
from rag_core.index_store import chunk_schema, indexed_texts
from rag_core.manifest import doc_key
from rag_core.parsing import DocumentParseError, DocumentParser, parser_signature
from rag_core.settings import OCRSettings, PIISettings


def current_node_id() -> str:
    """The Ray node this stage runs on, recorded per row so a run shows where its work went."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def make_chunk_id(file_sha256: str, file_path: str, chunk_index: int, source: str = "") -> str:
    """Deterministic: the file's content hash and the chunk's position. A short hash of the source
    and path keeps identical files at two paths, or at one path in two sources, from colliding
    (all stay citable); files indexed before sources were named (source "") keep their ids."""
    path_tag = hashlib.sha1(doc_key(source, file_path).encode()).hexdigest()[:8]
    return f"{file_sha256[:32]}-{path_tag}-{chunk_index:05d}"


@dataclass(frozen=True)
class ParseConfig:
    passwords: tuple[str, ...]
    chunk_size: int
    chunk_overlap: int
    separators: tuple[str, ...]
    ingested_at: str
    index_version: str
    pii_mode: str = "off"
    pii_entities: tuple[str, ...] = ()
    pii_score_threshold: float = PIISettings().score_threshold
    pii_spacy_model: str | None = None
    ocr: OCRSettings | None = None  # None: no OCR
    pdf_tables: bool = True
    contextual: bool = False  # chunks are embedded with their title and heading (rag_core.contextual)


def ocr_factory(settings: OCRSettings | None) -> Any:
    """Builds the OCR engine on first use in a worker (None when OCR is off)."""
    if settings is None or not settings.enabled:
        return None

    def make() -> Any:
        from rag_core.ocr import TesseractOcr

        engine = TesseractOcr(tuple(settings.languages), settings.tesseract_cmd, settings.dpi, settings.timeout_s)
        if not settings.cache_dir:
            return engine
        from rag_core.ocr_cache import CachingOcr, OcrCache

        return CachingOcr(engine, OcrCache(settings.cache_dir))

    return make


def ocr_engine_label(settings: OCRSettings | None) -> str:
    """What OCR would read scans with now, as recorded in parse signatures (engine version,
    languages and this project's OCR revision), or 'unavailable' (not installed, or turned off)."""
    from rag_core.ocr import OcrError, OcrUnavailable
    from rag_core.parsing import OCR_UNAVAILABLE

    factory = ocr_factory(settings)
    if factory is None:
        return OCR_UNAVAILABLE
    try:
        return factory().signature
    except (OcrUnavailable, OcrError):  # not installed, or it does not answer: as the workers would find it
        return OCR_UNAVAILABLE


def parse_signature(path: str, redaction_signature: str, ocr_engine: str = "", pdf_tables: bool = True) -> str:
    """Everything besides a file's bytes that decides its indexed text: its format's parser and
    library version, the PII redaction settings, and the OCR engine when some page needed one."""
    signature = f"{parser_signature(path, pdf_tables)}; {redaction_signature}"
    return f"{signature}; ocr {ocr_engine}" if ocr_engine else signature


class ParseAndChunk:
    """files (file, data, sidecar_sha256, metadata) -> chunk rows, or one failure row per bad file.

    PII is redacted segment by segment before chunking, so no original value reaches the
    embedding model, Chroma or Parquet; each row carries its file's counts per PII type (`pii`,
    JSON) and the parts of the file that could not be read (`incomplete`, JSON)."""

    def __init__(self, config: ParseConfig):
        self.config = config
        self.parser = DocumentParser(config.passwords, ocr_factory(config.ocr), config.ocr.dpi if config.ocr else 300, config.pdf_tables)
        self.chunker = RecursiveChunker(config.chunk_size, config.chunk_overlap, config.separators)
        self.redactor = shared_redactor(config.pii_mode, config.pii_entities, config.pii_score_threshold, config.pii_spacy_model)

    def __call__(self, files: pa.Table) -> pa.Table:
        rows: list[dict[str, Any]] = []
        for record in files.to_pylist():
            rows.extend(self._one_file(record))
        node = current_node_id()
        return pa.Table.from_pylist([{**row, "parse_node": node} for row in rows], schema=parsed_schema())

    def _redact_rows(self, segment: Any) -> tuple[Any, Counter]:
        """A table segment whose text redaction changed, redacted line by line (each row is a
        line), so every row start moves to where its line now begins."""
        found: Counter = Counter()
        old_starts, new_starts, lines = [], [], []
        old_offset = new_offset = 0
        for line in segment.text.split("\n"):
            text, counts = self.redactor.redact(line)
            found.update(counts)
            old_starts.append(old_offset)
            new_starts.append(new_offset)
            lines.append(text)
            old_offset += len(line) + 1
            new_offset += len(text) + 1
        moved = dict(zip(old_starts, new_starts))
        row_starts = tuple((moved[offset], row) for offset, row in segment.row_starts if offset in moved)
        return replace(segment, text="\n".join(lines), row_starts=row_starts), found

    def _redact(self, text: str) -> tuple[str, Counter]:
        if len(text) <= REDACT_PIECE_CHARS:
            return self.redactor.redact(text)
        found: Counter = Counter()
        out = []
        for piece in _line_pieces(text):
            redacted, counts = self.redactor.redact(piece)
            out.append(redacted)
            found.update(counts)
        return "".join(out), found

    def _one_file(self, record: dict[str, Any]) -> list[dict[str, Any]]:
        data: bytes = record["data"]
        # Hash the bytes actually parsed: if the file changed since the scan, the manifest must
        # describe what was indexed.
        sha = hashlib.sha256(data).hexdigest()
        common = {
            "file": record["file"],
            "source": record.get("source") or "",
            "file_sha256": sha,
            "sidecar_sha256": record["sidecar_sha256"],
            "file_size": len(data),
            "ingested_at": self.config.ingested_at,
            "index_version": self.config.index_version,
            "metadata": record["metadata"],
        }
        pii: Counter = Counter()
        try:
            document = self.parser.parse(record["file"], data)
            segments = []
            for segment in document.segments:
                text, found = self._redact(segment.text)
                if text != segment.text and segment.row_starts:
                    segment, found = self._redact_rows(segment)
                else:
                    segment = replace(segment, text=text)
                pii.update(found)
                # A heading is stored with each chunk and indexed in front of it (contextual text).
                heading = segment.location.heading
                if heading:
                    redacted, found = self._redact(heading)
                    if redacted != heading:
                        segment = replace(segment, location=replace(segment.location, heading=redacted))
                        pii.update(found)
                segments.append(segment)
            chunks = self.chunker.chunk_segments(segments)
            if not chunks:
                raise DocumentParseError("no extractable text")
        except DocumentParseError as exc:
            return [_failure_row(common, exc.reason)]
        except Exception as exc:  # a parser bug on one file must not abort the run
            return [_failure_row(common, f"parse error: {type(exc).__name__}: {exc}")]
        signature = parse_signature(record["file"], self.redactor.signature, document.ocr_engine, self.config.pdf_tables)
        incomplete = json.dumps(document.incomplete)
        title, found = self._redact(document.title or "")
        pii.update(found)
        return [
            {
                **common,
                "chunk_id": make_chunk_id(sha, record["file"], chunk.chunk_index, record.get("source") or ""),
                "page": chunk.page,
                "chunk_index": chunk.chunk_index,
                "char_start": chunk.char_start,
                "char_end": chunk.char_end,
                "text": chunk.text,
                "title": title,
                "location": json.dumps(chunk.location.to_dict(), sort_keys=True, ensure_ascii=False),
                "ocr_confidence": chunk.ocr_confidence,
                "parse_signature": signature,
                "error": "",
                "pii": json.dumps(dict(sorted(pii.items()))),
                "incomplete": incomplete,
            }
            for chunk in chunks
        ]


REDACT_PIECE_CHARS = 200_000


def _line_pieces(text: str, limit: int = REDACT_PIECE_CHARS) -> list[str]:
    """`text` cut at line ends into pieces of at most about `limit` characters (the NLP pipeline
    Presidio tokenises with refuses texts over a million characters)."""
    pieces, start = [], 0
    while start < len(text):
        end = start + limit
        if end < len(text):
            # Cut after a line, else after a word: a value split in two would not be recognised.
            cut = max(text.rfind("\n", start, end), text.rfind(" ", start, end))
            end = cut + 1 if cut > start else end
        pieces.append(text[start:end])
        start = end
    return pieces


def _failure_row(common: dict[str, Any], reason: str) -> dict[str, Any]:
    return {
        **common,
        "chunk_id": "",
        "page": 0,
        "chunk_index": -1,
        "char_start": 0,
        "char_end": 0,
        "text": "",
        "title": "",
        "location": None,
        "ocr_confidence": None,
        "parse_signature": "",
        "error": reason,
        "pii": "{}",
        "incomplete": "[]",
    }


# Columns the pipeline adds for the driver, dropped before chunks are stored.
PIPELINE_COLUMNS = ["error", "pii", "incomplete", "parse_node", "embed_node"]


def parsed_schema() -> pa.Schema:
    fields = [f for f in chunk_schema(1) if f.name != "embedding"]
    extra = [
        pa.field("error", pa.string()),
        pa.field("pii", pa.string()),
        pa.field("incomplete", pa.string()),
        pa.field("parse_node", pa.string()),
    ]
    return pa.schema([*fields, *extra])


def parse_and_chunk_batch(files: pa.Table, config: ParseConfig) -> pa.Table:
    """Task-based Ray Data entry point (a function: the stage holds no expensive state)."""
    return ParseAndChunk(config)(unpack_blocks(files))


FILE_ROW_COLUMNS = ("file", "source", "data", "sidecar_sha256", "metadata")


def pack_block(rows: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """A block's files as one row of lists (see build_dataset)."""
    return {column: [row[column] for row in rows] for column in FILE_ROW_COLUMNS}


def unpack_blocks(files: pa.Table) -> pa.Table:
    """Packed blocks (one row of lists per block) back to one row per file; a table with a row
    per file already is returned as it is."""
    kind = files.schema.field("file").type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)):
        return files
    return pa.table({column: pc.list_flatten(files.column(column)) for column in FILE_ROW_COLUMNS})


class EmbedChunks:
    """Adds an `embedding` column; failure rows get zeros and are filtered by the writer.

    Also the Ray Data actor class: one model load per actor, reused across batches."""

    def __init__(
        self, spec: dict[str, Any], device: str = "auto", torch_threads: int | None = None, batch_size: int = 64, contextual: bool = False
    ):
        # Ray sets OMP_NUM_THREADS to the actor's CPU reservation (1), which halves CPU throughput
        # on a 2-core node; the thread count is set explicitly instead.
        threads = torch_threads or node_cores()
        self.model = load_for_spec(EmbeddingModelSpec.from_dict(spec), device, threads)
        self.batch_size = batch_size
        self.contextual = contextual

    def __call__(self, chunks: pa.Table) -> pa.Table:
        dimension = self.model.spec.dimension
        errors = chunks.column("error").to_pylist()
        texts = indexed_texts(chunks, self.contextual)
        wanted = [i for i, error in enumerate(errors) if not error]
        vectors = np.zeros((chunks.num_rows, dimension), dtype=np.float32)
        if wanted:
            vectors[wanted] = self.model.embed_documents([texts[i] for i in wanted], self.batch_size)
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), type=pa.float32()), dimension)
        nodes = pa.array([current_node_id()] * chunks.num_rows, type=pa.string())
        return chunks.append_column("embedding", column).append_column("embed_node", nodes)


# -- Resources: what an ingest asks Ray for ---------------------------------------------------
# The least CPU a parse task or an embedding actor asks for when sized automatically. Requests are
# reservations, not limits: a task asking 0.05 CPU still runs at a full core's speed when the core
# is idle (as the reserved-but-idle Serve replicas leave it). Below this, the cluster is taken to
# have nothing to spare, and the job fails at once instead of queueing behind it.
MIN_CPU_SHARE = 0.05
MAX_CPU_SHARE = 1.0


class NoCpuToSpare(RuntimeError):
    """The cluster has not even MIN_CPU_SHARE of a CPU free for each of the job's workers."""


def _cgroup_cpu_limit() -> float | None:
    """The CPU quota of this process's cgroup (a container's CPU limit), in CPUs; None when unlimited."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]  # cgroup v2: "max 100000" or "200000 100000"
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read())
        period_us = int(open("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def node_cores() -> int:
    """The cores this process can really run on: its CPU affinity (taskset, cpusets), bounded by
    a cgroup CPU quota. Not Ray's logical CPUs, which a cluster may declare at any number."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = _cgroup_cpu_limit()
    if limit:
        cores = min(cores, max(1, math.ceil(limit - 1e-9)))
    return max(1, cores)


def _floor_share(value: float) -> float:
    """Down to a hundredth of a CPU, so the shares never add up to more than what was free."""
    return math.floor(value * 100 + 1e-6) / 100


@dataclass(frozen=True)
class CpuPlan:
    parse_num_cpus: float
    embed_num_cpus: float
    parse_concurrency: int


def plan_cpus(
    free_cpus: float,
    cores: int,
    embed_actors: int,
    parse_num_cpus: float | str = "auto",
    embed_num_cpus: float | str = "auto",
    parse_concurrency: int | str = "auto",
    largest_free_on_a_node: float | None = None,
) -> CpuPlan:
    """CPU requests for the parse tasks and embedding actors of a run that starts now.

    - Parse concurrency ('auto'): the cores of the cluster's nodes (`cores`), never their logical
      CPUs, so parse tasks and the embedding actor do not oversubscribe the machine.
    - 'auto' requests: what is free (`free_cpus`, less any explicit request) split evenly over the
      embedding actors that must start (`embed_actors`) and the concurrent parse tasks, at most
      1 CPU each, floored to a hundredth. When that is below MIN_CPU_SHARE, fewer parse tasks
      run at once (down to one); when even one parse task and the actors cannot get
      MIN_CPU_SHARE each, NoCpuToSpare says why.
    - Explicit numbers are used as given (they may be meant for an autoscaler to make room).
    """
    concurrency = cores if parse_concurrency == "auto" else int(parse_concurrency)
    concurrency = max(1, concurrency)
    parse_auto, embed_auto = parse_num_cpus == "auto", embed_num_cpus == "auto"
    if not parse_auto and not embed_auto:
        return CpuPlan(float(parse_num_cpus), float(embed_num_cpus), concurrency)
    left = free_cpus
    if not parse_auto:
        left -= float(parse_num_cpus)  # at least one parse task must fit beside the actors
    if not embed_auto:
        left -= float(embed_num_cpus) * embed_actors
    auto_actors = embed_actors if embed_auto else 0

    def share(parse_tasks: int) -> float:
        units = (parse_tasks if parse_auto else 0) + auto_actors
        value = min(MAX_CPU_SHARE, _floor_share(max(left, 0.0) / units))
        if largest_free_on_a_node is not None:  # one request must fit on one node
            value = min(value, _floor_share(largest_free_on_a_node))
        return value

    cpus = share(concurrency)
    if cpus < MIN_CPU_SHARE and parse_auto and concurrency > 1:
        concurrency = max(1, int((max(left, 0.0) + 1e-9) // MIN_CPU_SHARE) - auto_actors)
        cpus = share(concurrency)
    if cpus < MIN_CPU_SHARE:
        explicit = []
        if not parse_auto:
            explicit.append(f"ingest.parse_num_cpus={float(parse_num_cpus):g}")
        if not embed_auto:
            explicit.append(f"ingest.embed_num_cpus={float(embed_num_cpus):g} per actor")
        taken = f" after {' and '.join(explicit)}" if explicit else ""
        raise NoCpuToSpare(
            f"no CPU to spare for the ingest: {max(free_cpus, 0.0):.2f} CPU free in the cluster{taken}, and it needs at least "
            f"{MIN_CPU_SHARE} CPU for each of {embed_actors} embedding actor(s) and one parse task. Free CPUs (fewer Serve "
            "replicas, other jobs stopped), add a node, or set ingest.parse_num_cpus and ingest.embed_num_cpus to numbers "
            "(the run then waits up to ingest.stall_timeout_s for them)"
        )
    return CpuPlan(
        cpus if parse_auto else float(parse_num_cpus),
        cpus if embed_auto else float(embed_num_cpus),
        concurrency,
    )


# -- Blocks: which files one parse task reads ---------------------------------------------------
def group_files(sizes: Sequence[int], max_files: int, max_bytes: int) -> list[list[int]]:
    """Indices of files (in order) packed into blocks: consecutive files share a block while it
    holds fewer than `max_files` and their bytes stay within `max_bytes`; a file of `max_bytes`
    or more is a block alone. Every file is in exactly one block, and the order is kept.

    One task per tiny file is mostly overhead (scheduling, a block in the object store, stats),
    while a big file gains nothing from company and would only hold its neighbours hostage
    should its worker die."""
    max_files = max(1, max_files)
    groups: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for index, size in enumerate(sizes):
        if size >= max_bytes:
            if current:
                groups.append(current)
                current, current_bytes = [], 0
            groups.append([index])
            continue
        if current and (len(current) >= max_files or current_bytes + size > max_bytes):
            groups.append(current)
            current, current_bytes = [], 0
        current.append(index)
        current_bytes += size
    if current:
        groups.append(current)
    return groups


def files_per_block(max_files: int, files: int, parse_concurrency: int, blocks_per_task: int = 4) -> int:
    """`max_files`, lowered for a small run so that every concurrent parse task still gets
    several blocks (parsing stays parallel and the embedding actor starts early)."""
    return max(1, min(max_files, math.ceil(files / (parse_concurrency * blocks_per_task))))


@dataclass(frozen=True)
class PipelineResources:
    embed_batch_size: int
    embed_actors_min: int
    embed_actors_max: int
    embed_num_cpus: float
    embed_num_gpus: float
    embed_torch_threads: int | None
    embedding_device: str
    parse_num_cpus: float
    parse_concurrency: int | None = None  # None: as many parse tasks as Ray Data sees fit


def build_dataset(
    file_rows: Sequence[dict[str, Any]],
    parse_config: ParseConfig,
    spec: EmbeddingModelSpec,
    resources: PipelineResources,
    groups: Sequence[Sequence[int]] | None = None,
) -> Any:
    """The Ray Data plan for the files to (re)index. Files are read by the driver and handed over
    as rows, so no worker needs the source folder on its own disk. `groups` (from group_files)
    says which files share a block; default: one file per block."""
    import ray

    if groups is None:
        groups = [[index] for index in range(len(file_rows))]
    # A block is one parse task: a worker that dies on a file (out of memory, a crash in a native
    # parser) loses that block only, and the driver reports its files (or parses them again
    # one by one) instead of failing the run.
    ray.data.DataContext.get_current().max_errored_blocks = max(1, len(groups))
    # One item per block, holding its files as lists: from_items puts exactly one item in each
    # block, in the driver (from_arrow would run a metadata task per table asking a whole CPU,
    # which waits forever beside a serving graph that leaves less than one free).
    blocks = [pack_block([file_rows[index] for index in group]) for group in groups]
    dataset = ray.data.from_items(blocks, override_num_blocks=max(1, len(blocks)))
    dataset = dataset.map_batches(
        parse_and_chunk_batch,
        fn_kwargs={"config": parse_config},
        batch_format="pyarrow",
        batch_size=None,  # one block = one task
        num_cpus=resources.parse_num_cpus,
        compute=ray.data.TaskPoolStrategy(size=resources.parse_concurrency),
        # Remote args that differ from the embed stage's keep Ray Data from fusing parsing into
        # the (few) embedding actors, which would serialise it (the automatic CPU requests of
        # both are often equal); parsing is deterministic, so retries only cover lost workers.
        # Ray 2.60 warns that remote args passed this way go in 2.64.
        max_retries=2,
    )
    device = resources.embedding_device
    if resources.embed_num_gpus > 0 and device == "auto":
        device = "cuda"
    return dataset.map_batches(
        EmbedChunks,
        fn_constructor_kwargs={
            "spec": spec.to_dict(),
            "device": device,
            "torch_threads": resources.embed_torch_threads,
            "batch_size": resources.embed_batch_size,
            "contextual": parse_config.contextual,
        },
        batch_format="pyarrow",
        batch_size=resources.embed_batch_size,
        compute=ray.data.ActorPoolStrategy(min_size=resources.embed_actors_min, max_size=resources.embed_actors_max),
        num_cpus=resources.embed_num_cpus,
        num_gpus=resources.embed_num_gpus,
    )


def file_row(path: str, data: bytes, sidecar_sha256: str, metadata: dict[str, Any], source: str = "") -> dict[str, Any]:
    return {
        "file": path,
        "source": source,
        "data": data,
        "sidecar_sha256": sidecar_sha256,
        "metadata": json.dumps(metadata, sort_keys=True),
    }
