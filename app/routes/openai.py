"""OpenAI-compatible routes: thin HTTP glue over ChatService."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from app.deps import ServicesDep
from app.errors import NotFound
from app.replication import require_fresh_registry
from app.schemas.openai import ChatCompletion, ChatCompletionRequest, ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["openai"])
T = TypeVar("T")
CLIENT_CLOSED = 499  # nginx's "client closed request": nobody reads it, logs do


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`, cancelling it (and so freeing its rows) if the client goes away."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.25)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                return None
    finally:
        if not task.done():
            task.cancel()


@router.post(
    "/chat/completions", response_model=None, dependencies=[Depends(require_fresh_registry)]
)
async def chat_completions(
    body: ChatCompletionRequest, services: ServicesDep, request: Request
) -> ChatCompletion | StreamingResponse | Response:
    """Create a chat completion, streamed as SSE when `stream` is true."""
    chat = await services.chat.prepare(body)
    if chat.stream:
        # Starlette stops iterating a stream whose client left, which cancels its rows.
        return StreamingResponse(
            services.chat.stream(chat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    completion = await _unless_disconnected(request, services.chat.complete(chat))
    return completion if completion is not None else Response(status_code=CLIENT_CLOSED)


@router.get("/models")
async def list_models(services: ServicesDep) -> ModelList:
    """The one model this gateway serves."""
    return ModelList(
        data=[ModelCard(id=services.chat.model_name, created=int(services.started_at))]
    )


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, services: ServicesDep) -> ModelCard:
    """One model by id."""
    if model_id != services.chat.model_name:
        raise NotFound(f"model {model_id!r} does not exist", param="model", code="model_not_found")
    return ModelCard(id=model_id, created=int(services.started_at))
