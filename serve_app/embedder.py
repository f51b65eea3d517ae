"""Query embedding with exactly the model pinned in the served index version."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from rag_core.embedding import EmbeddingModel, EmbeddingModelError, load_for_spec, same_vector_space
from rag_core.index_store import VersionedIndex

log = logging.getLogger("serve_app.embedder")


class QueryEmbedder:
    """Loads the current version's model; reloads when a new version uses another model.

    `backend` (settings.embedding_backend) is used where it gives the index's vectors; None, or an
    index built with int8, embeds queries with the index's recorded backend."""

    def __init__(
        self,
        index: VersionedIndex,
        device: str = "auto",
        torch_threads: int | None = None,
        check_interval_s: float = 2.0,
        backend: str | None = None,
    ):
        self.index = index
        self.device = device
        self.torch_threads = torch_threads
        self.backend = backend
        self.check_interval_s = check_interval_s
        self._model: EmbeddingModel | None = None
        self._checked_at = 0.0
        self._lock = threading.Lock()
        self.error: str | None = None

    def ensure_model(self, force: bool = False) -> EmbeddingModel | None:
        now = time.monotonic()
        if not force and self._model is not None and now - self._checked_at < self.check_interval_s:
            return self._model
        with self._lock:
            self._checked_at = now
            try:
                info = self.index.current_info()
            except Exception as exc:
                self.error = f"cannot read the index: {exc}"
                return self._model
            if info is None:
                self.error = f"no index at {self.index.location}: run the ingest job first"
                return self._model
            spec = info.model_spec
            if self._model is None or not same_vector_space(self._model.spec, spec):
                try:
                    self._model = load_for_spec(spec, self.device, self.torch_threads, self.backend)
                    log.info(
                        "embedding model loaded",
                        extra={"fields": {"model": spec.name, "index_version": info.version, "loader": self._model.loader}},
                    )
                except EmbeddingModelError as exc:
                    self.error = str(exc)
                    log.error("embedding model not loadable", extra={"fields": {"model": spec.name, "error": str(exc)}})
                    return self._model
            self.error = None
            return self._model

    def embed(self, texts: Sequence[str]) -> tuple[np.ndarray, str]:
        model = self.ensure_model()
        if model is None:
            from serve_app.retrieval import IndexUnavailable

            raise IndexUnavailable(self.error or "no embedding model loaded")
        return model.embed_queries(list(texts)), model.spec.name

    def status(self) -> dict[str, Any]:
        model = self.ensure_model()
        return {"model": model.spec.name if model else None, "error": None if model else self.error}
