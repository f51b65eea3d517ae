"""Routes of the document API: POST/GET/DELETE /v1/documents and GET /v1/ingest/jobs/{id}. The
service is `app.state.documents`; None (501) when `documents.enabled` is false."""

from __future__ import annotations

from fastapi import APIRouter, Path, Query, Request, Security

from serve_app.auth import Caller
from serve_app.documents.protocol import DeletionAccepted, Document, DocumentList, IngestJob, UploadAccepted
from serve_app.documents.serving import DocumentService
from serve_app.http_common import ERROR_RESPONSES, ClientError, authorize
from serve_app.schemas import ErrorResponse

router = APIRouter(tags=["Documents"])

_ID = r"^[A-Za-z0-9_\-]{1,64}$"
_RESPONSES = {
    **ERROR_RESPONSES,
    403: {"model": ErrorResponse, "description": "This key may not do that"},
    404: {"model": ErrorResponse, "description": "No such document or job for this key"},
    501: {"model": ErrorResponse, "description": "The document API is turned off (documents.enabled: false)"},
}


def _documents(request: Request) -> DocumentService:
    service = request.app.state.documents
    if service is None:
        raise ClientError(501, "the document API is turned off (documents.enabled: false); index folders with python -m ingest_jobs.index")
    return service


# Declared rather than read by FastAPI: the body is parsed in the route, after the key was checked.
_UPLOAD_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["files"],
                "properties": {
                    "files": {"type": "array", "items": {"type": "string", "format": "binary"}, "description": "One or more documents."},
                    "metadata": {"type": "string", "description": "A JSON object stored on every chunk of these documents."},
                    "tenant": {"type": "string", "description": "Admin keys only: the tenant the documents belong to."},
                    "groups": {"type": "string", "description": "Comma-separated groups that may read them (default: the key's own)."},
                },
            }
        }
    },
}


@router.post(
    "/v1/documents",
    status_code=202,
    response_model=UploadAccepted,
    responses={
        **_RESPONSES,
        409: {"model": ErrorResponse, "description": "The name is taken by a document this key cannot read"},
        415: {"model": ErrorResponse, "description": "Unsupported file type"},
    },
    openapi_extra={"requestBody": _UPLOAD_BODY},
)
async def upload_documents(request: Request, caller: Caller = Security(authorize)) -> UploadAccepted:
    """Stage documents for indexing and return at once; an ingest job indexes them (uploads close
    together share one). Follow it at GET /v1/ingest/jobs/{job_id}."""
    return await _documents(request).upload(request, caller)


@router.get("/v1/documents", response_model=DocumentList, responses=_RESPONSES)
async def list_documents(
    request: Request,
    include_deleted: bool = Query(False, description="Also list deleted documents."),
    caller: Caller = Security(authorize),
) -> DocumentList:
    """Uploaded documents this key can read, with status, chunks and the index version holding them."""
    return await _documents(request).documents(caller, include_deleted)


@router.get("/v1/documents/{document_id}", response_model=Document, responses=_RESPONSES)
async def get_document(request: Request, document_id: str = Path(..., pattern=_ID), caller: Caller = Security(authorize)) -> Document:
    return await _documents(request).document(caller, document_id)


@router.delete("/v1/documents/{document_id}", status_code=202, response_model=DeletionAccepted, responses=_RESPONSES)
async def delete_document(
    request: Request, document_id: str = Path(..., pattern=_ID), caller: Caller = Security(authorize)
) -> DeletionAccepted:
    """Remove a document from the index with the next ingest job (at once if it never got there);
    `effective` says when it stops being retrievable."""
    return await _documents(request).delete(caller, document_id)


@router.get("/v1/ingest/jobs/{job_id}", response_model=IngestJob, responses=_RESPONSES)
async def get_ingest_job(request: Request, job_id: str = Path(..., pattern=_ID), caller: Caller = Security(authorize)) -> IngestJob:
    """An upload's or delete's job id, or the Ray job's own id: state, documents and the job's summary."""
    return await _documents(request).job(caller, job_id)
