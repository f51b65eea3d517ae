"""The route GET /v1/index; the service is built on `app.state.service.stages`."""

from __future__ import annotations

from fastapi import APIRouter, Request, Security

from serve_app.auth import Caller
from serve_app.http_common import ERROR_RESPONSES, authorize
from serve_app.index_status.protocol import IndexStatus
from serve_app.index_status.serving import IndexStatusService

router = APIRouter(tags=["Index"])


@router.get("/v1/index", response_model=IndexStatus, responses=ERROR_RESPONSES)
async def index_status(request: Request, caller: Caller = Security(authorize)) -> IndexStatus:
    """The served index version, what it holds for this key, the versions a rollback can return to
    (read-only: `python -m ingest_jobs.rollback` switches), and the last successful ingest."""
    return await IndexStatusService(request.app.state.service.stages).status(caller)
