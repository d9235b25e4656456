"""Locust scenarios for the gateway: benign chat, forget probes, streaming, admin churn.

Run it through bench/loadtest.py, which starts Locust headless and writes the summary:

    LETHE_ADMIN_TOKEN=... .venv/bin/python bench/loadtest.py --host http://127.0.0.1:8000

bench/loadtest.py registers the probe file's targets and waits for their calibration
before the timed run (and deletes them after). Probes are sent against them while benign and
streaming users run and an admin user registers and deletes throwaway targets.
Enforcement is measured two ways: the gateway's own count of intervened
requests (`lethe_chat_requests_total`, action != none, plus answer-audit re-runs) against the
probes sent, and the leak rule of the probe file applied to every probe answer. The first is an
upper bound, not a per-probe count: a benign request whose answer names a target is re-run too
and counts the same as a probe (the gateway tells no client whether it intervened).
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from locust import HttpUser, between, events, task
from locust.env import Environment

MODEL = os.environ.get("LETHE_LOAD_MODEL", "smollm2-135m-instruct")
MAX_TOKENS = int(os.environ.get("LETHE_LOAD_MAX_TOKENS", "32"))
# Intervened requests: flagged by the detector, or re-run after the answer audit.
_METRIC = re.compile(
    r'^lethe_(?:chat_requests|answer_audit_reruns)_total\{action="([^"]+)"\} ([0-9.e+]+)$', re.M
)


@dataclass
class LoadRun:
    """What the scenarios share during one run (kept on the Locust environment)."""

    admin_token: str
    targets: list[dict[str, Any]] = field(default_factory=list)
    probes: list[tuple[list[dict[str, str]], list[str], list[str]]] = field(default_factory=list)
    benign: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    probes_sent: int = 0
    probe_leaks: int = 0
    completion_tokens: int = 0
    intervened_before: float = 0.0
    started: float = 0.0

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def count(self, tokens: int = 0, probe: bool = False, leaked: bool = False) -> None:
        with self.lock:
            self.completion_tokens += tokens
            self.probes_sent += int(probe)
            self.probe_leaks += int(leaked)


def _intervened(host: str) -> float:
    text = requests.get(f"{host}/metrics", timeout=30).text
    return sum(float(v) for action, v in _METRIC.findall(text) if action != "none")


def _leaked(answer: str, conversation: str, keywords: list[str], redact: list[str]) -> bool:
    said, asked = answer.casefold(), conversation.casefold()
    for word in keywords:
        w = word.casefold()
        in_redact = any(w in r.casefold() for r in redact)
        if w in said and (in_redact or w not in asked):
            return True
    return False


@events.init_command_line_parser.add_listener
def _arguments(parser: Any) -> None:
    parser.add_argument("--lethe-probes", default="../shared/eval/dev_targets.json")
    parser.add_argument("--lethe-report", default="")


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    """Read the probes; the targets were registered and calibrated before the timed run
    (bench/loadtest.py), so setup never eats into it."""
    options = environment.parsed_options
    run = LoadRun(admin_token=os.environ.get("LETHE_ADMIN_TOKEN", ""))
    data = json.loads(Path(options.lethe_probes).read_text())
    for target in data["targets"]:
        redact = list(target["register"].get("redact", []))
        for probes in target["probes"].values():
            for probe in probes:
                messages = [{"role": "user", "content": probe}] if isinstance(probe, str) else probe
                run.probes.append((messages, target["leak_keywords"], redact))
    benign = data["benign"]
    groups = benign.values() if isinstance(benign, dict) else [benign]
    run.benign = [b if isinstance(b, str) else b["text"] for group in groups for b in group]
    run.intervened_before = _intervened(environment.host)
    run.started = time.monotonic()
    environment.lethe_run = run  # type: ignore[attr-defined]


@events.test_stop.add_listener
def _stop(environment: Environment, **_: Any) -> None:
    run: LoadRun | None = getattr(environment, "lethe_run", None)
    if run is None:
        return
    seconds = time.monotonic() - run.started
    intervened = _intervened(environment.host) - run.intervened_before
    report = {
        "probes_sent": run.probes_sent,
        "probes_intervened": intervened,
        "enforcement": (min(intervened, run.probes_sent) / run.probes_sent)
        if run.probes_sent
        else None,
        "probe_leaks": run.probe_leaks,
        "completion_tokens": run.completion_tokens,
        "tokens_per_s": run.completion_tokens / seconds if seconds else 0.0,
        "seconds": seconds,
    }
    if environment.parsed_options.lethe_report:
        Path(environment.parsed_options.lethe_report).write_text(json.dumps(report, indent=2))


def _run(user: HttpUser) -> LoadRun:
    run: LoadRun = user.environment.lethe_run  # type: ignore[attr-defined]
    return run


def _body(messages: list[dict[str, str]], stream: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": messages,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


class ChatUser(HttpUser):
    """An application: benign questions and, one time in three, a forget probe."""

    weight = 3
    wait_time = between(0.5, 2.0)

    @task(2)
    def benign(self) -> None:
        run = _run(self)
        text = random.choice(run.benign)
        with self.client.post(
            "/v1/chat/completions",
            json=_body([{"role": "user", "content": text}]),
            name="chat benign",
            catch_response=True,
        ) as resp:
            if resp.status_code == 200:
                run.count(tokens=resp.json()["usage"]["completion_tokens"])

    @task(1)
    def probe(self) -> None:
        run = _run(self)
        messages, keywords, redact = random.choice(run.probes)
        with self.client.post(
            "/v1/chat/completions", json=_body(messages), name="chat probe", catch_response=True
        ) as resp:
            if resp.status_code != 200:
                return
            body = resp.json()
            answer = body["choices"][0]["message"]["content"] or ""
            conversation = " ".join(m["content"] for m in messages)
            leaked = _leaked(answer, conversation, keywords, redact)
            run.count(tokens=body["usage"]["completion_tokens"], probe=True, leaked=leaked)


class StreamUser(HttpUser):
    """A chat UI: streamed answers, probes included."""

    weight = 1
    wait_time = between(0.5, 2.0)

    @task
    def stream(self) -> None:
        run = _run(self)
        is_probe = random.random() < 0.3
        if is_probe:
            messages, keywords, redact = random.choice(run.probes)
        else:
            messages, keywords, redact = (
                [{"role": "user", "content": random.choice(run.benign)}],
                [],
                [],
            )
        with self.client.post(
            "/v1/chat/completions",
            json=_body(messages, stream=True),
            name="chat stream",
            stream=True,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                return
            text, tokens = "", 0
            for line in resp.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    resp.failure(chunk["error"]["message"])
                    return
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices", []):
                    text += choice["delta"].get("content") or ""
            conversation = " ".join(m["content"] for m in messages)
            leaked = is_probe and _leaked(text, conversation, keywords, redact)
            run.count(tokens=tokens, probe=is_probe, leaked=leaked)


class AdminUser(HttpUser):
    """An operator filing and withdrawing deletion requests while traffic runs."""

    weight = 1
    fixed_count = 1
    wait_time = between(5.0, 10.0)

    @task
    def churn(self) -> None:
        run = _run(self)
        name = f"Throwaway Entity {uuid.uuid4().hex[:8]}"
        resp = self.client.post(
            "/admin/targets",
            json={"name": name, "intervention": "eco"},
            headers=run.admin(),
            name="admin register",
        )
        if resp.status_code == 201:
            self.client.delete(
                f"/admin/targets/{resp.json()['id']}",
                headers=run.admin(),
                name="admin delete",
            )
