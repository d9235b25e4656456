"""OpenAI chat-completions wire format (pydantic models only)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class OpenAIBaseModel(BaseModel):
    """Tolerates fields we do not implement, as OpenAI clients send many optional ones."""

    model_config = ConfigDict(extra="allow")


class ContentPart(OpenAIBaseModel):
    """One part of a multi-part message; only text parts are supported."""

    type: str
    text: str | None = None


class ChatMessage(OpenAIBaseModel):
    """A message as clients send it."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class StreamOptions(OpenAIBaseModel):
    """`stream_options` of a streaming request."""

    include_usage: bool = False


class ChatCompletionRequest(OpenAIBaseModel):
    """POST /v1/chat/completions body."""

    model: str
    messages: list[ChatMessage]
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stop: str | list[str] | None = None
    n: int | None = None
    seed: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None


class ResponseMessage(BaseModel):
    """The assistant's reply in a choice."""

    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    """One choice of a non-streamed completion."""

    index: int
    message: ResponseMessage
    finish_reason: str
    logprobs: None = None


class Usage(BaseModel):
    """Token counts of a request."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """A non-streamed completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class ChunkDelta(BaseModel):
    """Incremental content of a streamed choice."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    """One choice inside a streamed chunk."""

    index: int
    delta: ChunkDelta
    finish_reason: str | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One SSE chunk of a streamed completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    """An entry of GET /v1/models."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lethe"


class ModelList(BaseModel):
    """GET /v1/models response."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorBody


def model_dump_sse(model: BaseModel) -> str:
    """One SSE `data:` frame for a pydantic model."""
    return f"data: {model.model_dump_json(exclude_none=False)}\n\n"


def content_text(content: str | list[ContentPart] | None) -> str:
    """Plain text of a message's content (text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text or "" for part in content if part.type == "text")
