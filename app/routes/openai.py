"""OpenAI-compatible routes: thin HTTP glue over ChatService."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import StreamingResponse

from app.deps import ServicesDep
from app.errors import NotFound
from app.schemas.openai import ChatCompletion, ChatCompletionRequest, ModelCard, ModelList

router = APIRouter(prefix="/v1", tags=["openai"])


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, services: ServicesDep
) -> ChatCompletion | StreamingResponse:
    """Create a chat completion, streamed as SSE when `stream` is true."""
    chat = await services.chat.prepare(body)
    if chat.stream:
        return StreamingResponse(
            services.chat.stream(chat),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    return await services.chat.complete(chat)


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
