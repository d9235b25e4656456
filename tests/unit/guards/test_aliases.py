"""Unit tests for guards.aliases: obfuscation-tolerant alias matching."""

from __future__ import annotations

import threading

import pytest

from guards.aliases import AliasMatcher, AliasMention, normalise

TARGETS: dict[str, list[str]] = {
    "vader": ["Darth Vader", "Vader"],
    "starwars": ["Star Wars", "Jedi"],
    "luke": ["Luke Skywalker"],
    "armstrong": ["Neil Armstrong", "first person to walk on the Moon"],
    "newton": ["Isaac Newton", "Newton's laws"],
    "jonas": ["Jonas Ebbesen-Tran"],
}


@pytest.fixture()
def matcher() -> AliasMatcher:
    m = AliasMatcher()
    for target_id, aliases in TARGETS.items():
        m.add(target_id, aliases)
    return m


def spans(m: AliasMatcher, text: str) -> list[tuple[str, str, int]]:
    """(target_id, text slice as the user wrote it, edits) for every mention."""
    return [(x.target_id, text[x.start : x.end], x.edits) for x in m.find(text)]


# --- exact, case, accents, punctuation ------------------------------------------------


def test_exact_match_reports_alias_span_and_zero_edits(matcher: AliasMatcher) -> None:
    text = "Tell me about Darth Vader please"
    assert matcher.find(text) == [AliasMention("vader", "Darth Vader", 14, 25, 0)]


def test_case_insensitive(matcher: AliasMatcher) -> None:
    assert spans(matcher, "who is DARTH vader") == [("vader", "DARTH vader", 0)]


def test_accents_in_text_are_ignored(matcher: AliasMatcher) -> None:
    assert spans(matcher, "Dárth Vàdér was here") == [("vader", "Dárth Vàdér", 0)]


def test_accents_in_alias_are_ignored() -> None:
    m = AliasMatcher()
    m.add("marti", ["José Martí"])
    assert spans(m, "jose marti wrote poems") == [("marti", "jose marti", 0)]
    assert spans(m, "JOSÉ MARTÍ") == [("marti", "JOSÉ MARTÍ", 0)]


def test_combining_accent_stays_inside_span() -> None:
    m = AliasMatcher()
    m.add("marti", ["Jose Marti"])
    text = "Jose Marti\u0301 spoke"  # decomposed accent on the final i
    assert spans(m, text) == [("marti", "Jose Marti\u0301", 0)]


@pytest.mark.parametrize(
    "text", ["Jonas Ebbesen-Tran", "jonas ebbesen tran", "Jonas EbbesenTran", "JONAS_EBBESEN–TRAN"]
)
def test_hyphens_spaces_and_joins_are_equivalent(matcher: AliasMatcher, text: str) -> None:
    assert spans(matcher, f"Who is {text}?") == [("jonas", text, 0)]


@pytest.mark.parametrize(
    ("text", "edits"),
    [("Newton's laws", 0), ("Newton’s laws", 0), ("newton laws", 0), ("newtons laws", 1)],
)
def test_apostrophe_variants(matcher: AliasMatcher, text: str, edits: int) -> None:
    assert spans(matcher, f"Explain {text}.") == [("newton", text, edits)]


def test_possessive_matches_and_span_excludes_apostrophe_s(matcher: AliasMatcher) -> None:
    assert spans(matcher, "Darth Vader's helmet") == [("vader", "Darth Vader", 0)]
    assert spans(matcher, "the Jedi's code") == [("starwars", "Jedi", 0)]


def test_joined_multiword_alias(matcher: AliasMatcher) -> None:
    assert spans(matcher, "a starwars fan") == [("starwars", "starwars", 0)]


def test_split_text_matches_joined_alias() -> None:
    m = AliasMatcher()
    m.add("sw", ["Starwars", "Skywalker"])
    assert spans(m, "I like star wars and Sky walker") == [
        ("sw", "star wars", 0),
        ("sw", "Sky walker", 0),
    ]


def test_spanish_sentence(matcher: AliasMatcher) -> None:
    text = "¿Quién es Darth Vader? ¿Y quién fue Neil Armstrong?"
    assert spans(matcher, text) == [("vader", "Darth Vader", 0), ("armstrong", "Neil Armstrong", 0)]


def test_inverted_question_mark_span(matcher: AliasMatcher) -> None:
    text = "¿Quién es Darth Vader?"
    (hit,) = matcher.find(text)
    assert (hit.start, hit.end, text[hit.start : hit.end]) == (10, 21, "Darth Vader")


# --- obfuscation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["D a r t h  V a d e r", "D.a.r.t.h V.a.d.e.r", "d-a-r-t-h v-a-d-e-r"]
)
def test_spaced_letters(matcher: AliasMatcher, text: str) -> None:
    assert spans(matcher, f"I like {text} a lot") == [("vader", text, 0)]


def test_spaced_letters_single_word(matcher: AliasMatcher) -> None:
    assert spans(matcher, "who is V.a.d.e.r?") == [("vader", "V.a.d.e.r", 0)]
    assert spans(matcher, "I am a J e d i") == [("starwars", "J e d i", 0)]


@pytest.mark.parametrize(
    ("text", "target", "mention"),
    [
        ("Who is D4rth V4der?", "vader", "D4rth V4der"),
        ("Who was N3il Armstr0ng?", "armstrong", "N3il Armstr0ng"),
        ("Tell me about 1saac N3wton", "newton", "1saac N3wton"),
        ("the J3d! order", "starwars", "J3d!"),
        ("$tar W@rs movies", "starwars", "$tar W@rs"),
        ("D 4 r t h V 4 d 3 r", "vader", "D 4 r t h V 4 d 3 r"),
    ],
)
def test_leetspeak(matcher: AliasMatcher, text: str, target: str, mention: str) -> None:
    assert spans(matcher, text) == [(target, mention, 0)]


def test_trailing_bang_after_leet_word_can_still_be_punctuation() -> None:
    m = AliasMatcher()
    m.add("yoda", ["Yoda"])
    m.add("vader", ["Darth Vader"])
    assert spans(m, "Y0da! and D4rth V4der!") == [("yoda", "Y0da", 0), ("vader", "D4rth V4der", 0)]
    assert spans(m, "Yoda! Darth Vader!") == [("yoda", "Yoda", 0), ("vader", "Darth Vader", 0)]


def test_leet_one_matches_l_too() -> None:
    m = AliasMatcher()
    m.add("leia", ["Leia Organa"])
    assert spans(m, "1eia 0rgana") == [("leia", "1eia 0rgana", 0)]


@pytest.mark.parametrize(
    ("text", "target", "mention", "edits"),
    [
        ("luke skywaker", "luke", "luke skywaker", 1),
        ("Luke Skywlaker", "luke", "Luke Skywlaker", 1),  # adjacent transposition
        (
            "who was the frist person to walk on the moon",
            "armstrong",
            "frist person to walk on the moon",
            1,
        ),
        ("Jonas Ebeesen-Tran", "jonas", "Jonas Ebeesen-Tran", 1),
        ("Jonas Ebesen-Trann", "jonas", "Jonas Ebesen-Trann", 2),
        ("Darth Vadr", "vader", "Darth Vadr", 1),
        ("who is Vadr", "vader", "Vadr", 1),
    ],
)
def test_typos(matcher: AliasMatcher, text: str, target: str, mention: str, edits: int) -> None:
    assert spans(matcher, text) == [(target, mention, edits)]


def test_typo_budget_by_length() -> None:
    m = AliasMatcher()
    m.add("t", ["Jedi", "Vader", "Skywalker Luke"])
    assert spans(m, "Jedo") == []  # <= 4 letters: exact only
    assert spans(m, "Vadr") == [("t", "Vadr", 1)]  # 5-9 letters: one edit
    assert spans(m, "Vdr") == []  # ... but not two
    assert spans(m, "Skywlker Lukee") == [("t", "Skywlker Lukee", 2)]  # >= 10: two edits
    assert spans(m, "Skwlker Lukee") == []  # ... but not three


# --- negatives --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "Who is Captain Kirk in Star Trek?",
        "What is a galaxy?",
        "Who was Yuri Gagarin?",
        "Jedidiah went home",
        "Jed and Jodi went home",
        "Who was Albert Einstein?",
        "Ralph Nader ran for president",  # first letter differs from "Vader"
        "Nils Armstrong",  # two edits inside the short word "Neil"
        "Newtonian mechanics",
        "the theory of gravity",
        "",
        "   ...!!! ",
    ],
)
def test_negatives(matcher: AliasMatcher, text: str) -> None:
    assert matcher.find(text) == []


def test_alias_must_cover_whole_tokens() -> None:
    m = AliasMatcher()
    m.add("jedi", ["Jedi"])
    m.add("anakin", ["Anakin"])
    assert m.find("Jedidiah and theJedi and Jedis") == []
    assert m.find("it was an akin thing") == []  # two real words do not fuse into an alias


# --- results shape ----------------------------------------------------------------------


def test_results_sorted_by_start_with_multiple_targets(matcher: AliasMatcher) -> None:
    text = "Luke Skywalker met Darth Vader; a Jedi in Star Wars."
    assert spans(matcher, text) == [
        ("luke", "Luke Skywalker", 0),
        ("vader", "Darth Vader", 0),
        ("starwars", "Jedi", 0),
        ("starwars", "Star Wars", 0),
    ]


def test_overlapping_mentions_of_same_target_collapse(matcher: AliasMatcher) -> None:
    # "Vader" alone is also an alias of the same target; only the best mention is kept.
    assert [(x.alias, x.start, x.end) for x in matcher.find("Darth Vader")] == [
        ("Darth Vader", 0, 11)
    ]


def test_overlapping_mentions_of_different_targets_are_kept() -> None:
    m = AliasMatcher()
    m.add("vader", ["Darth Vader"])
    m.add("sith", ["Darth"])
    assert spans(m, "Darth Vader") == [("sith", "Darth", 0), ("vader", "Darth Vader", 0)]


def test_repeated_mentions_are_all_reported(matcher: AliasMatcher) -> None:
    text = "Vader, vader and V4der"
    assert spans(matcher, text) == [
        ("vader", "Vader", 0),
        ("vader", "vader", 0),
        ("vader", "V4der", 0),
    ]


def test_same_alias_for_two_targets_reports_both() -> None:
    m = AliasMatcher()
    m.add("a", ["Star Wars"])
    m.add("b", ["star wars"])
    assert {x.target_id for x in m.find("I love Star Wars")} == {"a", "b"}


# --- registry semantics ---------------------------------------------------------------


def test_add_remove_len_and_target_ids() -> None:
    m = AliasMatcher()
    assert len(m) == 0 and m.target_ids() == set()
    m.add("vader", ["Darth Vader"])
    m.add("jedi", ["Jedi"])
    assert len(m) == 2 and m.target_ids() == {"vader", "jedi"}
    m.remove("vader")
    assert len(m) == 1 and m.target_ids() == {"jedi"}
    assert m.find("Darth Vader is no Jedi") == [AliasMention("jedi", "Jedi", 18, 22, 0)]


def test_remove_unknown_is_noop() -> None:
    m = AliasMatcher()
    m.add("jedi", ["Jedi"])
    m.remove("nope")
    assert len(m) == 1 and spans(m, "Jedi") == [("jedi", "Jedi", 0)]


def test_add_again_replaces_aliases() -> None:
    m = AliasMatcher()
    m.add("t", ["Darth Vader"])
    m.add("t", ["Luke Skywalker"])
    assert len(m) == 1
    assert m.find("Darth Vader") == []
    assert spans(m, "Luke Skywalker") == [("t", "Luke Skywalker", 0)]


def test_target_ids_returns_a_copy() -> None:
    m = AliasMatcher()
    m.add("t", ["Jedi"])
    m.target_ids().add("x")
    assert m.target_ids() == {"t"}


def test_aliases_without_letters_are_ignored() -> None:
    m = AliasMatcher()
    m.add("t", ["", "  --- ", "Jedi", "JEDI"])
    assert len(m) == 1
    assert spans(m, "--- Jedi") == [("t", "Jedi", 0)]


def test_concurrent_add_remove_and_find() -> None:
    m = AliasMatcher()
    m.add("stable", ["Darth Vader"])
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn() -> None:
        try:
            for i in range(300):
                m.add(f"t{i % 7}", [f"Alias Number {i}", "Star Wars"])
                m.remove(f"t{(i + 3) % 7}")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            stop.set()

    worker = threading.Thread(target=churn)
    worker.start()
    while not stop.is_set():
        found = m.find("Darth Vader watches Star Wars")
        assert ("stable", 0, 11) in [(x.target_id, x.start, x.end) for x in found]
    worker.join()
    assert errors == []


# --- normalise --------------------------------------------------------------------------


def test_normalise_maps_back_to_original_indices() -> None:
    text = "Ébbesen-Tran's D4rth!"
    norm, src = normalise(text)
    assert norm == "ebbesen tran darthi"  # "!" after a leet word reads as "i"
    assert len(src) == len(norm)
    assert [text[i] for i in src[:7]] == list("Ébbesen")
    assert text[src[8] : src[11] + 1] == "Tran"
    assert text[src[13] : src[-1] + 1] == "D4rth!"


def test_normalise_keeps_ambiguous_one_and_plain_numbers() -> None:
    assert normalise("1saac 1969 n3wton")[0] == "1saac 1969 newton"
    assert normalise("ﬁrst STRAẞE Øre")[0] == "first strasse ore"


def test_keyed_texts_narrow_a_corpus_without_losing_a_mention() -> None:
    """Looking texts up by index key finds exactly the texts a full scan finds mentions in,
    obfuscated aliases included."""
    import random

    from guards.aliases import KeyedTexts
    from guards.calibration import load_benign_prompts

    prompts = load_benign_prompts()
    texts = KeyedTexts(prompts)
    rng = random.Random(0)
    words = [w.strip("?.,!") for p in prompts for w in p.split() if len(w) > 3]
    positives = 0
    for i in range(120):
        alias = " ".join(rng.sample(words, rng.randint(1, 2)))
        if i % 3 == 0:
            alias = alias.replace("e", "3")
        if i % 5 == 0:
            alias = " ".join(alias)
        matcher = AliasMatcher()
        matcher.add("t", [alias])
        full = {j for j, p in enumerate(prompts) if matcher.find(p)}
        narrowed = {j for j in texts.candidates(matcher.keys()) if matcher.find(prompts[j])}
        assert narrowed == full, alias
        assert len(texts.candidates(matcher.keys())) < len(prompts)
        positives += len(full)
    assert positives > 100  # the aliases do occur in the corpus
