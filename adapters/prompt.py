"""Renders a conversation with the model's chat template and maps message characters to tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from guards.verdict import ChatTurn, Span


class PromptError(ValueError):
    """The conversation cannot be rendered for this model."""


@dataclass(frozen=True)
class RenderedPrompt:
    """Token ids of a rendered conversation plus where each message's content landed."""

    ids: list[int]
    offsets: list[tuple[int, int]]  # per token: char range in the rendered text
    content_starts: list[int]  # per message: char offset of its content in the rendered text

    def token_positions(self, spans: Sequence[Span]) -> list[int]:
        """Token indices that overlap any of the given message-relative spans."""
        ranges = []
        for s in spans:
            if 0 <= s.message < len(self.content_starts) and s.end > s.start:
                base = self.content_starts[s.message]
                ranges.append((base + s.start, base + s.end))
        out = []
        for i, (a, b) in enumerate(self.offsets):
            if b > a and any(a < re and b > rs for rs, re in ranges):
                out.append(i)
        return out


def _is_unicode(text: str) -> bool:
    """Whether `text` is encodable as UTF-8 (holds no lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def render(tokenizer: Any, turns: Sequence[ChatTurn]) -> RenderedPrompt:
    """Apply the chat template (with the generation prompt) and tokenize with offsets.

    Raises:
        PromptError: the template refuses the conversation, or a message is not valid Unicode
            text (a lone surrogate, which JSON's \\u escapes can carry but no tokenizer takes).
    """
    for i, turn in enumerate(turns):
        if not _is_unicode(turn.content):
            raise PromptError(f"message {i} is not valid Unicode text: it holds a lone surrogate")
    messages = [{"role": t.role, "content": t.content} for t in turns]
    try:
        text: str = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
    except Exception as exc:  # templates raise bare exceptions for unsupported role orders
        raise PromptError(f"the conversation cannot be rendered: {exc}") from exc
    # Locate contents from the end backwards: templates may prepend a default system prompt
    # that happens to contain a user's words, but never append one after the last message.
    starts = [0] * len(turns)
    upper = len(text)
    for i in range(len(turns) - 1, -1, -1):
        content = turns[i].content
        pos = text.rfind(content, 0, upper) if content else -1
        if pos < 0 and content.strip():  # template rewrote the content (e.g. stripped it)
            pos = text.rfind(content.strip(), 0, upper)
        starts[i] = max(pos, 0)
        if pos >= 0:
            upper = pos
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return RenderedPrompt(
        ids=list(enc["input_ids"]),
        offsets=[(int(a), int(b)) for a, b in enc["offset_mapping"]],
        content_starts=starts,
    )
