"""Hybrid retrieval over one index version: dense (ChromaDB) + lexical (BM25 via bm25s), fused by
a weighted sum of min-max normalised scores (default) or weighted reciprocal rank fusion, with
metadata filters on both and optional MMR diversification.

A snapshot holds everything for one version and is immutable; a new version is loaded into a new
snapshot beside the old one and swapped in with one assignment, so requests in flight finish on
the version they started with and none are dropped.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import bm25s
import numpy as np

from rag_core.access import combine
from rag_core.contextual import version_indexed_texts
from rag_core.index_reader import RetrievedChunk
from rag_core.index_store import IndexStoreError, VersionedIndex, VersionInfo
from rag_core.memory import release_free_memory
from serve_app.filters import FilterError, matches
from serve_app.retrieval_request import RetrievalRequest

log = logging.getLogger("serve_app.retrieval")


class IndexUnavailable(RuntimeError):
    """There is no usable index version (none ingested yet, or it cannot be opened)."""


class ModelMismatch(RuntimeError):
    """The query was embedded with another model than the served version's (a swap in progress)."""


class LexicalIndex:
    """BM25 over chunk texts (English stopwords, optional Snowball stemming)."""

    def __init__(self, texts: Sequence[str], k1: float = 1.2, b: float = 0.75, stemmer_language: str | None = "english"):
        self._stemmer = None
        if stemmer_language:
            import Stemmer

            self._stemmer = Stemmer.Stemmer(stemmer_language)
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self.size = len(texts)
        if texts:
            tokens = bm25s.tokenize(list(texts), stopwords="en", stemmer=self._stemmer, show_progress=False)
            self._bm25.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        if not self.size:
            return np.zeros(0, dtype=np.float32)
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False)[0]
        if not tokens:
            return np.zeros(self.size, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(tokens), dtype=np.float32)

    def top(self, query: str, k: int, mask: np.ndarray | None = None) -> list[tuple[int, float]]:
        scores = self.scores(query)
        if mask is not None:
            scores = np.where(mask, scores, 0.0)
        k = min(k, int(np.count_nonzero(scores > 0)))
        if k <= 0:
            return []
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        return [(int(i), float(scores[i])) for i in best]


@dataclass
class IndexSnapshot:
    info: VersionInfo
    client: Any
    collection: Any
    lexical: LexicalIndex
    chunk_ids: list[str]
    texts: list[str]
    metadatas: list[dict[str, Any]]
    positions: dict[str, int]  # chunk id -> row
    readers: int = 0  # retrievals using this snapshot's client now (HybridRetriever._readers_lock)

    @property
    def chunk_count(self) -> int:
        return len(self.chunk_ids)

    def chunk(self, position: int, score: float) -> RetrievedChunk:
        metadata = self.metadatas[position]
        return RetrievedChunk(self.chunk_ids[position], metadata["file"], int(metadata["page"]), self.texts[position], score, metadata)


def reciprocal_rank_fusion(rankings: Sequence[tuple[Sequence[str], float]], k: int = 60) -> list[tuple[str, float]]:
    """Weighted RRF: each (ranked ids, weight) adds weight / (k + rank) to an id's score."""
    fused: dict[str, float] = {}
    for ranked, weight in rankings:
        if weight <= 0:
            continue
        for rank, chunk_id in enumerate(ranked, start=1):
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def convex_fusion(scored: Sequence[tuple[Sequence[tuple[str, float]], float]]) -> list[tuple[str, float]]:
    """Weighted sum of per-query min-max normalised scores; an id missing from a list scores 0 there."""
    fused: dict[str, float] = {}
    for ranked, weight in scored:
        if weight <= 0 or not ranked:
            continue
        values = [score for _, score in ranked]
        low, high = min(values), max(values)
        span = high - low
        for chunk_id, score in ranked:
            normalised = (score - low) / span if span > 0 else 1.0
            fused[chunk_id] = fused.get(chunk_id, 0.0) + weight * normalised
    return sorted(fused.items(), key=lambda item: (-item[1], item[0]))


def maximal_marginal_relevance(query: np.ndarray, candidates: np.ndarray, k: int, lambda_: float) -> list[int]:
    """Indices of `candidates` (unit vectors) chosen by MMR: relevance minus redundancy."""
    if len(candidates) == 0:
        return []
    relevance = candidates @ query
    similarity = candidates @ candidates.T
    chosen = [int(np.argmax(relevance))]
    while len(chosen) < min(k, len(candidates)):
        redundancy = similarity[:, chosen].max(axis=1)
        score = lambda_ * relevance - (1 - lambda_) * redundancy
        score[chosen] = -np.inf
        chosen.append(int(np.argmax(score)))
    return chosen


def seconds_since(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    return max(0.0, (datetime.now(timezone.utc) - datetime.fromisoformat(timestamp)).total_seconds())


def last_ingest_summary(index: VersionedIndex) -> dict[str, Any] | None:
    """The last successful ingest run, from the audit trail: when, files by action, chunks, speed."""
    try:
        record = index.last_completed_ingest()
    except Exception as exc:  # an unreadable trail or an unreachable server: the index still serves
        log.warning("last ingest unreadable", extra={"fields": {"error": str(exc)[:200]}})
        return None
    if record is None:
        return None
    summary = record.get("summary") or {}
    # Server-mode records carry counts per action; the audit trail's carry the per-file list.
    actions = record.get("file_actions") or Counter(entry["action"] for entry in record.get("files", []))
    duration = summary.get("duration_s") or 0.0
    chunks = summary.get("chunks_added", 0)
    return {
        "finished_at": record.get("finished_at"),
        "age_s": seconds_since(record.get("finished_at")),
        "files": dict(actions),
        "chunks_added": chunks,
        "failures": actions.get("failed", 0),
        "chunks_per_second": round(chunks / duration, 3) if duration else 0.0,
    }


class HybridRetriever:
    """Serves the current index version; `maybe_reload()` swaps in a new one when the pointer moves."""

    def __init__(self, index: VersionedIndex, settings: Any):
        self.index = index
        self.settings = settings  # RetrievalSettings
        self._snapshot: IndexSnapshot | None = None
        self._retired: IndexSnapshot | None = None
        self._reload_lock = threading.Lock()
        self._readers_lock = threading.Lock()  # the swap, and taking or returning a snapshot
        self._mask_cache: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self.last_error: str | None = None

    @property
    def snapshot(self) -> IndexSnapshot | None:
        return self._snapshot

    def maybe_reload(self) -> bool:
        """Load the current version if it differs from the served one. Safe to call often."""
        try:
            current = self.index.current_version()
        except (OSError, ValueError, IndexStoreError) as exc:
            self.last_error = f"cannot read the index pointer: {exc}"
            return False
        if current is None:
            self.last_error = f"no index at {self.index.location}: run the ingest job first"
            return False
        if self._snapshot is not None and self._snapshot.info.version == current:
            return False
        with self._reload_lock:
            if self._snapshot is not None and self._snapshot.info.version == current:
                return False
            started = time.monotonic()
            try:
                snapshot = self._load(current)
            except Exception as exc:  # keep serving the old version
                self.last_error = f"cannot load index version {current}: {exc}"
                log.error("index load failed", extra={"fields": {"version": current, "error": str(exc)}})
                return False
            # The snapshot replaced now may still serve requests in flight: it is closed once the
            # last of them is done (release_retired), or at the next swap at the latest.
            with self._readers_lock:
                stale, self._retired, self._snapshot = self._retired, self._snapshot, snapshot
            self._mask_cache.clear()
            if stale is not None:
                self.index.backend.release(stale.client)
                del stale
                release_free_memory()
            self.last_error = None
            log.info(
                "index version loaded",
                extra={"fields": {"version": current, "chunks": snapshot.chunk_count, "load_s": round(time.monotonic() - started, 2)}},
            )
            return True

    def _load(self, version: str) -> IndexSnapshot:
        info = self.index.info(version)
        chunk_ids, texts, metadatas = self.index.chunk_rows(version)
        client, collection = self.index.backend.open(version)
        indexed = version_indexed_texts(texts, metadatas, contextual=bool(info.chunking.get("contextual")))
        lexical = LexicalIndex(indexed, self.settings.bm25_k1, self.settings.bm25_b, self.settings.bm25_stemmer)
        positions = {chunk_id: i for i, chunk_id in enumerate(chunk_ids)}
        return IndexSnapshot(info, client, collection, lexical, chunk_ids, texts, metadatas, positions)

    def release_retired(self) -> bool:
        """Close the replaced snapshot's store client once no retrieval uses it, so a served
        index holds one version's files open, not two, between swaps, and return its memory."""
        with self._readers_lock:
            retired = self._retired
            if retired is None or retired.readers:
                return False
            self._retired = None
        self.index.backend.release(retired.client)
        # Without the trim, the replica kept each swap's high-water mark: the 20-minute soak's
        # Retriever grew 19% with a re-ingest every 5 minutes, 39% in 12 with one every minute.
        del retired
        release_free_memory()
        return True

    @contextlib.contextmanager
    def _reading(self) -> Iterator[IndexSnapshot | None]:
        """The served snapshot, counted as in use until the block ends."""
        with self._readers_lock:
            snapshot = self._snapshot
            if snapshot is not None:
                snapshot.readers += 1
        try:
            yield snapshot
        finally:
            if snapshot is not None:
                with self._readers_lock:
                    snapshot.readers -= 1

    def sources(self, access: dict[str, Any] | None = None) -> list[str]:
        """The named sources with at least one chunk this read filter admits (sources never leak
        across tenants: one whose chunks a caller cannot read is not listed to it)."""
        snapshot = self._snapshot
        if snapshot is None:
            return []
        names = {m.get("source") or "" for m in snapshot.metadatas if access is None or matches(access, m)}
        return sorted(names - {""})

    def index_status(self, access: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the served version holds for this read filter (chunks, documents, documents per
        source), the committed versions a rollback can return to, and the last ingest."""
        snapshot = self._snapshot
        chunks = 0
        documents: Counter = Counter()
        seen: set[tuple[str, str]] = set()
        for metadata in snapshot.metadatas if snapshot is not None else []:
            if access is not None and not matches(access, metadata):
                continue
            chunks += 1
            key = (metadata.get("source") or "", metadata.get("file") or "")
            if key not in seen:
                seen.add(key)
                documents[key[0]] += 1
        current = snapshot.info.version if snapshot is not None else None
        versions = []
        try:
            for version in self.index.committed_versions():
                info = self.index.info(version)
                versions.append(
                    {
                        "version": version,
                        "created_at": info.created_at,
                        "chunks_total": info.chunks_total,
                        "files_total": info.files_total,
                        "embedding_model": info.model_spec.name,
                        "served": version == current,
                    }
                )
        except Exception as exc:  # a version dropped while listing, an unreachable server: the rest still answers
            log.warning("versions unreadable", extra={"fields": {"error": str(exc)[:200]}})
        return {
            "index_version": current,
            "embedding_model": snapshot.info.model_spec.name if snapshot is not None else None,
            "created_at": snapshot.info.created_at if snapshot is not None else None,
            "chunks": chunks,
            "documents": sum(documents.values()),
            "sources": {name or "(unnamed)": count for name, count in sorted(documents.items())},
            "versions": versions,
            "last_ingest": last_ingest_summary(self.index),
        }

    def retrieve(self, request: RetrievalRequest) -> tuple[list[RetrievedChunk], VersionInfo]:
        """The request's top chunks from the served version: dense and lexical candidates, fused,
        then optionally diversified. `request.access` (the caller's read filter) is ANDed with
        `request.where`, so a client filter can only narrow what the caller may read."""
        with self._reading() as snapshot:
            return self._retrieve(snapshot, request)

    def _retrieve(self, snapshot: IndexSnapshot | None, request: RetrievalRequest) -> tuple[list[RetrievedChunk], VersionInfo]:
        if snapshot is None or snapshot.chunk_count == 0:
            raise IndexUnavailable(self.last_error or "the index is empty")
        if request.model is not None and request.model != snapshot.info.model_spec.name:
            raise ModelMismatch(f"query embedded with {request.model}, index {snapshot.info.version} uses {snapshot.info.model_spec.name}")
        where = combine(request.access, request.where)
        mask = self._mask(snapshot, where)
        fetch_k = max(self.settings.fetch_k, request.top_k, self.settings.mmr_fetch_k if request.mmr else 0)
        with self._vector_store_errors():
            dense = self._dense(snapshot, request, where if mask is not None else None, fetch_k) if request.mode != "lexical" else []
        lexical = self._lexical(snapshot, request.query, mask, fetch_k) if request.mode != "dense" else []
        ranked = self._fuse(request, dense, lexical)
        if request.mmr and ranked and request.vector is not None:
            with self._vector_store_errors():
                ranked = self._diversify(snapshot, request, ranked)
        return [snapshot.chunk(snapshot.positions[cid], score) for cid, score in ranked[: request.top_k]], snapshot.info

    @contextlib.contextmanager
    def _vector_store_errors(self) -> Iterator[None]:
        """A Chroma server that is down or restarting fails the call at once; that is a 503 with
        Retry-After (IndexUnavailable), and the next call after it is back succeeds with the same
        client: no reload, no redeploy. The embedded store raises only errors of the request."""
        try:
            yield
        except (ValueError, TypeError, FilterError):
            raise
        except Exception as exc:
            if self.index.catalog is None:
                raise
            raise IndexUnavailable(f"the vector store did not answer ({type(exc).__name__})") from None

    def _dense(
        self, snapshot: IndexSnapshot, request: RetrievalRequest, where: dict[str, Any] | None, fetch_k: int
    ) -> list[tuple[str, float]]:
        """Nearest chunks by cosine similarity; `where` only when some chunks are outside it (a
        filter in Chroma's query is evaluated in its metadata store on every call)."""
        if request.vector is None:
            raise ValueError("dense retrieval needs a query vector")
        try:
            result = snapshot.collection.query(
                query_embeddings=[np.asarray(request.vector, dtype=np.float32)],
                n_results=min(fetch_k, snapshot.chunk_count),
                where=where or None,
                include=["distances"],
            )
        except (ValueError, TypeError) as exc:  # chromadb's InvalidArgumentError is a ValueError
            if where:
                raise FilterError(f"the vector store refused the filter: {exc}") from None
            raise
        return [(cid, 1.0 - float(d)) for cid, d in zip(result["ids"][0], result["distances"][0])]

    @staticmethod
    def _lexical(snapshot: IndexSnapshot, query: str, mask: np.ndarray | None, fetch_k: int) -> list[tuple[str, float]]:
        return [(snapshot.chunk_ids[position], score) for position, score in snapshot.lexical.top(query, fetch_k, mask)]

    def _fuse(self, request: RetrievalRequest, dense: list[tuple[str, float]], lexical: list[tuple[str, float]]) -> list[tuple[str, float]]:
        if request.mode == "dense":
            return dense
        if request.mode == "lexical":
            return lexical
        dense_weight, lexical_weight = self.settings.fusion_weights(request.query)
        if self.settings.fusion == "convex":
            return convex_fusion([(dense, dense_weight), (lexical, lexical_weight)])
        rankings = [([cid for cid, _ in dense], dense_weight), ([cid for cid, _ in lexical], lexical_weight)]
        return reciprocal_rank_fusion(rankings, self.settings.rrf_k)

    def _diversify(self, snapshot: IndexSnapshot, request: RetrievalRequest, ranked: list[tuple[str, float]]) -> list[tuple[str, float]]:
        """The fused candidates reordered by maximal marginal relevance (scores stay the fused ones)."""
        candidates = ranked[: max(self.settings.mmr_fetch_k, request.top_k)]
        ids = [cid for cid, _ in candidates]
        got = snapshot.collection.get(ids=ids, include=["embeddings"])
        vectors = dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32)))
        matrix = np.stack([vectors[c] for c in ids])
        order = maximal_marginal_relevance(np.asarray(request.vector, dtype=np.float32), matrix, request.top_k, self.settings.mmr_lambda)
        return [candidates[i] for i in order]

    def _mask(self, snapshot: IndexSnapshot, where: dict[str, Any] | None) -> np.ndarray | None:
        """Which chunks `where` admits, or None when it admits every chunk (then neither search
        needs to filter: the common case of one tenant reading its whole index)."""
        if not where:
            return None
        # Keyed by version too: a request still finishing on the old snapshot after a swap must
        # not leave its mask behind for the new one.
        key = f"{snapshot.info.version}:{json.dumps(where, sort_keys=True)}"
        if key in self._mask_cache:
            return self._mask_cache[key]
        mask = np.fromiter((matches(where, m) for m in snapshot.metadatas), dtype=bool, count=snapshot.chunk_count)
        admitted = None if mask.all() else mask
        self._mask_cache[key] = admitted
        if len(self._mask_cache) > 256:
            self._mask_cache.popitem(last=False)
        return admitted

    def follow_pointer(self, interval_s: float, after_check: Callable[[], None] | None = None) -> threading.Thread:
        """A daemon thread that loads each new version beside the old one and swaps it in."""

        def follow() -> None:
            while True:
                time.sleep(interval_s)
                self.maybe_reload()
                self.release_retired()
                if after_check is not None:
                    after_check()

        thread = threading.Thread(target=follow, name="index-reload", daemon=True)
        thread.start()
        return thread

    def status(self) -> dict[str, Any]:
        snapshot = self._snapshot
        if snapshot is None:
            return {
                "ready": False,
                "error": self.last_error or "index not loaded",
                "index_version": None,
                "chunks_indexed": 0,
                "last_ingest": None,
            }
        return {
            "last_ingest": last_ingest_summary(self.index),
            "ready": snapshot.chunk_count > 0,
            "error": None if snapshot.chunk_count else "the index is empty",
            "index_version": snapshot.info.version,
            "chunks_indexed": snapshot.chunk_count,
            "last_indexed_at": snapshot.info.created_at,
            "index_age_s": seconds_since(snapshot.info.created_at),
            "embedding_model": snapshot.info.model_spec.name,
            "embedding_spec": snapshot.info.embedding_model,
        }
