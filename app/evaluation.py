"""`lethe eval`: measures a running gateway over HTTP against a probe file (recall, FPR, leaks)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from app.eval_client import EvalError, EvalGateway
from app.eval_pool import parallel
from app.evaluation_report import (
    BenignResult,
    ProbeResult,
    RunInfo,
    SampleResult,
    format_report,
    summarize,
    write_json,
)
from app.probes import (
    EvalTarget,
    Message,
    Probe,
    ProbeFileError,
    ProbeSet,
    leaked_keywords,
    load_probe_file,
)

__all__ = ["EvalError", "add_eval_arguments", "leaked_keywords", "load_probe_file", "run_eval"]

logger = logging.getLogger(__name__)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Declares the options of `lethe eval` on ``parser``.

    ``--admin-token`` defaults to None: the CLI fills it from settings
    (``LETHE_ADMIN_TOKEN``), and :func:`run_eval` refuses to start without one.
    """
    parser.add_argument("--data", type=Path, required=True, help="probe file (JSON)")
    parser.add_argument("--base-url", default="http://127.0.0.1:8000", help="gateway URL")
    parser.add_argument("--admin-token", default=None, help="bearer token for /admin")
    parser.add_argument("--api-key", default="none", help="API key for /v1/chat/completions")
    parser.add_argument("--model", default=None, help="model id (default: first of /v1/models)")
    parser.add_argument("--concurrency", type=_positive_int, default=8, help="parallel requests")
    parser.add_argument("--max-tokens", type=_positive_int, default=48, help="tokens per answer")
    parser.add_argument(
        "--samples", type=_non_negative_int, default=5, help="K answers at temperature 1 (leak@K)"
    )
    parser.add_argument(
        "--intervention",
        choices=["auto", "eco", "steer", "lora", "refuse"],
        default=None,
        help="register every target with this method (default: as the probe file says)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="reuse the bare model's answers from an earlier run's --json (same probe file, "
        "model, max tokens and samples) instead of asking for them again",
    )
    parser.add_argument(
        "--fluency",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="score answers to flagged probes by their perplexity under the bare model "
        "(loads LETHE_MODEL in this process)",
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds to wait for calibration"
    )
    parser.add_argument(
        "--request-timeout", type=float, default=120.0, help="seconds per HTTP request"
    )
    parser.add_argument("--keep", action="store_true", help="leave the targets registered")
    parser.add_argument("--json", type=Path, default=None, help="also write all results here")


def _evaluate(
    gateway: EvalGateway,
    pool: ThreadPoolExecutor,
    probe_set: ProbeSet,
    args: argparse.Namespace,
    registered: list[str],
    phases: dict[str, float],
) -> tuple[list[ProbeResult], list[BenignResult]]:
    """Bare-model answers, registration + calibration, then the gateway pass."""
    k: int = args.samples
    probes, benign = probe_set.probes, probe_set.benign
    probe_msgs = [p.as_messages() for p in probes]
    benign_msgs: list[list[Message]] = [[{"role": "user", "content": b.text}] for b in benign]

    def sampler(messages: list[Message]) -> list[str]:
        return gateway.sample(messages, k)

    start = time.monotonic()
    gateway.prepare()
    if args.baseline is not None:
        before, base_samples = load_baseline(args.baseline, probe_set, gateway.model, args)
    else:
        before = parallel(pool, gateway.greedy, benign_msgs + probe_msgs, "bare model, greedy")
        base_samples = parallel(pool, sampler, probe_msgs, f"bare model, {k} samples") if k else []
    phases["bare model"] = time.monotonic() - start

    start = time.monotonic()
    keys_by_id: dict[str, str] = {}
    for target in probe_set.targets:
        target_id = gateway.register(target.register, args.intervention)
        registered.append(target_id)
        keys_by_id[target_id] = target.key
    gateway.wait_calibrated(keys_by_id, args.timeout)
    phases["registration + calibration"] = time.monotonic() - start

    start = time.monotonic()
    flags = parallel(pool, gateway.classify, probe_msgs + benign_msgs, "classify")
    after = parallel(pool, gateway.greedy, probe_msgs + benign_msgs, "gateway, greedy")
    samples = parallel(pool, sampler, probe_msgs, f"gateway, {k} samples") if k else []
    phases["gateway"] = time.monotonic() - start

    targets = {t.key: t for t in probe_set.targets}
    probe_results: list[ProbeResult] = []
    for i, probe in enumerate(probes):
        target = targets[probe.target_key]

        def leaks(answer: str, probe: Probe = probe, target: EvalTarget = target) -> list[str]:
            return leaked_keywords(
                answer, probe.conversation_text, target.leak_keywords, target.redact
            )

        baseline_answer, answer = before[len(benign) + i], after[i]
        probe_results.append(
            ProbeResult(
                target_key=probe.target_key,
                category=probe.category,
                text=probe.text,
                messages=probe_msgs[i],
                baseline_answer=baseline_answer,
                baseline_leaked=leaks(baseline_answer),
                flagged=flags[i].prompt,
                audit_flagged=flags[i].answer,
                answer=answer,
                leaked=leaks(answer),
                baseline_samples=[SampleResult(a, leaks(a)) for a in base_samples[i]] if k else [],
                samples=[SampleResult(a, leaks(a)) for a in samples[i]] if k else [],
            )
        )
    benign_results = [
        BenignResult(
            group=b.group,
            text=b.text,
            before=before[j],
            flagged=flags[len(probes) + j].prompt,
            audit_flagged=flags[len(probes) + j].answer,
            after=after[len(probes) + j],
        )
        for j, b in enumerate(benign)
    ]
    return probe_results, benign_results


def load_baseline(
    path: Path, probe_set: ProbeSet, model: str, args: argparse.Namespace
) -> tuple[list[str], list[list[str]]]:
    """Bare answers (benign then probes, greedy) and bare samples from an earlier --json."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        run, probes, benign = data["run"], data["probes"], data["benign"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvalError(f"cannot read the baseline {path}: {exc}") from exc
    expected = {"model": model, "max_tokens": args.max_tokens, "samples": args.samples}
    for key, value in expected.items():
        if run.get(key) != value:
            raise EvalError(f"baseline {path} has {key}={run.get(key)!r}, this run {value!r}")
    texts = [p.text for p in probe_set.probes]
    if [p.get("text") for p in probes] != texts or len(benign) != len(probe_set.benign):
        raise EvalError(f"baseline {path} was made from another probe file")
    before = [str(b["before"]) for b in benign] + [str(p["baseline_answer"]) for p in probes]
    samples = [[str(s["answer"]) for s in p["baseline_samples"]] for p in probes]
    return before, samples if args.samples else []


def probe_fluency(probes: list[ProbeResult]) -> tuple[float | None, float | None]:
    """Mean perplexity under the bare model of the answers to flagged probes: the bare model's
    own answers, and the gateway's (gibberish scores far above both)."""
    from adapters.model import load_model
    from adapters.scoring import perplexity
    from app.settings import Settings
    from guards.verdict import ChatTurn

    flagged = [p for p in probes if p.detected]
    if not flagged:
        return None, None
    settings = Settings()
    lm = load_model(settings.model, settings.cache_dir, settings.device)

    def mean(answers: list[tuple[ProbeResult, str]]) -> float:
        scores = [
            perplexity(lm, [ChatTurn(m["role"], str(m["content"])) for m in p.messages], a)
            for p, a in answers
        ]
        return round(sum(scores) / len(scores), 2)

    return mean([(p, p.baseline_answer) for p in flagged]), mean([(p, p.answer) for p in flagged])


def _fail(message: str) -> int:
    sys.stderr.write(f"lethe eval: error: {message}\n")
    return 1


def _cleanup(gateway: EvalGateway, registered: list[str], keep: bool) -> None:
    if keep:
        if registered:
            sys.stderr.write(f"lethe eval: kept targets {', '.join(registered)}\n")
        return
    remaining = list(registered)
    try:
        while remaining:
            try:
                gateway.admin("DELETE", f"/admin/targets/{remaining[0]}", ok=(200, 204, 404))
            except EvalError as exc:
                logger.warning("could not delete target %s: %s", remaining[0], exc)
            remaining.pop(0)
    except KeyboardInterrupt:
        # NOTE: a second Ctrl-C must not strand targets silently on a shared gateway.
        sys.stderr.write(f"lethe eval: cleanup interrupted; still registered: {remaining}\n")


def run_eval(args: argparse.Namespace) -> int:
    """Runs the evaluation described by ``args`` (see :func:`add_eval_arguments`).

    Returns:
        0 on success; 1 on any error (message on stderr, no traceback); 130 when
        interrupted. Targets this run registered are deleted unless ``--keep``.
    """
    started = time.monotonic()
    if not args.admin_token:
        return _fail("no admin token: pass --admin-token or set LETHE_ADMIN_TOKEN")
    try:
        probe_set = load_probe_file(args.data)
    except ProbeFileError as exc:
        return _fail(str(exc))
    gateway = EvalGateway(args)
    pool = ThreadPoolExecutor(max_workers=args.concurrency, thread_name_prefix="lethe-eval")
    registered: list[str] = []
    phases: dict[str, float] = {}
    try:
        probes, benign = _evaluate(gateway, pool, probe_set, args, registered, phases)
    except KeyboardInterrupt:
        sys.stderr.write("lethe eval: interrupted\n")
        return 130
    except EvalError as exc:
        return _fail(str(exc))
    except openai.APIConnectionError as exc:
        return _fail(f"cannot reach the gateway at {gateway.base_url}: {exc}")
    except openai.APIStatusError as exc:
        return _fail(f"chat request failed with HTTP {exc.status_code}: {exc.message}")
    except openai.OpenAIError as exc:
        return _fail(f"chat request failed: {exc}")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        _cleanup(gateway, registered, args.keep)
        gateway.close()
    info = RunInfo(
        data=str(args.data),
        base_url=gateway.base_url,
        model=gateway.model,
        max_tokens=args.max_tokens,
        samples=args.samples,
        concurrency=args.concurrency,
        targets=len(probe_set.targets),
        wall_s=time.monotonic() - started,
        phases_s=phases,
    )
    summary = summarize(probes, benign, args.samples)
    if args.fluency:
        summary.fluency_bare, summary.fluency = probe_fluency(probes)
    sys.stdout.write(format_report(summary, info))
    if args.json is not None:
        try:
            write_json(args.json, summary, info, probes, benign)
        except OSError as exc:
            return _fail(f"cannot write {args.json}: {exc}")
    return 0
