"""Read access to the current index version, reopened whenever the pointer moves."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag_core.index_store import IndexStoreError, VersionedIndex, VersionInfo
from rag_core.location import Location


@dataclass(frozen=True)
class RetrievedChunk:
    chunk_id: str
    file: str
    page: int
    text: str
    score: float  # cosine similarity
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def location(self) -> Location:
        """Where in its file the chunk sits (page, slide, sheet rows, section heading)."""
        return Location.from_metadata({**self.metadata, "page": self.page})

    @property
    def citation(self) -> str:
        """'handbook.docx, section 'Benefits > Vacation'', 'q3.xlsx, sheet 'EMEA', rows 2-14'."""
        return f"{self.file}, {self.location.describe()}"


class IndexReader:
    """Opens the version the pointer names. A fresh client per version sees every committed vector,
    unlike an embedded client held open across another process's writes."""

    def __init__(self, index: VersionedIndex):
        self.index = index
        self._lock = threading.Lock()
        self._info: VersionInfo | None = None
        self._client: Any = None
        self._collection: Any = None

    @property
    def info(self) -> VersionInfo | None:
        return self._info

    def refresh(self) -> bool:
        """Open the current version if it changed; True when it did."""
        current = self.index.current_version()
        if self._info is not None and current == self._info.version:
            return False
        if current is None:
            raise IndexStoreError(f"no index at {self.index.location}: run the ingest job first")
        info = self.index.info(current)
        client, collection = self.index.backend.open(current)
        with self._lock:
            old_client = self._client
            self._info, self._client, self._collection = info, client, collection
        if old_client is not None and old_client is not client:
            self.index.backend.release(old_client)
        return True

    def _ensure_open(self) -> Any:
        if self._collection is None:
            self.refresh()
        return self._collection

    def count(self) -> int:
        return self._ensure_open().count()

    def search(
        self, query_embedding: Sequence[float] | np.ndarray, top_k: int, where: dict[str, Any] | None = None
    ) -> list[RetrievedChunk]:
        collection = self._ensure_open()
        result = collection.query(
            query_embeddings=[np.asarray(query_embedding, dtype=np.float32)],
            n_results=top_k,
            where=where or None,
            include=["documents", "metadatas", "distances"],
        )
        hits = []
        for chunk_id, text, metadata, distance in zip(
            result["ids"][0], result["documents"][0], result["metadatas"][0], result["distances"][0]
        ):
            hits.append(RetrievedChunk(chunk_id, metadata["file"], int(metadata["page"]), text, 1.0 - float(distance), metadata))
        return hits

    def chunk_ids(self, where: dict[str, Any]) -> list[str]:
        return list(self._ensure_open().get(where=where, include=[])["ids"])

    def close(self) -> None:
        if self._client is not None:
            self.index.backend.release(self._client)
        self._info = self._client = self._collection = None
