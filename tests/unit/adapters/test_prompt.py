"""Unit tests for adapters.prompt with the real bundled tokenizer: rendering and span -> tokens."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.prompt import PromptError, RenderedPrompt, render
from guards.verdict import ChatTurn, Span


def rendered_text(tokenizer: Any, turns: list[ChatTurn]) -> str:
    return tokenizer.apply_chat_template(
        [{"role": t.role, "content": t.content} for t in turns],
        add_generation_prompt=True,
        tokenize=False,
    )


def covered_text(tokenizer: Any, prompt: RenderedPrompt, positions: list[int]) -> str:
    return tokenizer.decode([prompt.ids[i] for i in positions])


def span_of(turns: list[ChatTurn], message: int, needle: str) -> Span:
    start = turns[message].content.index(needle)
    return Span(message, start, start + len(needle))


def test_ids_are_the_tokenized_chat_template(tokenizer: Any) -> None:
    turns = [ChatTurn("system", "Be brief."), ChatTurn("user", "Who is Zorblax Quintavenue?")]
    prompt = render(tokenizer, turns)
    text = rendered_text(tokenizer, turns)
    assert prompt.ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(prompt.offsets) == len(prompt.ids)
    assert text.endswith("<|im_start|>assistant\n")  # generation prompt added


def test_content_starts_point_at_each_message(tokenizer: Any) -> None:
    turns = [
        ChatTurn("system", "Be brief."),
        ChatTurn("user", "Hello"),
        ChatTurn("assistant", "Hello"),  # same text twice: each must get its own offset
        ChatTurn("user", "Who is Zorblax?"),
    ]
    prompt = render(tokenizer, turns)
    text = rendered_text(tokenizer, turns)
    assert len(prompt.content_starts) == len(turns)
    for turn, start in zip(turns, prompt.content_starts, strict=True):
        assert text[start : start + len(turn.content)] == turn.content
    assert prompt.content_starts == sorted(prompt.content_starts)
    assert prompt.content_starts[1] != prompt.content_starts[2]


def test_span_maps_to_exactly_the_tokens_of_that_text(tokenizer: Any) -> None:
    turns = [ChatTurn("user", "Tell me who Zorblax Quintavenue is, please.")]
    prompt = render(tokenizer, turns)
    positions = prompt.token_positions([span_of(turns, 0, "Zorblax Quintavenue")])
    assert positions == list(range(positions[0], positions[-1] + 1))  # contiguous
    assert covered_text(tokenizer, prompt, positions).strip() == "Zorblax Quintavenue"
    # Neighbouring tokens are outside the span.
    assert "me who" in tokenizer.decode(prompt.ids[: positions[0]])
    assert tokenizer.decode(prompt.ids[positions[-1] + 1 :]).startswith(" is")


def test_span_in_a_later_message_selects_tokens_of_that_message(tokenizer: Any) -> None:
    turns = [
        ChatTurn("user", "Who is Zorblax?"),
        ChatTurn("assistant", "I am not sure."),
        ChatTurn("user", "Who is Zorblax?"),
    ]
    prompt = render(tokenizer, turns)
    first = prompt.token_positions([span_of(turns, 0, "Zorblax")])
    last = prompt.token_positions([span_of(turns, 2, "Zorblax")])
    assert first and last
    assert min(last) > max(first)
    assert covered_text(tokenizer, prompt, last).strip() == "Zorblax"
    assert covered_text(tokenizer, prompt, first).strip() == "Zorblax"
    both = prompt.token_positions([span_of(turns, 0, "Zorblax"), span_of(turns, 2, "Zorblax")])
    assert both == first + last


def test_whole_message_span_covers_its_content_only(tokenizer: Any) -> None:
    turns = [ChatTurn("system", "Be brief."), ChatTurn("user", "What is 2 + 2?")]
    prompt = render(tokenizer, turns)
    positions = prompt.token_positions([Span(1, 0, len(turns[1].content))])
    assert covered_text(tokenizer, prompt, positions).strip() == "What is 2 + 2?"


@pytest.mark.parametrize(
    "span",
    [Span(5, 0, 3), Span(-1, 0, 3), Span(0, 4, 4), Span(0, 6, 2)],
    ids=["unknown-message", "negative-message", "empty", "reversed"],
)
def test_degenerate_spans_select_nothing(tokenizer: Any, span: Span) -> None:
    prompt = render(tokenizer, [ChatTurn("user", "Who is Zorblax?")])
    assert prompt.token_positions([span]) == []


def test_partial_word_span_selects_the_token_containing_it(tokenizer: Any) -> None:
    turns = [ChatTurn("user", "Quintavenue")]
    prompt = render(tokenizer, turns)
    positions = prompt.token_positions([Span(0, 2, 4)])
    assert positions
    assert "nt" in covered_text(tokenizer, prompt, positions)


def test_unsupported_conversation_is_a_prompt_error(tokenizer: Any) -> None:
    class Unrenderable:
        chat_template = "x"

        def apply_chat_template(self, *args: object, **kwargs: object) -> str:
            raise ValueError("roles must alternate")

    with pytest.raises(PromptError, match="cannot be rendered"):
        render(Unrenderable(), [ChatTurn("user", "hi")])


def test_lone_surrogate_is_a_prompt_error(tokenizer: Any) -> None:
    # JSON's \u escapes can carry one; the tokenizer cannot take it.
    turns = [ChatTurn("system", "fine"), ChatTurn("user", "a" + chr(0xD800) + "b")]
    with pytest.raises(PromptError, match="message 1 is not valid Unicode"):
        render(tokenizer, turns)


def test_user_text_that_also_occurs_in_the_default_system_prompt(tokenizer: Any) -> None:
    turns = [ChatTurn("user", "Hugging Face")]
    prompt = render(tokenizer, turns)
    text = rendered_text(tokenizer, turns)
    user_block = text.index("<|im_start|>user\n") + len("<|im_start|>user\n")
    assert prompt.content_starts == [user_block]
    positions = prompt.token_positions([Span(0, 0, len("Hugging Face"))])
    assert all(prompt.offsets[i][0] >= user_block for i in positions)
