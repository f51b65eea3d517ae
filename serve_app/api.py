"""HTTP routes (thin), request ids, body limits and error mapping. The logic is in QueryService,
reached through `app.state.service`; the Serve ingress and the single-process app both use this."""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Query, Request, Response, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app.auth import Authenticator, AuthError, Caller
from serve_app.chat.api_router import router as chat_router
from serve_app.documents.api_router import router as documents_router
from serve_app.filters import FilterError
from serve_app.http_common import ERROR_RESPONSES, ClientError, Forbidden, NotFound, RateLimited, authorize
from serve_app.index_status.api_router import router as index_status_router
from serve_app.metrics import NullMetrics
from serve_app.rate_limit import RateLimiter
from serve_app.schemas import (
    CachePurgeResponse,
    ErrorResponse,
    HealthResponse,
    LivenessResponse,
    QueryRequest,
    QueryResponse,
    RetrieveRequest,
    RetrieveResponse,
)
from serve_app.service import StageClock
from serve_app.stages import ServiceUnavailable
from serve_app.web.api_router import router as web_router

log = logging.getLogger("serve_app.api")

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class _BodyTooLarge(Exception):
    pass


def _route_path(scope: dict) -> str:
    """The path the app routes on: without the root path an app mounted under a prefix is given."""
    path, root = scope.get("path", ""), scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root + "/") else path


class BodySizeLimit:
    """Answers 413 for bodies over the limit, by Content-Length or by counting a streamed body.
    `routes` gives (method, path) its own limit: uploads are larger than any JSON request."""

    def __init__(self, app: Any, max_bytes: int, routes: dict[tuple[str, str], int] | None = None):
        self.app = app
        self.max_bytes = max_bytes
        self.routes = routes or {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.routes.get((scope.get("method", ""), _route_path(scope)), self.max_bytes)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            await self._reject(scope, send, max_bytes)
            return
        received = 0
        started = False

        async def counting_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._reject(scope, send, max_bytes)

    async def _reject(self, scope: dict, send: Any, max_bytes: int) -> None:
        incoming = dict(scope.get("headers") or []).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        body = ErrorResponse(error=f"request body over {max_bytes} bytes", request_id=request_id).model_dump()
        app = scope.get("app")
        echo = getattr(getattr(app, "state", None), "echo_request_id", True)
        response = JSONResponse(body, status_code=413, headers={REQUEST_ID_HEADER: request_id} if echo else None)
        await response(scope, None, send)


class RequestIds:
    """Gives each request an id (a safe incoming X-Request-ID, else a new one), echoes it on the
    response when `echo`, and counts the request by its route template.

    Plain ASGI rather than `@app.middleware("http")`, whose per-request task and body streams
    cost about a millisecond: a cached answer takes only a few."""

    _HEADER = REQUEST_ID_HEADER.lower().encode()

    def __init__(self, app: Any, echo: bool = True):
        self.app = app
        self.echo = echo

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(self._HEADER, b"").decode("latin-1")
        request_id = incoming if _SAFE_REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        status = 500

        async def send_with_id(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.echo:
                    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != self._HEADER]
                    message = {**message, "headers": [*headers, (self._HEADER, request_id.encode("latin-1"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            # The route template, never the raw path: unknown paths must not create new series.
            route = scope.get("route")
            scope["app"].state.metrics.request(getattr(route, "path", "unmatched"), status)


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex


def _error(request: Request, status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    request_id = _request_id(request)
    body = ErrorResponse(error=message, detail=detail, request_id=request_id).model_dump()
    if getattr(request.app.state, "echo_request_id", True):
        headers = {REQUEST_ID_HEADER: request_id, **(headers or {})}
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


def install_security(app: FastAPI, settings: Any, rate_limiter: RateLimiter, host: str) -> None:
    """API keys and rate limits from the settings; refuses (InsecureConfiguration) to serve a
    non-loopback `host` without keys unless auth is explicitly disabled."""
    authenticator = Authenticator(settings.auth)
    authenticator.check_exposure(host)
    app.state.authenticator = authenticator
    app.state.rate_limiter = rate_limiter
    app.state.rate_limits_enabled = settings.auth.rate_limit_enabled


def install_limits(app: FastAPI, settings: Any) -> None:
    """Body size limits and CORS from the settings; call before the app serves its first request."""
    api_settings = settings.api
    if api_settings.cors_origins:
        methods = ["GET", "POST", "DELETE"]
        app.add_middleware(CORSMiddleware, allow_origins=api_settings.cors_origins, allow_methods=methods, allow_headers=["*"])
    uploads = {("POST", "/v1/documents"): int(settings.documents.max_request_mb * 2**20)}
    app.add_middleware(BodySizeLimit, max_bytes=api_settings.max_body_bytes, routes=uploads)


def create_app(echo_request_id: bool = True) -> FastAPI:
    """Routes, request ids and error mapping; the service is attached later as app.state.service.

    Behind Serve's proxy `echo_request_id` is False: the proxy already forwards X-Request-ID to
    the app (generating one when absent) and echoes it on the response."""
    app = FastAPI(
        title="RAG service",
        version="0.1.0",
        description="Answers questions from the current document index with cited sources.",
    )
    app.state.echo_request_id = echo_request_id
    app.state.metrics = NullMetrics()  # the Serve ingress sets RayQueryMetrics
    app.state.documents = None  # the Serve ingress sets a DocumentService; without one the routes answer 501

    app.add_middleware(RequestIds, echo=echo_request_id)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # Only location, message and type: never echo internals (or the whole input) back.
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")} for e in exc.errors()]
        return _error(request, 422, "invalid request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI could not decode the body (not UTF-8, not JSON)
            return _error(request, 422, "invalid request", [{"loc": ["body"], "msg": str(exc.detail), "type": "body_decode_error"}])
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(FilterError)
    async def refused_filter(request: Request, exc: FilterError) -> JSONResponse:
        return _error(request, 422, "invalid request", [{"loc": ["body", "filters"], "msg": str(exc), "type": "value_error"}])

    @app.exception_handler(AuthError)
    async def unauthorized(request: Request, exc: AuthError) -> JSONResponse:
        return _error(request, 401, str(exc), headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> JSONResponse:
        return _error(request, 403, str(exc))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> JSONResponse:
        return _error(request, 404, str(exc))

    @app.exception_handler(ClientError)
    async def refused(request: Request, exc: ClientError) -> JSONResponse:
        return _error(request, exc.status, str(exc))

    @app.exception_handler(RateLimited)
    async def rate_limited(request: Request, exc: RateLimited) -> JSONResponse:
        return _error(request, 429, "rate limit exceeded for this API key", headers={"Retry-After": exc.decision.retry_after_header})

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        if exc.load_shed:
            request.app.state.metrics.load_shed("queue_full")
        return _error(request, 503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", extra={"fields": {"request_id": _request_id(request)}})
        return _error(request, 500, "internal error")

    @app.post("/v1/query", response_model=QueryResponse, responses={**ERROR_RESPONSES, 200: {"content": {"text/event-stream": {}}}})
    async def query(body: QueryRequest, request: Request, response: Response, caller: Caller = Security(authorize)) -> Any:
        """Answer a question from the index, citing sources. `stream: true` returns server-sent events."""
        service = request.app.state.service
        if body.stream:
            events = service.query_events(body, request.state.request_id, caller.access)
            first = await anext(events)  # retrieval errors become proper HTTP errors, not a broken stream

            async def relay() -> Any:
                yield first
                async for event in events:
                    yield event

            return StreamingResponse(relay(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        clock = StageClock()
        answer = await service.query(body, request.state.request_id, caller.access, clock)
        response.headers["Server-Timing"] = clock.server_timing()
        return answer

    @app.post("/v1/retrieve", response_model=RetrieveResponse, responses=ERROR_RESPONSES)
    async def retrieve(
        body: RetrieveRequest, request: Request, response: Response, caller: Caller = Security(authorize)
    ) -> RetrieveResponse:
        """Search without generation, best first."""
        clock = StageClock()
        found = await request.app.state.service.retrieve(body, caller.access, clock)
        response.headers["Server-Timing"] = clock.server_timing()
        return found

    @app.post("/admin/cache/purge", response_model=CachePurgeResponse, responses={**ERROR_RESPONSES, 403: {"model": ErrorResponse}})
    async def purge_cache(
        request: Request,
        version: str | None = Query(None, pattern=r"^v[0-9]{6}$", description="Only this index version's answers."),
        caller: Caller = Security(authorize),
    ) -> CachePurgeResponse:
        """Delete cached answers (all, or one index version's). Needs an admin key."""
        if not caller.admin:
            raise Forbidden("this API key may not administer the cache")
        removed = await request.app.state.service.purge_cache(version)
        return CachePurgeResponse(purged_keys=removed, version=version)

    app.include_router(chat_router)
    app.include_router(documents_router)
    app.include_router(index_status_router)
    app.include_router(web_router)

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health(request: Request) -> Any:
        """Readiness: every stage asked for its status; 503 when the service cannot answer."""
        report = await request.app.state.service.health()
        return JSONResponse(report.model_dump(), status_code=503 if report.status == "unhealthy" else 200)

    @app.get("/health/live", response_model=LivenessResponse)
    async def live() -> LivenessResponse:
        """Liveness: this process answers, from the Ingress alone. A busy or degraded service is
        alive, so an orchestrator probing this never restarts it for being loaded."""
        return LivenessResponse(status="alive")

    return app
