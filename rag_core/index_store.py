"""The versioned index: each version's vectors in its own ChromaDB collection, its chunks and
embeddings in Parquet, its manifest beside them, and one atomically replaced "current" pointer.

Two stores:
- embedded (no `chroma_url`): everything lives in `index_dir` on one machine.
- server (`chroma_url` set, the cluster path): the pointer, each committed version's info and the
  last ingest summary also live on the Chroma server, in the `<prefix>-meta` collection, and
  readers (Serve replicas on any node) use only the server: no disk is shared between nodes.
  `index_dir` is then the ingest writer's own state (manifests, Parquet copy, audit trail, lock),
  kept on the node that runs ingest jobs (the head).

A version is built apart from the one being served and only becomes visible when the pointer
flips, so readers never see a half-written index. An embedded Chroma client that stays open
while another process writes the same collection returns stale vectors; giving every version
its own folder (embedded) or collection (server) and reopening on a version change avoids that.

Layout of `index_dir`:
    CURRENT.json                  pointer: {"version": ..., "updated_at": ...} (embedded store)
    audit.jsonl                   audit trail
    ingest.lock                   held by the one writer
    versions/<version>/
        version.json              written last: its presence marks the version committed
        manifest.json             path -> sha256, chunk ids
        chunks/part-*.parquet     chunk rows with embeddings (self-describing, for rebuilds)
        chroma/                   embedded ChromaDB (absent in server mode)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from rag_core.audit import AuditLog, utc_now
from rag_core.contextual import DOCUMENT_TITLE_KEY, indexed_text
from rag_core.embedding import EmbeddingModelSpec
from rag_core.location import LOCATION_METADATA_KEYS, Location
from rag_core.manifest import Manifest, ManifestEntry, doc_key

log = logging.getLogger("rag_core.index_store")

POINTER_FILE = "CURRENT.json"
VERSIONS_DIR = "versions"
VERSION_INFO_FILE = "version.json"
MANIFEST_FILE = "manifest.json"
PARQUET_DIR = "chunks"
CHROMA_DIR = "chroma"
LOCK_FILE = "ingest.lock"
AUDIT_FILE = "audit.jsonl"
EMBEDDED_COLLECTION = "chunks"
META_COLLECTION_SUFFIX = "meta"
SERVER_PAGE_SIZE = 5_000
PARQUET_METADATA_KEY = b"rag_index"
PARQUET_ROWS_PER_FILE = 100_000

_VERSION_PATTERN = re.compile(r"^v(\d{6,})$")

# Chroma's defaults (16 neighbours, ef 100) lose recall when thousands of near-identical vectors
# sit together, as the rows of one large table do: on the shared documents, a question about a
# chart got none of its 10 true nearest chunks, only rows of a 13,000-row CSV (recall@10 0.83 over
# 33 questions). 32 neighbours and ef 200 give 0.98 at the same query time (README, Results).
HNSW_CONFIGURATION = {"space": "cosine", "max_neighbors": 32, "ef_construction": 200, "ef_search": 200}

# Chunk metadata written by the pipeline; sidecar keys may not override these.
RESERVED_METADATA_KEYS = frozenset(
    {
        "file",
        "source",
        "page",
        "chunk_index",
        "char_start",
        "char_end",
        "file_sha256",
        "ingested_at",
        "index_version",
        "ocr",
        "ocr_confidence",
        DOCUMENT_TITLE_KEY,
    }
    | LOCATION_METADATA_KEYS
)


class IndexStoreError(RuntimeError):
    """The index is missing, unreadable or cannot be written."""


class IndexLockBusy(IndexStoreError):
    """Another ingest run or rollback holds the index lock."""


def chunk_schema(dimension: int) -> pa.Schema:
    return pa.schema(
        [
            ("chunk_id", pa.string()),
            ("file", pa.string()),
            ("page", pa.int32()),
            ("chunk_index", pa.int32()),
            ("char_start", pa.int32()),
            ("char_end", pa.int32()),
            ("text", pa.string()),
            ("file_sha256", pa.string()),
            ("sidecar_sha256", pa.string()),
            ("file_size", pa.int64()),
            ("ingested_at", pa.string()),
            ("index_version", pa.string()),
            ("metadata", pa.string()),  # JSON object of sidecar keys
            ("location", pa.string()),  # JSON of rag_core.location.Location; null = a page
            ("ocr_confidence", pa.float32()),  # mean OCR word confidence 0-100; null = not OCR'd
            ("parse_signature", pa.string()),  # parser, OCR engine and redaction that produced the text
            ("source", pa.string()),  # the named source holding the file; "" = indexed before sources were named
            ("title", pa.string()),  # the document's own title (rag_core.contextual); "" = none stated
            ("embedding", pa.list_(pa.float32(), dimension)),
        ]
    )


# Columns added after the first release, with what rows written before them mean.
_LATER_COLUMNS = {"location": None, "ocr_confidence": None, "parse_signature": "", "source": "", "title": ""}


def chunk_location(row: dict[str, Any]) -> Location:
    raw = row.get("location")
    return Location.from_dict(json.loads(raw)) if raw else Location("page", int(row["page"]))


def indexed_texts(table: pa.Table, contextual: bool) -> list[str]:
    """What chunk rows are embedded and BM25-indexed by: their text, with their document's title
    and section heading in front when `contextual` (the version's chunking record says which)."""
    texts = table.column("text").to_pylist()
    if not contextual:
        return texts
    titles = table.column("title").to_pylist() if "title" in table.column_names else [None] * len(texts)
    locations = table.column("location").to_pylist() if "location" in table.column_names else [None] * len(texts)
    return [
        indexed_text(text, title=title, heading=Location.from_dict(json.loads(location)).heading if location else None)
        for text, title, location in zip(texts, titles, locations)
    ]


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created_at: str
    embedding_model: dict[str, Any]
    chunking: dict[str, Any]
    chunks_total: int
    files_total: int
    store: str  # "embedded" or the Chroma server URL
    collection: str
    parent_version: str | None = None

    @property
    def model_spec(self) -> EmbeddingModelSpec:
        return EmbeddingModelSpec.from_dict(self.embedding_model)

    @classmethod
    def load(cls, path: Path) -> VersionInfo:
        return cls(**json.loads(path.read_text()))


def _atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class ChromaBackend:
    """Where a version's vectors live: its own embedded folder, or its own collection on a server."""

    def __init__(self, versions_root: Path, chroma_url: str | None, collection_prefix: str):
        self.versions_root = versions_root
        self.chroma_url = chroma_url
        self.collection_prefix = collection_prefix
        self._http_client: Any = None

    @property
    def store_name(self) -> str:
        return self.chroma_url or "embedded"

    def collection_name(self, version: str) -> str:
        return f"{self.collection_prefix}-{version}" if self.chroma_url else EMBEDDED_COLLECTION

    def client(self, version: str) -> Any:
        import chromadb

        if self.chroma_url:
            if self._http_client is None:
                parsed = urlparse(self.chroma_url)
                self._http_client = chromadb.HttpClient(
                    host=parsed.hostname or "127.0.0.1",
                    port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                    ssl=parsed.scheme == "https",
                )
            return self._http_client
        return chromadb.PersistentClient(path=str(self.versions_root / version / CHROMA_DIR))

    def create(self, version: str) -> tuple[Any, Any]:
        """A new, empty collection for `version` and the client that owns it."""
        client = self.client(version)
        name = self.collection_name(version)
        if self.chroma_url:
            self._drop_if_present(client, name)  # left over from a killed build of this version
        # embedding_function=None: vectors are always passed in; Chroma's default would download a model.
        collection = client.create_collection(name, configuration={"hnsw": HNSW_CONFIGURATION}, embedding_function=None)
        return client, collection

    def open(self, version: str) -> tuple[Any, Any]:
        client = self.client(version)
        return client, client.get_collection(self.collection_name(version), embedding_function=None)

    def release(self, client: Any) -> None:
        """Close an embedded client so its files are flushed and free; the server client is shared."""
        if not self.chroma_url:
            client.close()

    def drop(self, version: str) -> None:
        if self.chroma_url:
            self._drop_if_present(self.client(version), self.collection_name(version))

    @staticmethod
    def _drop_if_present(client: Any, name: str) -> None:
        try:
            client.delete_collection(name)
        except Exception:  # chromadb raises NotFoundError/ValueError depending on the backend
            pass


class ServerCatalog:
    """The index's shared state on the Chroma server: the current pointer, committed versions'
    info and the last completed ingest, as JSON records in the `<prefix>-meta` collection.

    Readers on every node follow the pointer from here. The pointer is cached for
    `pointer_cache_s` because the ingress reads it on every request (for the cache key); a failed
    read keeps the last value seen, so a Chroma blip does not take the cache key away."""

    POINTER = "pointer"
    LAST_INGEST = "last-ingest"

    def __init__(self, backend: ChromaBackend, pointer_cache_s: float = 1.0):
        self.backend = backend
        self.pointer_cache_s = pointer_cache_s
        self._collection: Any = None
        self._pointer: tuple[float, str | None] | None = None  # (read at, version)
        self._lock = threading.Lock()

    @property
    def collection_name(self) -> str:
        return f"{self.backend.collection_prefix}-{META_COLLECTION_SUFFIX}"

    def _meta(self) -> Any:
        if self._collection is None:
            client = self.backend.client(META_COLLECTION_SUFFIX)
            self._collection = client.get_or_create_collection(self.collection_name, embedding_function=None)
        return self._collection

    def _get(self, record_id: str) -> dict[str, Any] | None:
        got = self._meta().get(ids=[record_id], include=["documents"])
        return json.loads(got["documents"][0]) if got["ids"] else None

    def _put(self, record_id: str, payload: dict[str, Any]) -> None:
        # Chroma keeps a vector per record; these records are looked up by id only.
        self._meta().upsert(ids=[record_id], documents=[json.dumps(payload, default=str)], embeddings=[[1.0]])

    def pointer(self) -> str | None:
        now = time.monotonic()
        cached = self._pointer
        if cached is not None and now - cached[0] < self.pointer_cache_s:
            return cached[1]
        with self._lock:
            try:
                record = self._get(self.POINTER)
            except Exception as exc:
                if cached is None:
                    raise IndexStoreError(f"cannot read the index pointer from {self.backend.chroma_url}: {exc}") from exc
                log.warning("index pointer unreadable; keeping the last one", extra={"fields": {"error": str(exc)[:200]}})
                return cached[1]
            version = record["version"] if record else None
            self._pointer = (now, version)
            return version

    def set_pointer(self, version: str) -> None:
        self._put(self.POINTER, {"version": version, "updated_at": utc_now()})
        self._pointer = (time.monotonic(), version)

    def version_info(self, version: str) -> VersionInfo | None:
        record = self._get(f"version:{version}")
        return VersionInfo(**record) if record else None

    def put_version(self, info: VersionInfo) -> None:
        self._put(f"version:{info.version}", asdict(info))

    def versions(self) -> list[str]:
        """Committed versions known to the server (any writer's, whatever its disk still holds)."""
        ids = self._meta().get(include=[])["ids"]
        return [i.split(":", 1)[1] for i in ids if i.startswith("version:")]

    def drop_version(self, version: str) -> None:
        self._meta().delete(ids=[f"version:{version}"])

    def last_ingest(self) -> dict[str, Any] | None:
        return self._get(self.LAST_INGEST)

    def put_last_ingest(self, record: dict[str, Any]) -> None:
        self._put(self.LAST_INGEST, record)


def compact_ingest_record(record: dict[str, Any]) -> dict[str, Any]:
    """An audit record with its per-file list replaced by counts per action (bounded size)."""
    compact = {k: v for k, v in record.items() if k != "files"}
    compact["file_actions"] = dict(Counter(entry["action"] for entry in record.get("files", [])))
    return compact


def chroma_metadata(row: dict[str, Any]) -> dict[str, Any]:
    metadata = {
        "file": row["file"],
        "source": row.get("source") or "",
        "page": int(row["page"]),
        "chunk_index": int(row["chunk_index"]),
        "char_start": int(row["char_start"]),
        "char_end": int(row["char_end"]),
        "file_sha256": row["file_sha256"],
        "ingested_at": row["ingested_at"],
        "index_version": row["index_version"],
        "ocr": row.get("ocr_confidence") is not None,
    }
    if row.get("ocr_confidence") is not None:
        metadata["ocr_confidence"] = round(float(row["ocr_confidence"]), 1)
    if row.get("title"):
        metadata[DOCUMENT_TITLE_KEY] = row["title"]
    metadata.update(chunk_location(row).to_metadata())
    for key, value in json.loads(row["metadata"] or "{}").items():
        # Sidecars written before a key was reserved (doc_title) never stand in for the service's own.
        if key not in RESERVED_METADATA_KEYS:
            metadata.setdefault(key, value)
    return metadata


class VersionBuilder:
    """Writes one new version apart from the current one; nothing is visible until commit."""

    def __init__(self, index: VersionedIndex, version: str, spec: EmbeddingModelSpec, chunking: dict[str, Any], parent: str | None):
        self.index = index
        self.version = version
        self.spec = spec
        self.chunking = chunking
        self.parent = parent
        self.directory = index.versions_root / version
        self.directory.mkdir(parents=True, exist_ok=False)
        self.schema = chunk_schema(spec.dimension).with_metadata(
            {PARQUET_METADATA_KEY: json.dumps({"embedding_model": spec.to_dict(), "chunking": chunking, "version": version})}
        )
        self._client, self._collection = index.backend.create(version)
        self._parquet_dir = self.directory / PARQUET_DIR
        self._parquet_dir.mkdir()
        self._parquet_writer: pq.ParquetWriter | None = None
        self._parquet_part = 0
        self._rows_in_part = 0
        self.chunks_written = 0

    def add(self, table: pa.Table) -> None:
        """Add chunk rows (schema of chunk_schema) to the vector store and the Parquet copy."""
        if table.num_rows == 0:
            return
        table = table.select(self.schema.names).cast(self.schema)
        rows = table.drop_columns(["embedding"]).to_pylist()
        embeddings = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        embeddings = embeddings.reshape(table.num_rows, self.spec.dimension)
        self._collection.add(
            ids=[row["chunk_id"] for row in rows],
            embeddings=np.ascontiguousarray(embeddings, dtype=np.float32),
            documents=[row["text"] for row in rows],
            metadatas=[chroma_metadata(row) for row in rows],
        )
        self._write_parquet(table)
        self.chunks_written += table.num_rows

    def _write_parquet(self, table: pa.Table) -> None:
        if self._parquet_writer is None or self._rows_in_part >= PARQUET_ROWS_PER_FILE:
            if self._parquet_writer is not None:
                self._parquet_writer.close()
            path = self._parquet_dir / f"part-{self._parquet_part:05d}.parquet"
            self._parquet_writer = pq.ParquetWriter(path, self.schema)
            self._parquet_part += 1
            self._rows_in_part = 0
        self._parquet_writer.write_table(table)
        self._rows_in_part += table.num_rows

    def commit(self, manifest: Manifest) -> VersionInfo:
        """Make the version complete on disk (not yet current): data, manifest, then version.json."""
        if self._parquet_writer is None:  # an empty version still gets a readable, empty dataset
            self._write_parquet(self.schema.empty_table())
        self._parquet_writer.close()
        self._parquet_writer = None
        stored = self._collection.count()
        if stored != self.chunks_written or stored != manifest.chunk_count:
            raise IndexStoreError(
                f"version {self.version}: the store holds {stored} chunks, {self.chunks_written} were written "
                f"and the manifest lists {manifest.chunk_count}; not committing"
            )
        self.index.backend.release(self._client)
        _atomic_write(self.directory / MANIFEST_FILE, manifest.to_json())
        info = VersionInfo(
            version=self.version,
            created_at=utc_now(),
            embedding_model=self.spec.to_dict(),
            chunking=self.chunking,
            chunks_total=stored,
            files_total=len(manifest.files),
            store=self.index.backend.store_name,
            collection=self.index.backend.collection_name(self.version),
            parent_version=self.parent,
        )
        if self.index.catalog is not None:  # readers on other nodes find the version there
            self.index.catalog.put_version(info)
        _atomic_write(self.directory / VERSION_INFO_FILE, json.dumps(asdict(info), indent=1))
        return info

    def abort(self) -> None:
        """Drop the half-built version. Every step is tried even when one fails: on a full disk
        the Parquet writer's close fails too, and the version's files must still go."""
        steps = [lambda: self.index.backend.release(self._client), lambda: self.index.discard(self.version)]
        if self._parquet_writer is not None:
            steps.insert(0, self._parquet_writer.close)
        for step in steps:
            try:
                step()
            except Exception as exc:
                log.warning("cleanup of an aborted version failed", extra={"fields": {"version": self.version, "error": str(exc)[:300]}})


class VersionedIndex:
    """Versions, the current pointer, the writer lock, rollback and garbage collection."""

    def __init__(self, index_dir: Path, chroma_url: str | None = None, collection_prefix: str = "rag", pointer_cache_s: float = 1.0):
        self.index_dir = Path(index_dir)
        self.versions_root = self.index_dir / VERSIONS_DIR
        self.backend = ChromaBackend(self.versions_root, chroma_url, collection_prefix)
        self.catalog = ServerCatalog(self.backend, pointer_cache_s) if chroma_url else None
        self.audit = AuditLog(self.index_dir / AUDIT_FILE)

    @classmethod
    def from_settings(cls, settings: Any) -> VersionedIndex:
        return cls(settings.index_dir, settings.chroma_url, settings.chroma_collection_prefix, settings.chroma_pointer_cache_s)

    @property
    def location(self) -> str:
        """Where readers look, for messages: the Chroma server or the index folder."""
        return self.backend.chroma_url or str(self.index_dir)

    # -- reading ---------------------------------------------------------------------------
    def current_version(self) -> str | None:
        if self.catalog is not None:
            return self.catalog.pointer()
        pointer = self.index_dir / POINTER_FILE
        if not pointer.exists():
            return None
        return json.loads(pointer.read_text())["version"]

    def info(self, version: str) -> VersionInfo:
        if self.catalog is not None:
            info = self.catalog.version_info(version)
            if info is None:
                raise IndexStoreError(f"index version {version!r} is not committed on {self.backend.chroma_url}")
            return info
        path = self.versions_root / version / VERSION_INFO_FILE
        if not path.exists():
            raise IndexStoreError(f"index version {version!r} does not exist or was never committed")
        return VersionInfo.load(path)

    def chunk_rows(self, version: str) -> tuple[list[str], list[str], list[dict[str, Any]]]:
        """A version's chunk ids, texts and metadata (the lexical index's input): from the
        server's collection in server mode, so a reader needs no file of the writer's."""
        if self.catalog is None:
            table, _ = read_parquet_version(self.parquet_dir(version))
            rows = table.drop_columns(["embedding"]).to_pylist()
            return [r["chunk_id"] for r in rows], [r["text"] for r in rows], [chroma_metadata(r) for r in rows]
        _, collection = self.backend.open(version)
        ids: list[str] = []
        texts: list[str] = []
        metadatas: list[dict[str, Any]] = []
        total = collection.count()
        for offset in range(0, total, SERVER_PAGE_SIZE):
            page = collection.get(include=["documents", "metadatas"], limit=SERVER_PAGE_SIZE, offset=offset)
            ids += page["ids"]
            texts += page["documents"]
            metadatas += page["metadatas"]
        if len(ids) != total or len(set(ids)) != total:
            raise IndexStoreError(f"version {version}: read {len(set(ids))} distinct chunks of {total} from the server")
        return ids, texts, metadatas

    def last_completed_ingest(self) -> dict[str, Any] | None:
        """The last successful ingest run's audit record (per-file actions as counts in server mode)."""
        if self.catalog is not None:
            return self.catalog.last_ingest()
        return self.audit.last_completed_ingest()

    def record(self, event: dict[str, Any]) -> None:
        """Append to the audit trail; a completed ingest is also published for readers on any node."""
        self.audit.append(event)
        if self.catalog is not None and event.get("event") == "ingest" and event.get("status") == "completed":
            self.catalog.put_last_ingest(compact_ingest_record(event))

    def current_info(self) -> VersionInfo | None:
        version = self.current_version()
        return self.info(version) if version else None

    def manifest(self, version: str | None) -> Manifest:
        if version is None:
            return Manifest()
        return Manifest.load(self.versions_root / version / MANIFEST_FILE)

    def parquet_dir(self, version: str) -> Path:
        return self.versions_root / version / PARQUET_DIR

    def committed_versions(self) -> list[str]:
        if self.catalog is not None:  # the server's list: it outlives any one writer's disk
            return sorted((v for v in self.catalog.versions() if _VERSION_PATTERN.match(v)), key=lambda name: int(name[1:]))
        return [v for v in self._all_version_dirs() if (self.versions_root / v / VERSION_INFO_FILE).exists()]

    def _all_version_dirs(self) -> list[str]:
        if not self.versions_root.exists():
            return []
        names = [p.name for p in self.versions_root.iterdir() if p.is_dir() and _VERSION_PATTERN.match(p.name)]
        return sorted(names, key=lambda name: int(name[1:]))

    # -- writing (callers hold the lock) ---------------------------------------------------
    @contextmanager
    def lock(self, timeout_s: float = 0.0, holder: str = "") -> Iterator[None]:
        self.index_dir.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.index_dir / LOCK_FILE), timeout=timeout_s)
        owner_file = self.index_dir / f"{LOCK_FILE}.owner"
        try:
            lock.acquire()
        except Timeout:
            owner = owner_file.read_text().strip() if owner_file.exists() else "unknown"
            raise IndexLockBusy(
                f"another ingest run or rollback is writing {self.index_dir} ({owner}); "
                f"retry when it finishes, or set ingest.lock_timeout_s to wait for it"
            ) from None
        try:
            owner_file.write_text(f"pid {os.getpid()} {holder} since {utc_now()}")
            yield
        finally:
            lock.release()

    def next_version(self) -> str:
        # Includes builds left by killed runs; an aborted build's number may be reused since it was
        # never visible (a leftover server collection of that name is dropped before reuse).
        existing = self._all_version_dirs()
        if self.catalog is not None:
            # A writer whose index_dir was lost must not reuse a number the server still serves.
            existing += [v for v in self.catalog.versions() if _VERSION_PATTERN.match(v)]
        number = max((int(v[1:]) for v in existing), default=0) + 1
        return f"v{number:06d}"

    def begin(self, spec: EmbeddingModelSpec, chunking: dict[str, Any], parent: str | None) -> VersionBuilder:
        return VersionBuilder(self, self.next_version(), spec, chunking, parent)

    def set_current(self, version: str) -> None:
        self.info(version)  # refuse to point at an uncommitted version
        if self.catalog is not None:
            self.catalog.set_pointer(version)
            return
        _atomic_write(self.index_dir / POINTER_FILE, json.dumps({"version": version, "updated_at": utc_now()}))

    def discard(self, version: str) -> None:
        if version == self.current_version():
            raise IndexStoreError(f"refusing to delete the current version {version}")
        if self.catalog is not None:
            self.catalog.drop_version(version)  # first: no reader may find a version being dropped
        self.backend.drop(version)
        shutil.rmtree(self.versions_root / version, ignore_errors=True)

    def purge_versions_holding(self, keys: set[str]) -> list[str]:
        """Drop every committed version other than the current one whose manifest holds one of
        these documents (manifest keys): a deleted document cannot come back by a rollback."""
        current = self.current_version()
        purged = [v for v in self.committed_versions() if v != current and keys & set(self.manifest(v).files)]
        for version in purged:
            self.discard(version)
        return purged

    def garbage_collect(self, keep: int) -> list[str]:
        """Drop unfinished builds and committed versions beyond the newest `keep` (never the current one)."""
        current = self.current_version()
        committed = self.committed_versions()
        keep_set = set(committed[-keep:] if keep > 0 else []) | ({current} if current else set())
        candidates = sorted(set(self._all_version_dirs()) | set(committed), key=lambda name: int(name[1:]))
        removed = [v for v in candidates if v not in keep_set]
        for version in removed:
            self.discard(version)
        return removed


def read_parquet_version(parquet_dir: Path) -> tuple[pa.Table, dict[str, Any]]:
    """A version's chunk rows and its recorded model/chunking metadata."""
    files = sorted(Path(parquet_dir).glob("*.parquet"))
    if not files:
        raise IndexStoreError(f"no Parquet files in {parquet_dir}")
    schema = pq.read_schema(files[0])
    raw = (schema.metadata or {}).get(PARQUET_METADATA_KEY)
    if raw is None:
        raise IndexStoreError(f"{parquet_dir} was not written by this project (no {PARQUET_METADATA_KEY.decode()} metadata)")
    table = pa.concat_tables([pq.read_table(f) for f in files])
    for name, default in _LATER_COLUMNS.items():  # a version written before the column existed
        if name not in table.column_names:
            field = chunk_schema(1).field(name)
            table = table.add_column(
                table.schema.get_field_index("embedding"), field, pa.array([default] * table.num_rows, type=field.type)
            )
    return table, json.loads(raw)


MANIFEST_COLUMNS = [
    "source",
    "file",
    "chunk_id",
    "chunk_index",
    "file_sha256",
    "sidecar_sha256",
    "file_size",
    "index_version",
    "parse_signature",
]


def manifest_from_rows(table: pa.Table) -> Manifest:
    """The manifest entries described by chunk rows (each file's chunk ids in order)."""
    entries: dict[str, dict[str, Any]] = {}
    columns = table.select(MANIFEST_COLUMNS).to_pylist()
    for row in sorted(columns, key=lambda r: (r["source"] or "", r["file"], r["chunk_index"])):
        entry = entries.setdefault(
            doc_key(row["source"] or "", row["file"]),
            {
                "source": row["source"] or "",
                "path": row["file"],
                "sha256": row["file_sha256"],
                "sidecar_sha256": row["sidecar_sha256"],
                "size": row["file_size"],
                "chunk_ids": [],
                "index_version": row["index_version"],
                "parse_signature": row["parse_signature"] or "",
            },
        )
        entry["chunk_ids"].append(row["chunk_id"])
    return Manifest({path: ManifestEntry(**{**e, "chunk_ids": tuple(e["chunk_ids"])}) for path, e in entries.items()})
