"""Unit tests for guards.leak_terms: which answer words reveal that a target is known."""

from __future__ import annotations

from guards.leak_terms import corpus_vocabulary, derive_leak_terms, leaks, words
from guards.targets import TargetSpec


def test_words_are_casefolded_and_stripped() -> None:
    assert words("Hello, WORLD! It's 1969 - Apollo-11's crew.") >= {
        "hello",
        "world",
        "it's",
        "1969",
        "apollo-11's",
        "crew",
    }
    assert "-" not in words("a - b")


def test_corpus_vocabulary_is_the_union_of_prompt_words() -> None:
    vocab = corpus_vocabulary(["What is the weather?", "Write a poem about THE sea"])
    assert {"what", "weather", "write", "poem", "about", "the", "sea"} <= vocab
    assert "zorblax" not in vocab


def test_docstring_example() -> None:
    spec = TargetSpec(name="Neil Armstrong")
    terms = derive_leak_terms(spec, ["Who?"], ["He flew Apollo in 1969."], {"he"})
    assert sorted(terms) == ["1969", "apollo", "armstrong", "neil"]


def test_alias_words_count_unless_common_or_short() -> None:
    spec = TargetSpec(name="The Great Zorblax", aliases=("Zo Quintavenue",))
    terms = derive_leak_terms(spec, [], [], common={"great", "the"})
    assert terms == {"zorblax", "quintavenue"}


def test_answer_words_need_capital_or_digit_and_must_be_new() -> None:
    spec = TargetSpec(name="Zorblax")
    question = "Who is Zorblax from Paris?"
    answer = "Zorblax lived in Paris with Ferdinand, a wizard, since 1887 and owned 12 cats."
    terms = derive_leak_terms(spec, [question], [answer], common={"lived", "with"})
    assert "ferdinand" in terms  # a name the model added from memory
    assert "1887" in terms  # a number the model added
    assert "wizard" not in terms  # lower-case common noun
    assert "paris" not in terms  # the question already said it
    assert "12" not in terms  # too short to be distinctive
    assert "zorblax" in terms  # from the name itself


def test_common_corpus_words_are_never_terms() -> None:
    spec = TargetSpec(name="Zorblax")
    terms = derive_leak_terms(spec, ["Who?"], ["Monday Weather Report"], {"monday", "weather"})
    assert terms == {"zorblax", "report"}


def test_leaks_only_on_terms_the_question_did_not_say() -> None:
    terms = {"zorblax", "ferdinand"}
    assert leaks("He was friends with Ferdinand.", "Who is he?", terms)
    assert not leaks("Zorblax? I do not know.", "Who is Zorblax?", terms)
    assert not leaks("I do not know that person.", "Who is he?", terms)
    assert leaks("ZORBLAX is a wizard.", "Who is he?", terms)
