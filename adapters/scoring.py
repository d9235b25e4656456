"""Fluency of an answer: its perplexity under the bare model, given the question."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from adapters.model import LoadedModel
from adapters.prompt import render
from guards.verdict import ChatTurn


def perplexity(lm: LoadedModel, turns: Sequence[ChatTurn], answer: str) -> float:
    """exp(mean negative log-likelihood) of the answer's tokens after the rendered conversation.

    Gibberish scores in the hundreds or thousands; a fluent answer, even a wrong one, scores
    near the model's own answers. An empty answer scores 1.
    """
    prompt = render(lm.tokenizer, list(turns)).ids
    answer_ids = lm.tokenizer(answer, add_special_tokens=False)["input_ids"]
    if not answer_ids:
        return 1.0
    ids = torch.tensor([prompt + answer_ids], device=lm.device)
    with torch.inference_mode():
        logits = lm.model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1 : -1].float()
    nll = torch.nn.functional.cross_entropy(logits, ids[0, len(prompt) :], reduction="mean")
    return float(math.exp(min(float(nll), 50.0)))
