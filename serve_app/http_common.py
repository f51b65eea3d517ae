"""What every route module shares: the API-key dependency (with rate limits), the errors routes
raise, and the documented error responses. Route modules (serve_app.api, serve_app.chat) import
from here, so none imports another."""

from __future__ import annotations

from typing import Any

from fastapi import Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from serve_app.auth import Caller
from serve_app.rate_limit import Decision
from serve_app.schemas import ErrorResponse

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    413: {"model": ErrorResponse, "description": "Body over the size limit"},
    422: {"model": ErrorResponse, "description": "Invalid request"},
    429: {"model": ErrorResponse, "description": "Rate limit of this key exceeded (see Retry-After)"},
    503: {"model": ErrorResponse, "description": "No index yet, or overloaded (see Retry-After)"},
}
_BEARER = HTTPBearer(auto_error=False, description="An API key: `Authorization: Bearer <key>`.")
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key, as an alternative to the bearer header.")


class RateLimited(Exception):
    def __init__(self, decision: Decision):
        self.decision = decision


class Forbidden(Exception):
    """The key is valid but may not do this: 403."""


async def authorize(
    request: Request, bearer: HTTPAuthorizationCredentials | None = Security(_BEARER), api_key: str | None = Security(_API_KEY)
) -> Caller:
    """The caller behind the request's API key, within its rate limit (else 401 / 429)."""
    state = request.app.state
    caller = state.authenticator.authenticate(f"Bearer {bearer.credentials}" if bearer else None, api_key)
    if state.rate_limits_enabled:
        client = request.client.host if request.client else "unknown"
        bucket = f"anonymous:{client}" if caller.anonymous else f"key:{caller.name}"
        decision = await state.rate_limiter.check(bucket, caller.rate_per_minute, caller.burst)
        if not decision.allowed:
            raise RateLimited(decision)
    return caller


class NotFound(Exception):
    """A named thing (a model, a document, a job) that does not exist for this caller: 404."""


class ClientError(Exception):
    """A request refused with its own status and message (413, 415, 422, 501, ...)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
