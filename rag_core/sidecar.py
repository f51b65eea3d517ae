"""A document's sidecar, `<file>.meta.json`: metadata stored on every chunk of the document, and
its `tenant` / `groups`. The ingest reads it (ingest_jobs.discovery); the document API writes it
for uploads, after the same checks, so an upload is refused at once rather than failed in a run."""

from __future__ import annotations

from typing import Any

from rag_core.access import RESERVED_PREFIX
from rag_core.index_store import RESERVED_METADATA_KEYS

SIDECAR_SUFFIX = ".meta.json"


def validate_sidecar(raw: Any) -> dict[str, Any]:
    """The sidecar's object, or ValueError saying what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError("must be a JSON object")
    for key, value in raw.items():
        if key in RESERVED_METADATA_KEYS or key.startswith(RESERVED_PREFIX):
            raise ValueError(f"key {key!r} is reserved")
        scalars = (str, int, float, bool)
        if isinstance(value, list):
            if not value or not all(isinstance(v, scalars) for v in value) or len({type(v) for v in value}) > 1:
                raise ValueError(f"key {key!r}: lists must be non-empty and of one scalar type")
        elif not isinstance(value, scalars):
            raise ValueError(f"key {key!r}: values must be strings, numbers, booleans or lists of them")
    return raw
