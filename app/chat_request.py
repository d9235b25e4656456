"""Checks a chat request against what this gateway serves, and turns it into sampling params.

Everything here answers 4xx in OpenAI's error shape (app/errors.py); nothing runs the model.
"""

from __future__ import annotations

from adapters.engine import SamplingParams
from app.errors import BadRequest, ContextLengthExceeded, NotFound
from app.schemas.openai import ChatCompletionRequest

# Seeds a request may give: signed 64-bit integers.
SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1


def choice_count(req: ChatCompletionRequest, model_name: str, max_messages: int, max_n: int) -> int:
    """The number of choices (`n`) asked for, once model, messages and `n` are checked."""
    if req.model != model_name:
        raise NotFound(
            f"model {req.model!r} does not exist; this gateway serves {model_name!r}",
            param="model",
            code="model_not_found",
        )
    if not req.messages:
        raise BadRequest("messages must contain at least one message", param="messages")
    if len(req.messages) > max_messages:
        raise BadRequest(f"at most {max_messages} messages are accepted", param="messages")
    n = 1 if req.n is None else req.n
    if not 1 <= n <= max_n:
        raise BadRequest(f"n must be between 1 and {max_n}", param="n")
    return n


def sampling_params(
    req: ChatCompletionRequest, prompt_tokens: int, context: int, max_tokens_default: int
) -> SamplingParams:
    """How to sample the answer, once the sampling fields and the context length are checked."""
    if req.temperature is not None and not 0.0 <= req.temperature <= 2.0:
        raise BadRequest("temperature must be between 0 and 2", param="temperature")
    if req.top_p is not None and not 0.0 < req.top_p <= 1.0:
        raise BadRequest("top_p must be in (0, 1]", param="top_p")
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(req, name)
        if value is not None and value < 1:
            raise BadRequest(f"{name} must be at least 1", param=name)
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not x for x in stop):
        raise BadRequest("stop takes up to 4 non-empty strings", param="stop")
    if req.logprobs:
        raise BadRequest("logprobs are not supported by this gateway", param="logprobs")
    if req.seed is not None and not SEED_MIN <= req.seed <= SEED_MAX:
        raise BadRequest(
            f"seed must be between {SEED_MIN} and {SEED_MAX} (a signed 64-bit integer)",
            param="seed",
        )
    requested = req.max_completion_tokens or req.max_tokens
    if prompt_tokens >= context:
        raise ContextLengthExceeded(
            f"the prompt is {prompt_tokens} tokens but this model's context window is "
            f"{context} tokens",
            param="messages",
        )
    if requested is not None and prompt_tokens + requested > context:
        raise ContextLengthExceeded(
            f"this model's maximum context length is {context} tokens; the messages take "
            f"{prompt_tokens} tokens and max_tokens asks for {requested} "
            f"({prompt_tokens + requested} in total)",
            param="max_tokens",
        )
    return SamplingParams(
        max_tokens=requested or min(max_tokens_default, context - prompt_tokens),
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        seed=req.seed,
        stop=tuple(stop),
    )
