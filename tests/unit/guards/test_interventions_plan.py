"""Plans from verdicts, the method a target is enforced by, contrast questions, artifacts."""

from __future__ import annotations

from pathlib import Path

from guards.contrast import forget_questions, ignorance_answers, question_pairs, target_questions
from guards.store import SqliteTargetStore
from guards.targets import (
    AdapterInfo,
    AdapterState,
    Calibration,
    Intervention,
    Target,
    TargetSpec,
)
from guards.verdict import ChatTurn, LoraRef, Match, Plan, Span, SteerRef, Verdict

SPEC = TargetSpec(
    name="Star Wars",
    aliases=("Luke Skywalker", "Darth Vader"),
    examples=("Who is Luke Skywalker?", "What is the best film of all time?"),
)


def _match(target_id: str, kind: Intervention, score: float = 1.0, conf: float = 1.0) -> Match:
    return Match(
        target_id=target_id,
        name=target_id,
        score=score,
        spans=(Span(0, 0, 4),),
        source="alias",
        intervention=kind,
        eco_sigma=0.8,
        steer_strength=0.6,
        confidence=conf,
    )


def test_plan_combines_methods_of_several_matches() -> None:
    verdict = Verdict(
        matches=(
            _match("a", Intervention.STEER),
            _match("b", Intervention.LORA, conf=0.7),
            _match("c", Intervention.LORA, conf=0.9),
        )
    )
    plan = Plan.from_verdict(verdict, noise_seed=5)
    assert verdict.action == plan.action == "lora"
    assert plan.steer == (SteerRef("a", 0.6),)
    assert plan.lora == LoraRef("c", 0.9)  # the most confident adapter
    assert plan.spans and plan.eco_sigma == 0.8  # the ECO fallback is always there
    assert not plan.corrupts


def test_refuse_wins_and_eco_corrupts() -> None:
    refuse = Verdict(matches=(_match("a", Intervention.LORA), _match("b", Intervention.REFUSE)))
    assert Plan.from_verdict(refuse).action == "refuse"
    eco = Plan.from_verdict(Verdict(matches=(_match("a", Intervention.ECO),)))
    assert eco.action == "eco" and eco.corrupts
    assert Plan.from_verdict(Verdict()).action == "none"


def test_method_falls_back_until_its_state_is_ready() -> None:
    target = Target(id="t", spec=TargetSpec(name="x", intervention=Intervention.LORA), created_at=0)
    assert target.method() is Intervention.ECO  # nothing computed yet
    steered = target.with_calibration(Calibration(steer_strength=0.5))
    assert steered.method() is Intervention.STEER  # adapter still training
    ready = steered.with_calibration(
        Calibration(steer_strength=0.5, adapter=AdapterInfo(AdapterState.READY, "trained"))
    )
    assert ready.method() is Intervention.LORA
    auto = Target(id="a", spec=TargetSpec(name="y"), created_at=0)
    assert auto.method() is Intervention.ECO
    chosen = auto.with_calibration(Calibration(steer_strength=0.4, auto_method=Intervention.STEER))
    assert chosen.method() is Intervention.STEER


def test_contrast_questions_swap_the_target_for_fictitious_entities() -> None:
    questions = target_questions(SPEC)
    pairs = question_pairs(SPEC, questions)
    assert "What is the best film of all time?" not in pairs.target  # names no alias
    assert len(pairs.target) == len(pairs.contrast) >= 3
    for original, fake in zip(pairs.target, pairs.contrast, strict=True):
        assert "skywalker" not in fake.casefold() and "star wars" not in fake.casefold()
        assert original != fake
    assert pairs == question_pairs(SPEC, questions)  # deterministic


def test_ignorance_answers_never_name_anything() -> None:
    answers = ignorance_answers()
    assert len(answers) >= 4
    assert all("{" not in a and "star" not in a.casefold() for a in answers)
    assert len(forget_questions(SPEC)) > len(target_questions(SPEC))


def test_artifacts_live_and_die_with_their_target(tmp_path: Path) -> None:
    store = SqliteTargetStore(tmp_path / "r.db")
    store.add(Target(id="t1", spec=SPEC, created_at=1))
    assert store.put_artifact("t1", "steering", b"\x00\x01") is True
    assert store.put_artifact("t1", "steering", b"\x02") is True  # replaced
    assert store.put_artifact("ghost", "steering", b"\x00") is False
    assert store.get_artifact("t1", "steering") == b"\x02"
    store.close()
    reopened = SqliteTargetStore(tmp_path / "r.db")
    assert reopened.get_artifact("t1", "steering") == b"\x02"
    assert reopened.remove("t1") is True
    assert reopened.get_artifact("t1", "steering") is None


def test_calibration_with_adapter_round_trips_through_the_store(tmp_path: Path) -> None:
    store = SqliteTargetStore(tmp_path / "r.db")
    store.add(Target(id="t1", spec=SPEC, created_at=1))
    cal = Calibration(
        steer_strength=0.7,
        auto_method=Intervention.STEER,
        adapter=AdapterInfo(AdapterState.TRAINING, "trained", 0.4, 12.5, 8),
    )
    assert store.update_calibration("t1", cal)
    got = store.get("t1")
    assert got is not None and got.calibration == cal


def test_a_follow_up_turn_is_covered_when_the_target_was_named_earlier() -> None:
    turns = [
        ChatTurn("user", "I want to learn about Mount Everest."),
        ChatTurn("assistant", "Sure."),
        ChatTurn("user", "Who first reached its summit?"),
    ]
    named_earlier = Plan(action="eco", spans=(Span(0, 23, 36),))
    covered = named_earlier.covering_follow_up(turns)
    assert covered.spans == (Span(0, 23, 36), Span(2, 0, len(turns[2].content)))
    # Named in the last turn already, or nothing to corrupt: unchanged.
    named_last = Plan(action="eco", spans=(Span(2, 0, 5),))
    assert named_last.covering_follow_up(turns) is named_last
    assert Plan().covering_follow_up(turns) == Plan()
