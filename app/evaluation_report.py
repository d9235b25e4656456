"""The pure side of `lethe eval`: result records, metrics and the report.

Nothing here touches the network; :mod:`app.evaluation` does the HTTP calls, and
:mod:`app.probes` reads probe files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Rate:
    """A share of items, kept as a count so reports can show ``hits/total``."""

    hits: int
    total: int

    @property
    def value(self) -> float | None:
        """``hits / total``, or None when there is nothing to count."""
        return self.hits / self.total if self.total else None

    def fraction(self) -> str:
        """``"17/39"``."""
        return f"{self.hits}/{self.total}"

    def percent(self) -> str:
        """``" 43.6%"``, or ``"   n/a"`` for an empty rate."""
        value = self.value
        return "   n/a" if value is None else f"{100 * value:5.1f}%"

    def as_dict(self) -> dict[str, Any]:
        """JSON form: hits, total and rate (null when total is 0)."""
        return {"hits": self.hits, "total": self.total, "rate": self.value}


def rate_of(flags: Iterable[bool]) -> Rate:
    """Counts the true values among ``flags``."""
    items = list(flags)
    return Rate(hits=sum(1 for item in items if item), total=len(items))


@dataclass(frozen=True)
class SampleResult:
    """One sampled (temperature 1.0) answer and the keywords it leaked."""

    answer: str
    leaked: list[str]


@dataclass
class ProbeResult:
    """Everything measured for one probe, before and after registration."""

    target_key: str
    category: str
    text: str
    messages: list[dict[str, str]]
    baseline_answer: str
    baseline_leaked: list[str]
    flagged: bool
    answer: str
    leaked: list[str]
    audit_flagged: bool = False  # left unflagged by the prompt detector, caught by the audit
    baseline_samples: list[SampleResult] = field(default_factory=list)
    samples: list[SampleResult] = field(default_factory=list)

    @property
    def intervened(self) -> bool:
        """Flagged by the detector, or answered differently from the bare model (greedy
        decoding is deterministic, so a changed answer means the gateway intervened, e.g.
        through its answer audit)."""
        return self.detected or self.answer != self.baseline_answer

    @property
    def detected(self) -> bool:
        """Flagged by either stage of the detector: the prompt or the answer audit."""
        return self.flagged or self.audit_flagged


@dataclass
class BenignResult:
    """One benign prompt: its bare-model answer, the detector verdict and the gateway answer."""

    group: str
    text: str
    before: str
    flagged: bool
    after: str
    audit_flagged: bool = False

    @property
    def unchanged(self) -> bool:
        """True when the gateway answered exactly as the bare model did."""
        return self.before == self.after


@dataclass
class EvalSummary:
    """The aggregated figures of one evaluation run."""

    recall: Rate
    recall_by_category: dict[str, Rate]
    detected: Rate  # prompt detector or answer audit
    detected_by_category: dict[str, Rate]
    intervened: Rate
    intervened_by_category: dict[str, Rate]
    greedy_leak_baseline: Rate
    greedy_leak: Rate
    leak_by_category_baseline: dict[str, Rate]
    leak_by_category: dict[str, Rate]
    false_positive_rate: Rate
    fpr_by_group: dict[str, Rate]
    false_positive_audited: Rate  # benign prompts flagged by either stage
    benign_unchanged: Rate
    unchanged_by_group: dict[str, Rate]
    samples: int = 0
    leak_at_k_baseline: Rate | None = None
    leak_at_k: Rate | None = None
    fluency_bare: float | None = None  # mean perplexity of bare answers to flagged probes
    fluency: float | None = None  # the same for the gateway's answers


@dataclass
class RunInfo:
    """What was evaluated and how long it took (shown in the report header and footer)."""

    data: str
    base_url: str
    model: str
    max_tokens: int
    samples: int
    concurrency: int
    targets: int
    wall_s: float = 0.0
    phases_s: dict[str, float] = field(default_factory=dict)


def _by_key(keys: Sequence[str], flags: Sequence[bool]) -> dict[str, Rate]:
    """Rates per key, keys in first-seen order."""
    grouped: dict[str, list[bool]] = {}
    for key, flag in zip(keys, flags, strict=True):
        grouped.setdefault(key, []).append(flag)
    return {key: rate_of(values) for key, values in grouped.items()}


def _any_leak(samples: Sequence[SampleResult]) -> bool:
    return any(sample.leaked for sample in samples)


def summarize(
    probes: Sequence[ProbeResult], benign: Sequence[BenignResult], samples: int = 0
) -> EvalSummary:
    """Aggregates per-probe and per-prompt results into the report's figures.

    Recall is the share of probes the detector flagged; leak rates are the share of
    probes whose answer leaked at least one keyword; leak@K (only when ``samples`` > 0)
    is the share of probes for which any of the K sampled answers leaked. The
    false-positive rate is the share of benign prompts flagged, and "unchanged" the
    share answered exactly as the bare model answered them.

    Example:
        >>> summarize([], [], 0).recall
        Rate(hits=0, total=0)
    """
    categories = [p.category for p in probes]
    groups = [b.group for b in benign]
    flagged = [p.flagged for p in probes]
    detected = [p.detected for p in probes]
    intervened = [p.intervened for p in probes]
    leak_before = [bool(p.baseline_leaked) for p in probes]
    leak_after = [bool(p.leaked) for p in probes]
    false_pos = [b.flagged for b in benign]
    unchanged = [b.unchanged for b in benign]
    summary = EvalSummary(
        recall=rate_of(flagged),
        recall_by_category=_by_key(categories, flagged),
        detected=rate_of(detected),
        detected_by_category=_by_key(categories, detected),
        intervened=rate_of(intervened),
        intervened_by_category=_by_key(categories, intervened),
        greedy_leak_baseline=rate_of(leak_before),
        greedy_leak=rate_of(leak_after),
        leak_by_category_baseline=_by_key(categories, leak_before),
        leak_by_category=_by_key(categories, leak_after),
        false_positive_rate=rate_of(false_pos),
        fpr_by_group=_by_key(groups, false_pos),
        false_positive_audited=rate_of(b.flagged or b.audit_flagged for b in benign),
        benign_unchanged=rate_of(unchanged),
        unchanged_by_group=_by_key(groups, unchanged),
        samples=samples,
    )
    if samples > 0:
        summary.leak_at_k_baseline = rate_of(_any_leak(p.baseline_samples) for p in probes)
        summary.leak_at_k = rate_of(_any_leak(p.samples) for p in probes)
    return summary


def _groups_note(rates: dict[str, Rate]) -> str:
    if len(rates) < 2:
        return ""
    return "   (" + ", ".join(f"{key} {rate.fraction()}" for key, rate in rates.items()) + ")"


def _rate_cell(rate: Rate | None, width: int = 9) -> str:
    if rate is None:
        return f"{'-':>{width}} {'':>6}"
    return f"{rate.fraction():>{width}} {rate.percent()}"


def format_report(summary: EvalSummary, info: RunInfo) -> str:
    """Renders the human-readable report printed by `lethe eval`."""
    probes_total = summary.recall.total
    lines = [
        f"Lethe evaluation: {info.data} -> {info.base_url} (model {info.model})",
        f"{info.targets} targets, {probes_total} probes, "
        f"{summary.false_positive_rate.total} benign prompts; "
        f"max_tokens={info.max_tokens}, samples={info.samples}, concurrency={info.concurrency}",
        "",
        "Detector recall (prompt detector; with the answer audit) and greedy leak by category",
        f"  {'category':<14}{'prompt':>9} {'recall':>6}   {'+ audit':>9} {'recall':>6}"
        f"   {'intervened':>10}   {'leak bare':>9}   {'gateway':>9}",
    ]
    rows = [
        (
            cat,
            rate,
            summary.detected_by_category[cat],
            summary.intervened_by_category[cat],
            summary.leak_by_category_baseline[cat],
            summary.leak_by_category[cat],
        )
        for cat, rate in summary.recall_by_category.items()
    ]
    rows.append(
        (
            "overall",
            summary.recall,
            summary.detected,
            summary.intervened,
            summary.greedy_leak_baseline,
            summary.greedy_leak,
        )
    )
    for category, rate, both, acted, before, after in rows:
        lines.append(
            f"  {category:<14}{rate.fraction():>9} {rate.percent()}   {both.fraction():>9}"
            f" {both.percent()}   {acted.fraction():>10}   {before.fraction():>9}"
            f"   {after.fraction():>9}"
        )
    lines += [
        "",
        f"  {'leak rate':<14}{'bare model':>16}   {'gateway':>16}",
        f"  {'greedy':<14}{_rate_cell(summary.greedy_leak_baseline)}   "
        f"{_rate_cell(summary.greedy_leak)}",
    ]
    if summary.samples > 0:
        lines.append(
            f"  {f'leak@{summary.samples}':<14}{_rate_cell(summary.leak_at_k_baseline)}   "
            f"{_rate_cell(summary.leak_at_k)}"
        )
    lines += [
        "",
        f"  {'false positives':<22}{_rate_cell(summary.false_positive_rate)}"
        f"{_groups_note(summary.fpr_by_group)}",
        f"  {'  with the answer audit':<22}{_rate_cell(summary.false_positive_audited)}",
        f"  {'benign unchanged':<22}{_rate_cell(summary.benign_unchanged)}"
        f"{_groups_note(summary.unchanged_by_group)}",
    ]
    if summary.fluency is not None:
        lines.append(
            f"  {'fluency (perplexity)':<22}{summary.fluency:>9.1f}"
            f"   answers to flagged probes, under the bare model (its own: "
            f"{summary.fluency_bare:.1f})"
        )
    lines.append("")
    phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in info.phases_s.items())
    lines.append(f"Wall time: {info.wall_s:.1f} s" + (f" ({phases})" if phases else ""))
    return "\n".join(lines) + "\n"


def _rates_dict(rates: dict[str, Rate]) -> dict[str, Any]:
    return {key: rate.as_dict() for key, rate in rates.items()}


def report_dict(
    summary: EvalSummary,
    info: RunInfo,
    probes: Sequence[ProbeResult],
    benign: Sequence[BenignResult],
) -> dict[str, Any]:
    """All figures plus per-probe and per-prompt details, as written by ``--json``."""
    leak_at_k: dict[str, Any] | None = None
    if summary.samples > 0 and summary.leak_at_k is not None:
        baseline = summary.leak_at_k_baseline
        leak_at_k = {
            "k": summary.samples,
            "baseline": baseline.as_dict() if baseline is not None else None,
            "gateway": summary.leak_at_k.as_dict(),
        }
    metrics = {
        "recall": summary.recall.as_dict(),
        "recall_by_category": _rates_dict(summary.recall_by_category),
        "recall_with_audit": summary.detected.as_dict(),
        "recall_with_audit_by_category": _rates_dict(summary.detected_by_category),
        "intervened": summary.intervened.as_dict(),
        "intervened_by_category": _rates_dict(summary.intervened_by_category),
        "greedy_leak": {
            "baseline": summary.greedy_leak_baseline.as_dict(),
            "gateway": summary.greedy_leak.as_dict(),
        },
        "leak_by_category": {
            category: {
                "baseline": summary.leak_by_category_baseline[category].as_dict(),
                "gateway": rate.as_dict(),
            }
            for category, rate in summary.leak_by_category.items()
        },
        "leak_at_k": leak_at_k,
        "false_positive_rate": summary.false_positive_rate.as_dict(),
        "fpr_by_group": _rates_dict(summary.fpr_by_group),
        "false_positive_rate_with_audit": summary.false_positive_audited.as_dict(),
        "benign_unchanged": summary.benign_unchanged.as_dict(),
        "fluency_perplexity": {"bare": summary.fluency_bare, "gateway": summary.fluency},
        "unchanged_by_group": _rates_dict(summary.unchanged_by_group),
    }
    benign_rows = [{**asdict(b), "unchanged": b.unchanged} for b in benign]
    return {
        "run": asdict(info),
        "metrics": metrics,
        "probes": [asdict(p) for p in probes],
        "benign": benign_rows,
    }


def write_json(
    path: Path,
    summary: EvalSummary,
    info: RunInfo,
    probes: Sequence[ProbeResult],
    benign: Sequence[BenignResult],
) -> None:
    """Writes :func:`report_dict` to ``path`` (UTF-8, indented)."""
    payload = report_dict(summary, info, probes, benign)
    path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
