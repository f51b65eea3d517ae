"""The registry inside the single-process app (`python -m serve_app.local`): the same registry,
called on a worker thread, whose runs are child processes of the ingest CLI (ProcessJobs), each
starting its own local Ray as `python -m ingest_jobs.index` does by hand."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from rag_core.settings import RAGSettings
from serve_app.documents.registry import ProcessJobs, UploadRegistry, start_run_loop


class InProcessRegistry:
    """Created at the first document request, so an app whose callers never use the document API
    starts no run loop."""

    def __init__(self, settings: RAGSettings):
        self.settings = settings
        self.registry: UploadRegistry | None = None
        self.stop: threading.Event | None = None
        self._create = threading.Lock()

    def _open(self) -> UploadRegistry:
        with self._create:
            if self.registry is None:
                self.registry = UploadRegistry(self.settings, ProcessJobs(self.settings.uploads_dir / "runs"))
                self.stop = start_run_loop(self.registry)
            return self.registry

    async def call(self, method: str, *args: Any) -> Any:
        return await asyncio.to_thread(lambda: getattr(self._open(), method)(*args))
