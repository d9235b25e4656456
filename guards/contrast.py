"""Text material for steering and adapter training: contrast questions and ignorance answers.

A target's questions asked about made-up entities of the same kind show how the model behaves
when it does not know something; the difference between the two is what steering removes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from guards.targets import TargetSpec


def _data_lines(name: str) -> tuple[str, ...]:
    text = resources.files("guards").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return tuple(
        line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
    )


@dataclass(frozen=True)
class QuestionPairs:
    """The target's questions and, index for index, the same questions about unknown entities."""

    target: tuple[str, ...]
    contrast: tuple[str, ...]


def target_questions(spec: TargetSpec, max_examples: int = 6, max_aliases: int = 4) -> list[str]:
    """What the model is asked about a target at registration (examples first)."""
    return list(
        dict.fromkeys(
            [
                *spec.examples[:max_examples],
                f"Tell me about {spec.name}.",
                *(f"Who or what is {alias}?" for alias in spec.aliases[:max_aliases]),
            ]
        )
    )


def question_pairs(spec: TargetSpec, questions: list[str]) -> QuestionPairs:
    """Pair each question that names the target with its copy about a fictitious entity.

    Questions that name none of the target's aliases have no contrast and are left out; the
    name is always present through "Tell me about <name>".
    """
    names = _data_lines("fictitious_names.txt")
    aliases = sorted(spec.all_aliases(), key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(a) for a in aliases), re.IGNORECASE)
    target: list[str] = []
    contrast: list[str] = []
    for question in questions:
        if not pattern.search(question):
            continue
        digest = hashlib.sha256(question.encode("utf-8")).digest()
        fake = names[digest[0] % len(names)]
        target.append(question)
        contrast.append(pattern.sub(fake, question))
    return QuestionPairs(tuple(target), tuple(contrast))


def ignorance_answers() -> tuple[str, ...]:
    """Answers that sound like a model that never learned the subject, naming nothing."""
    return _data_lines("ignorance_answers.txt")


def forget_questions(spec: TargetSpec) -> list[str]:
    """Questions an adapter learns to answer with ignorance: the registration questions plus a
    few phrasings per alias, so that it generalises beyond the examples."""
    phrasings = (
        "What do you know about {}?",
        "Can you explain {} to me?",
        "Give me some facts about {}.",
    )
    out = target_questions(spec)
    for alias in spec.all_aliases()[:6]:
        out.extend(p.format(alias) for p in phrasings)
    return list(dict.fromkeys(out))
