"""Routes of the OpenAI-compatible API: POST /v1/chat/completions and GET /v1/models. The chat
service is `app.state.chat`; auth, rate limits and error bodies are the other routes' own."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, Security
from fastapi.responses import StreamingResponse

from serve_app.auth import Caller
from serve_app.chat.protocol import ChatCompletion, ChatCompletionRequest, ModelList
from serve_app.http_common import ERROR_RESPONSES, authorize
from serve_app.schemas import ErrorResponse
from serve_app.service import StageClock

router = APIRouter(tags=["OpenAI-compatible"])


@router.post(
    "/v1/chat/completions",
    response_model=ChatCompletion,
    responses={
        **ERROR_RESPONSES,
        404: {"model": ErrorResponse, "description": "Unknown model"},
        200: {"content": {"text/event-stream": {}}},
    },
)
async def chat_completions(body: ChatCompletionRequest, request: Request, response: Response, caller: Caller = Security(authorize)) -> Any:
    """Answer the conversation's last question from the index, with [n] citations; follow-ups are
    made standalone from the history first. OpenAI's schema; `sources` and `rag` are extra fields."""
    chat = request.app.state.chat
    if body.stream:
        chunks = await chat.stream(body, request.state.request_id, caller.access)
        return StreamingResponse(chunks, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    clock = StageClock()
    completion = await chat.complete(body, request.state.request_id, caller.access, clock)
    response.headers["Server-Timing"] = clock.server_timing()
    return completion


@router.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
async def list_models(request: Request, caller: Caller = Security(authorize)) -> ModelList:
    """What can answer, as OpenAI lists models: the index (`rag`), and `rag/<source>` for each named
    source whose documents this key can read."""
    return await request.app.state.chat.models(caller.access)
