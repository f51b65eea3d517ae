"""Response models of GET /v1/index."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class IndexVersion(BaseModel):
    version: str
    created_at: str
    served: bool = Field(..., description="The version the replicas answer from now.")
    embedding_model: str
    chunks_total: int | None = Field(None, description="All tenants' chunks: admin keys only.")
    files_total: int | None = Field(None, description="All tenants' documents: admin keys only.")


class IndexStatus(BaseModel):
    scope: Literal["all", "tenant"] = Field(..., description="all: an admin key, every tenant; tenant: what this key can read.")
    tenant: str | None = Field(None, description="The key's tenant, when scope is tenant.")
    index_version: str | None = Field(None, description="The served version; null before the first ingest.")
    embedding_model: str | None = None
    created_at: str | None = Field(None, description="When the served version was built.")
    chunks: int = Field(..., description="Chunks in the served version that this key can read.")
    documents: int = Field(..., description="Documents in the served version that this key can read.")
    sources: dict[str, int] = Field(..., description="Documents per named source, for this key.")
    versions: list[IndexVersion] = Field(..., description="Committed versions, oldest first: what a rollback can return to.")
    last_ingest: dict[str, Any] | None = Field(
        None,
        description="The last successful ingest: when (everyone); files by action, chunks added, failures and speed (admin keys).",
    )
