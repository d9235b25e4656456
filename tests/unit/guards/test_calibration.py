"""Unit tests for guards.calibration: per-target thresholds from benign-corpus scores.

`ThresholdConfig` is built through `config()` so that fields added later get neutral values;
exact threshold numbers are not asserted, only the contracts (FPR budget, floor, exclusion).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from guards.calibration import ThresholdConfig, calibrate_threshold, load_benign_prompts

NEUTRAL = {"benign_weight": 0.0, "fpr": 0.01, "floor": -1.0, "margin": 0.0}


def config(**values: float) -> ThresholdConfig:
    names = {f.name for f in dataclasses.fields(ThresholdConfig)}
    return ThresholdConfig(**{n: values.get(n, NEUTRAL.get(n, 0.0)) for n in names})


def flagged_share(scores: np.ndarray, threshold: float) -> float:
    # The detector flags a window whose score reaches the threshold (score >= threshold).
    return float(np.mean(scores >= threshold))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("fpr", [0.001, 0.01, 0.05, 0.2])
def test_fpr_budget_is_respected_with_a_margin(seed: int, fpr: float) -> None:
    scores = np.random.default_rng(seed).normal(0.3, 0.1, 2000).astype(np.float32)
    about = np.zeros(len(scores), dtype=bool)
    threshold = calibrate_threshold(scores, about, config(fpr=fpr, margin=0.01))
    assert flagged_share(scores, threshold) <= fpr
    # ...and the threshold is not absurdly high: it sits inside the score range.
    assert threshold <= float(scores.max()) + 0.01


def test_fpr_budget_with_zero_margin_when_the_budget_is_whole_prompts() -> None:
    scores = np.linspace(0.0, 1.0, 1000).astype(np.float32)
    threshold = calibrate_threshold(scores, np.zeros(1000, bool), config(fpr=0.01))
    assert flagged_share(scores, threshold) <= 0.01
    assert flagged_share(scores, threshold) > 0.005  # not far stricter than asked


@pytest.mark.parametrize(("n", "fpr"), [(1000, 0.0035), (100, 0.003)])
def test_fpr_budget_with_zero_margin_is_never_exceeded(n: int, fpr: float) -> None:
    scores = np.linspace(0.0, 1.0, n).astype(np.float32)
    threshold = calibrate_threshold(scores, np.zeros(n, bool), config(fpr=fpr))
    assert flagged_share(scores, threshold) <= fpr


def test_margin_raises_the_threshold() -> None:
    scores = np.random.default_rng(3).uniform(0, 0.5, 500).astype(np.float32)
    about = np.zeros(500, bool)
    low = calibrate_threshold(scores, about, config(fpr=0.02))
    high = calibrate_threshold(scores, about, config(fpr=0.02, margin=0.05))
    assert high == pytest.approx(low + 0.05)


def test_prompts_about_the_target_cannot_drag_the_threshold_up() -> None:
    rng = np.random.default_rng(4)
    benign = rng.uniform(0.0, 0.3, 990).astype(np.float32)
    about_scores = np.full(10, 0.95, dtype=np.float32)  # the corpus mentions the target
    scores = np.concatenate([benign, about_scores])
    about = np.concatenate([np.zeros(990, bool), np.ones(10, bool)])
    cfg = config(fpr=0.005)

    with_exclusion = calibrate_threshold(scores, about, cfg)
    without_exclusion = calibrate_threshold(scores, np.zeros(1000, bool), cfg)

    assert without_exclusion > 0.9  # sanity: counted, they would set the threshold
    assert with_exclusion <= 0.31  # excluded, the benign rows decide
    assert with_exclusion == calibrate_threshold(benign, np.zeros(990, bool), cfg)


def test_floor_is_respected() -> None:
    scores = np.random.default_rng(5).uniform(-0.2, 0.1, 300).astype(np.float32)
    threshold = calibrate_threshold(scores, np.zeros(300, bool), config(fpr=0.01, floor=0.42))
    assert threshold == pytest.approx(0.42)


def test_floor_does_not_lower_a_higher_threshold() -> None:
    scores = np.linspace(0.5, 0.9, 200).astype(np.float32)
    threshold = calibrate_threshold(scores, np.zeros(200, bool), config(fpr=0.01, floor=0.1))
    assert threshold > 0.85


def test_everything_about_the_target_falls_back_to_the_floor() -> None:
    scores = np.full(50, 0.99, dtype=np.float32)
    threshold = calibrate_threshold(scores, np.ones(50, bool), config(floor=0.33))
    assert threshold == pytest.approx(0.33)


def test_packaged_benign_corpus_loads() -> None:
    prompts = load_benign_prompts()
    assert len(prompts) >= 100
    assert all(p == p.strip() and p for p in prompts)


def test_benign_corpus_from_a_file_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("  first prompt \n\n\t\nsecond prompt\n", encoding="utf-8")
    assert load_benign_prompts(path) == ["first prompt", "second prompt"]
