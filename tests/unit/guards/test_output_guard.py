"""Unit tests for guards.output_guard: redaction of never-emit strings, whole and streamed."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import pytest

from guards.output_guard import Redactor, withheld_names
from guards.targets import Target, TargetSpec
from guards.verdict import ChatTurn

PH = "[redacted]"
EMAIL = "zorblax@example.org"
PHONE = "212-555-0187"


def stream(redactor: Redactor, chunks: Iterable[str]) -> tuple[str, list[str]]:
    """Feed chunks one by one; return the whole output and what each call released."""
    released = [redactor.feed(c) for c in chunks]
    released.append(redactor.flush())
    return "".join(released), released


def chunked(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


# --- whole texts -------------------------------------------------------------------------


def test_exact_occurrences_are_replaced() -> None:
    r = Redactor([EMAIL], PH)
    assert r.redact(f"Mail {EMAIL} or {EMAIL}.") == f"Mail {PH} or {PH}."


def test_matching_is_case_insensitive() -> None:
    r = Redactor([EMAIL], PH)
    assert r.redact("Mail ZORBLAX@Example.ORG now") == f"Mail {PH} now"


@pytest.mark.parametrize(
    "variant",
    [
        "212-555-0187",
        "212 555 0187",
        "(212) 555-0187",
        "212.555.0187",
        "2125550187",
        "212_555_0187",
    ],
)
def test_separator_variants_of_a_phone_number_are_caught(variant: str) -> None:
    out = Redactor([PHONE], PH).redact(f"call {variant} today")
    assert PH in out
    assert "212" not in out and "555" not in out and "0187" not in out
    assert out.startswith("call ") and out.endswith(" today")


def test_other_numbers_are_left_alone() -> None:
    text = "call 212-555-0188 or 313 555 0187"
    assert Redactor([PHONE], PH).redact(text) == text


def test_several_secrets_are_all_replaced() -> None:
    r = Redactor([EMAIL, PHONE], PH)
    assert r.redact(f"{PHONE} / {EMAIL}") == f"{PH} / {PH}"


def test_regex_metacharacters_in_a_secret_are_literal() -> None:
    r = Redactor(["a+b.c"], PH)
    assert r.redact("x a+b.c y") == f"x {PH} y"
    # '.' must not act as "any character": a letter between b and c is no separator.
    assert r.redact("x a+bQc y") == "x a+bQc y"


def test_no_secrets_is_passthrough_whole_and_streamed() -> None:
    r = Redactor([], PH)
    assert not r.active
    text = "Nothing to hide here: 212-555-0187."
    assert r.redact(text) == text
    # Streaming without secrets releases every delta at once, unchanged.
    assert [r.feed(c) for c in chunked(text, 3)] == chunked(text, 3)
    assert r.flush() == ""


def test_secret_without_word_characters_is_ignored() -> None:
    r = Redactor(["--", "!!"], PH)
    assert not r.active
    assert r.redact("a -- b !! c") == "a -- b !! c"


# --- streaming ---------------------------------------------------------------------------

TEXT = f"Reach me at {EMAIL} or at (212) 555-0187, thanks. Again: {EMAIL.upper()}!"
EXPECTED = f"Reach me at {PH} or at ({PH}, thanks. Again: {PH}!"


def test_whole_text_expectation() -> None:
    assert Redactor([EMAIL, PHONE], PH).redact(TEXT) == EXPECTED


@pytest.mark.parametrize("size", range(1, len(TEXT) + 1))
def test_streamed_in_chunks_of_every_size_equals_whole_redaction(size: int) -> None:
    out, _ = stream(Redactor([EMAIL, PHONE], PH), chunked(TEXT, size))
    assert out == EXPECTED


def test_secret_split_at_every_pair_of_points_is_caught() -> None:
    text = f"prefix {EMAIL} suffix"
    start = text.index(EMAIL)
    points = range(start, start + len(EMAIL) + 1)
    for i, j in itertools.combinations(points, 2):
        chunks = [text[:i], text[i:j], text[j:]]
        out, released = stream(Redactor([EMAIL], PH), chunks)
        assert out == f"prefix {PH} suffix", (i, j)
        for piece in released:
            assert "zorb" not in piece.casefold() and "example" not in piece.casefold(), (i, j)


def test_no_released_prefix_ever_ends_in_a_partial_secret() -> None:
    """At any moment, what went out must not end with the start of a secret."""
    text = f"xx {PHONE} yy {EMAIL} zz"
    r = Redactor([PHONE, EMAIL], PH)
    sent = ""
    for ch in text:
        sent += r.feed(ch)
        for secret in (PHONE, EMAIL):
            for k in range(3, len(secret)):
                assert not sent.casefold().endswith(secret[:k].casefold()), (sent, secret[:k])
    sent += r.flush()
    assert sent == f"xx {PH} yy {PH} zz"


def test_placeholder_is_never_cut_by_the_holdback() -> None:
    r = Redactor(["ab"], PH)
    released = [r.feed(c) for c in "ab" + "." * 40]
    released.append(r.flush())
    assert "".join(released) == PH + "." * 40
    # The placeholder goes out whole in one release, never as fragments.
    assert sum(PH in piece for piece in released) == 1


def test_holdback_is_bounded_so_long_clean_text_streams_out() -> None:
    r = Redactor([EMAIL], PH)
    text = "lorem ipsum " * 100
    released = "".join(r.feed(c) for c in text)
    # Only a tail bounded by the secret's length (separators included) is held back.
    assert len(text) - len(released) <= 3 * len(EMAIL)
    assert released + r.flush() == text


def test_flush_resets_the_buffer() -> None:
    r = Redactor([EMAIL], PH)
    assert r.feed("zorblax@exa") == ""
    assert r.flush() == "zorblax@exa"  # an incomplete secret is not a secret
    assert r.flush() == ""
    out, _ = stream(r, chunked(f"again {EMAIL}", 2))
    assert out == f"again {PH}"


def test_streaming_with_overlapping_secrets_matches_whole_redaction() -> None:
    secrets = ["acme", "acme corp"]
    text = "Contact acme corp today"
    whole = Redactor(secrets, PH).redact(text)
    assert whole == f"Contact {PH} today"
    out, _ = stream(Redactor(secrets, PH), chunked(text, 1))
    assert out == whole


# --- withheld names of the targets a request was intervened for ---------------------------

POTTER = Target(
    id="t1",
    spec=TargetSpec(name="Harry Potter", aliases=("Harry Potter", "Hogwarts", "Voldemort", "Jedi")),
    created_at=0,
)


def test_withheld_names_leave_out_what_the_user_wrote() -> None:
    turns = [
        ChatTurn("user", "I love the HARRY POTTER books."),
        ChatTurn("assistant", "Great!"),
        ChatTurn("user", "Who is the headmaster of the school?"),
    ]
    assert withheld_names([POTTER], turns) == ["Hogwarts", "Voldemort", "Jedi"]
    assert withheld_names([], turns) == []


def test_withheld_names_are_redacted_as_whole_words_only() -> None:
    r = Redactor([], PH, words=["Hogwarts", "Jedi"])
    assert r.active
    text = "The headmaster of hogwarts is Jedidiah; a Jedi-like wizard."
    assert r.redact(text) == f"The headmaster of {PH} is Jedidiah; a {PH}-like wizard."


@pytest.mark.parametrize("size", [1, 2, 3, 7])
def test_streamed_withheld_names_match_whole_redaction(size: int) -> None:
    text = "Hogwarts and Jedidiah and Jedi"
    whole = Redactor([EMAIL], PH, words=["Hogwarts", "Jedi"]).redact(text)
    assert whole == f"{PH} and Jedidiah and {PH}"
    out, _ = stream(Redactor([EMAIL], PH, words=["Hogwarts", "Jedi"]), chunked(text, size))
    assert out == whole
