"""Unit tests for guards.names: proper names in a window and the target vocabulary."""

from __future__ import annotations

import pytest

from guards.names import names_foreign, proper_names, vocabulary


def names(text: str) -> list[list[str]]:
    return [sorted(n) for n in proper_names(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Who was Isaac Newton?", [["isaac", "newton"]]),
        ("Who is Captain Kirk in Star Trek?", [["captain", "kirk"], ["star", "trek"]]),
        ("Who is Harry Potter's best friend?", [["harry", "potter"]]),
        # One capitalised word is no name run: nationalities and places describe targets too.
        ("Which English scientist saw an apple fall in Woolsthorpe?", []),
        # Function words do not count: "In Paris" is one word of a name.
        ("In Paris, Galileo Galilei met the young Newton.", [["galilei", "galileo"]]),
        ("The Beatles? Isaac Newton was English.", [["isaac", "newton"]]),
        ("what is a wizard?", []),
        # Other languages are left to the multilingual channel.
        ("¿Qué es la Torre Eiffel de París?", []),
    ],
)
def test_proper_names_are_runs_of_capitalised_words_inside_sentences(
    text: str, expected: list[list[str]]
) -> None:
    assert names(text) == expected


def test_a_name_is_foreign_when_a_word_of_it_is_not_in_the_vocabulary() -> None:
    known = vocabulary(["Eiffel Tower", "Built for the 1889 World's Fair in Paris."])
    assert "world" in known and "paris" in known
    assert not names_foreign(proper_names("Which landmark opened the World's Fair?"), known)
    assert names_foreign(proper_names("What is the Leaning Tower of Pisa?"), known)
    assert not names_foreign((), known)
