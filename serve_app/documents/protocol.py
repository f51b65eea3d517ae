"""Request and response models of the document API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DocumentStatus = Literal["pending", "indexed", "failed", "deleting", "deleted"]
JobStatus = Literal["queued", "pending", "running", "succeeded", "failed"]


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., description="Stable per tenant and file name: a same-name upload replaces the document.")
    name: str
    file: str = Field(..., description="As answers cite it: `<tenant>/<name>` within the source.")
    source: str = Field(..., description="The named source of uploads in the index.")
    tenant: str
    groups: list[str]
    metadata: dict[str, Any]
    sha256: str
    size: int
    status: DocumentStatus = Field(
        ...,
        description="pending: waiting for or in an ingest run; indexed: answers can cite it; failed: see reason; "
        "deleting: leaves the index with the next run; deleted: gone from the index (and, by default, from kept versions).",
    )
    reason: str | None = None
    chunks: int | None = Field(None, description="Its chunks in the current index version.")
    index_version: str | None = Field(None, description="The current index version, when it holds this upload.")
    deleted_in_version: str | None = Field(None, description="The first index version without it, once deleted.")
    job_id: str = Field(..., description="The upload or delete request last applied to it: GET /v1/ingest/jobs/{job_id}.")
    uploaded_at: datetime
    updated_at: datetime


class UploadAccepted(BaseModel):
    job_id: str = Field(..., description="Follow it at GET /v1/ingest/jobs/{job_id}.")
    documents: list[Document]
    duplicates: list[str] = Field(..., description="Documents whose identical bytes and metadata were already there: nothing to do.")


class DocumentList(BaseModel):
    documents: list[Document]


class DeletionAccepted(BaseModel):
    document: Document
    job_id: str | None = Field(..., description="The run that removes it from the index; null when it never reached the index.")
    effective: str = Field(..., description="When it stops being retrievable.")
    kept_versions_purged: bool = Field(
        ..., description="Whether the run also drops kept index versions holding it (documents.purge_deleted), so no rollback restores it."
    )


class IngestJob(BaseModel):
    id: str
    kind: Literal["upload", "delete", "run"]
    status: JobStatus = Field(..., description="queued: waiting for the running job or the batch window; then the Ray job's state.")
    run_id: str | None = Field(None, description="The Ray job (submission id) that runs it; uploads batched together share one.")
    error: str | None = None
    submitted_at: datetime | None = None
    finished_at: datetime | None = None
    summary: dict[str, Any] | None = Field(None, description="The ingest job's JSON summary, once it ended.")
    documents: list[Document]
