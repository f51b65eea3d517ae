"""Cross-encoder reranking, with a documented fallback when the configured model cannot be loaded.

Fallback scorer ("retrieval-order"): the candidates keep the order and scores retrieval gave
them. It never reorders on guesswork; /health and every response name the scorer in use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rag_core.embedding import cached_snapshot
from rag_core.index_reader import RetrievedChunk

log = logging.getLogger("serve_app.reranking")

FALLBACK_SCORER = "retrieval-order"


class Reranker:
    """`threads` sets torch's thread count when a model loads (Ray gives a replica that reserves part of a
    CPU one thread). A model that is neither a folder nor in the local Hugging Face cache falls back
    without importing sentence-transformers and torch (4-12 s in a fresh replica) for nothing."""

    def __init__(self, model: str, device: str = "cpu", cross_encoder: Any = None, threads: int | None = None):
        self.model_name = model
        self.fallback_reason: str | None = None
        self._model = cross_encoder
        if self._model is None:
            if not _on_this_machine(model):
                self._fall_back(f"cannot load {model!r}: NotFound", "not a folder and not in the local Hugging Face cache")
                return
            try:
                from sentence_transformers import CrossEncoder
                from transformers.utils import logging as transformers_logging

                if threads:
                    import torch

                    torch.set_num_threads(threads)
                transformers_logging.disable_progress_bar()
                self._model = CrossEncoder(model, device=device, local_files_only=True)
            except Exception as exc:  # not a cross-encoder, incomplete files
                self._fall_back(f"cannot load {model!r}: {type(exc).__name__}", str(exc))

    def _fall_back(self, reason: str, detail: str) -> None:
        self.fallback_reason = reason  # shown by /health: the error's kind, not its text
        log.warning(
            "reranker unavailable; using the fallback scorer",
            extra={"fields": {"model": self.model_name, "fallback": FALLBACK_SCORER, "reason": detail[:300]}},
        )

    @property
    def name(self) -> str:
        return self.model_name if self._model is not None else f"fallback:{FALLBACK_SCORER}"

    @property
    def is_fallback(self) -> bool:
        return self._model is None

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "fallback": self.is_fallback, "reason": self.fallback_reason}

    def rerank(self, query: str, chunks: Sequence[RetrievedChunk], top_k: int) -> list[RetrievedChunk]:
        return self.rerank_many([(query, chunks, top_k)])[0]

    def rerank_many(self, requests: Sequence[tuple[str, Sequence[RetrievedChunk], int]]) -> list[list[RetrievedChunk]]:
        """Several queries' candidates scored in one model call (what @serve.batch hands over)."""
        if self._model is None:
            return [list(chunks)[:top_k] for _, chunks, top_k in requests]
        pairs = [(query, chunk.text) for query, chunks, _ in requests for chunk in chunks]
        scores = list(self._model.predict(pairs, show_progress_bar=False)) if pairs else []
        results, offset = [], 0
        for _, chunks, top_k in requests:
            scored = [replace(chunk, score=float(scores[offset + i])) for i, chunk in enumerate(chunks)]
            offset += len(chunks)
            results.append(sorted(scored, key=lambda c: -c.score)[:top_k])
        return results


def _on_this_machine(model: str) -> bool:
    """Whether `model` can load with local_files_only: a folder, or a Hub id in the local cache."""
    return Path(model).expanduser().exists() or cached_snapshot(model) is not None
