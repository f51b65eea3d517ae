"""Builds small real index versions (real model vectors, embedded Chroma) for unit tests."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from rag_core.access import Access
from rag_core.contextual import indexed_text
from rag_core.embedding import EmbeddingModel
from rag_core.index_store import VersionedIndex, VersionInfo, chunk_schema, manifest_from_rows


def build_version(
    index: VersionedIndex,
    model: EmbeddingModel,
    corpus: list[tuple],
    make_current: bool = True,
    vectors: np.ndarray | None = None,
    contextual: bool = False,
) -> VersionInfo:
    """Commit `corpus` ((file, page, text, metadata) tuples) as a new version of `index`. A chunk's
    `tenant` and `groups` metadata become its access fields, as the ingest job writes them
    (default: tenant "default", no groups), `source` its named source (default: none), and
    `doc_title` its document's title, which a `contextual` version's BM25 reads with it.
    `vectors`, when given, are stored instead of the model's (for tests where only volume counts)."""
    builder = index.begin(model.spec, {"chunk_size": 512, "chunk_overlap": 64, "contextual": contextual}, index.current_version())
    if vectors is None:
        texts = [indexed_text(text, title=metadata.get("doc_title")) if contextual else text for _, _, text, metadata in corpus]
        vectors = model.embed_documents(texts) if corpus else []
    rows, counts = [], {}
    for (file, page, text, metadata), vector in zip(corpus, vectors):
        n = counts[file] = counts.get(file, -1) + 1
        rows.append(
            {
                "chunk_id": f"{file}#{n}",
                "file": file,
                "page": page,
                "chunk_index": n,
                "char_start": 0,
                "char_end": len(text),
                "text": text,
                "file_sha256": f"sha-{file}",
                "sidecar_sha256": "",
                "file_size": 1000,
                "ingested_at": "2024-06-01T12:00:00+00:00",
                "index_version": builder.version,
                "metadata": json.dumps(with_access({k: v for k, v in metadata.items() if k not in ("source", "doc_title")})),
                "title": metadata.get("doc_title", ""),
                "source": metadata.get("source", ""),
                "embedding": vector.tolist(),
            }
        )
    table = pa.Table.from_pylist(rows, schema=chunk_schema(model.spec.dimension))
    builder.add(table)
    info = builder.commit(manifest_from_rows(table))
    if make_current:
        index.set_current(info.version)
    return info


def with_access(metadata: dict) -> dict:
    rest = {k: v for k, v in metadata.items() if k not in ("tenant", "groups")}
    return {**rest, **Access.of(metadata.get("tenant", "default"), metadata.get("groups", [])).chunk_metadata()}
