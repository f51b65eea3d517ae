"""Cross-encoder reranking, with a documented fallback when the configured model cannot be loaded.

Fallback scorer ("retrieval-order"): the candidates keep the order and scores retrieval gave
them. It never reorders on guesswork; /health and every response name the scorer in use.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from rag_core.index_reader import RetrievedChunk

log = logging.getLogger("serve_app.reranking")

FALLBACK_SCORER = "retrieval-order"


class Reranker:
    def __init__(self, model: str, device: str = "cpu", cross_encoder: Any = None):
        self.model_name = model
        self.fallback_reason: str | None = None
        self._model = cross_encoder
        if self._model is None:
            try:
                from sentence_transformers import CrossEncoder
                from transformers.utils import logging as transformers_logging

                transformers_logging.disable_progress_bar()
                self._model = CrossEncoder(model, device=device, local_files_only=True)
            except Exception as exc:  # offline without cached weights, or not a cross-encoder
                self.fallback_reason = f"cannot load {model!r}: {type(exc).__name__}"
                log.warning(
                    "reranker unavailable; using the fallback scorer",
                    extra={"fields": {"model": model, "fallback": FALLBACK_SCORER, "reason": str(exc)[:300]}},
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
