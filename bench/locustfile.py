"""Locust scenarios for the gateway: benign chat, forget probes, streaming, admin churn.

Run it through bench/loadtest.py, which starts Locust headless and writes the summary:

    LETHE_ADMIN_TOKEN=... .venv/bin/python bench/loadtest.py --host http://127.0.0.1:8000

bench/loadtest.py registers the probe file's targets and waits for their calibration
before the timed run (and deletes them after). Probes are sent against them while benign and
streaming users run and an admin user registers and deletes throwaway targets.
Enforcement is measured per request and two ways. Every chat request carries its own
X-Request-ID (`lt-<run>-p<n>` for a probe, `lt-<run>-b<n>` for a benign question); after the
run the operator's record of intervened requests (`GET /admin/interventions`: shared by
replicas on one Redis; `--lethe-replicas` names gateways that keep their own) says which of
them the gateway acted on, at which stage. A probe
counts as enforced when its id is in the record; a benign request in the record is a false
positive under load. Second, the probe file's leak rule is applied to every probe answer.
"""

from __future__ import annotations

import json
import os
import random
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
Probe = tuple[list[dict[str, str]], list[str], list[str]]  # messages, leak keywords, redact


@dataclass
class LoadRun:
    """What the scenarios share during one run (kept on the Locust environment)."""

    admin_token: str
    replicas: list[str]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    probes: list[Probe] = field(default_factory=list)
    benign: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: int = 0
    probe_ids: dict[str, int] = field(default_factory=dict)  # request id -> probe index
    benign_ids: set[str] = field(default_factory=set)
    probe_leaks: int = 0
    completion_tokens: int = 0
    record_after: dict[str, int] = field(default_factory=dict)  # replica -> last seq seen
    started: float = 0.0

    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def next_id(self, probe: bool) -> str:
        with self.lock:
            self.sent += 1
            return f"lt-{self.run_id}-{'p' if probe else 'b'}{self.sent}"

    def count(
        self, request_id: str, tokens: int, probe: int | None = None, leaked: bool = False
    ) -> None:
        """An answered request; `probe` is the probe's index, None for a benign question."""
        with self.lock:
            self.completion_tokens += tokens
            if probe is None:
                self.benign_ids.add(request_id)
            else:
                self.probe_ids[request_id] = probe
                self.probe_leaks += int(leaked)


def _record(run: LoadRun, replica: str, after: int) -> list[dict[str, Any]]:
    """The replica's intervention records after `after` (pages through)."""
    records: list[dict[str, Any]] = []
    while True:
        resp = requests.get(
            f"{replica}/admin/interventions",
            params={"after": after, "limit": 1000},
            headers=run.admin(),
            timeout=30,
        )
        resp.raise_for_status()
        page = resp.json()
        if page["oldest_seq"] > after + 1:
            # Enforcement would be undercounted: say so rather than report a wrong figure.
            raise RuntimeError(
                f"{replica} dropped intervention records; raise LETHE_INTERVENTION_LOG_SIZE"
            )
        records += page["data"]
        if page["data"]:
            after = page["data"][-1]["seq"]
        if not page["has_more"]:
            return records


def _last_seq(run: LoadRun, replica: str) -> int:
    resp = requests.get(
        f"{replica}/admin/interventions", params={"limit": 1}, headers=run.admin(), timeout=30
    )
    resp.raise_for_status()
    return int(resp.json()["last_seq"])


def _enforcement(run: LoadRun) -> dict[str, Any]:
    """Per-request enforcement from the replicas' records of intervened requests."""
    stages: dict[str, str] = {}
    for replica in run.replicas:
        records = _record(run, replica, run.record_after.get(replica, 0))
        for rec in records:
            stages.setdefault(rec["request_id"], rec["stage"])
    sent: dict[int, int] = {}
    missed: dict[int, int] = {}
    by_stage: dict[str, int] = {}
    for request_id, index in run.probe_ids.items():
        sent[index] = sent.get(index, 0) + 1
        stage = stages.get(request_id)
        if stage is None:
            missed[index] = missed.get(index, 0) + 1
        else:
            by_stage[stage] = by_stage.get(stage, 0) + 1
    probes = len(run.probe_ids)
    enforced = probes - sum(missed.values())
    return {
        "probes_sent": probes,
        "probes_intervened": enforced,
        "enforcement": enforced / probes if probes else None,
        "probes_by_stage": by_stage,
        "missed_probes": [
            {
                "probe": " / ".join(m["content"] for m in run.probes[i][0])[:120],
                "missed": n,
                "sent": sent[i],
            }
            for i, n in sorted(missed.items(), key=lambda kv: -kv[1])
        ],
        "benign_sent": len(run.benign_ids),
        "benign_intervened": sum(1 for r in run.benign_ids if r in stages),
    }


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
    parser.add_argument(
        "--lethe-replicas",
        default="",
        help="Comma-separated base URLs of gateways whose records of intervened requests to "
        "read (replicas on one Redis share theirs); default: --host itself.",
    )


@events.test_start.add_listener
def _start(environment: Environment, **_: Any) -> None:
    """Read the probes; the targets were registered and calibrated before the timed run
    (bench/loadtest.py), so setup never eats into it."""
    options = environment.parsed_options
    replicas = [r.strip().rstrip("/") for r in options.lethe_replicas.split(",") if r.strip()]
    run = LoadRun(
        admin_token=os.environ.get("LETHE_ADMIN_TOKEN", ""),
        replicas=replicas or [environment.host.rstrip("/")],
    )
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
    for replica in run.replicas:
        run.record_after[replica] = _last_seq(run, replica)
    run.started = time.monotonic()
    environment.lethe_run = run  # type: ignore[attr-defined]


@events.test_stop.add_listener
def _stop(environment: Environment, **_: Any) -> None:
    run: LoadRun | None = getattr(environment, "lethe_run", None)
    if run is None:
        return
    seconds = time.monotonic() - run.started
    report = {
        **_enforcement(run),
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
        request_id = run.next_id(probe=False)
        with self.client.post(
            "/v1/chat/completions",
            json=_body([{"role": "user", "content": text}]),
            headers={"X-Request-ID": request_id},
            name="chat benign",
            catch_response=True,
        ) as resp:
            if resp.status_code == 200:
                run.count(request_id, resp.json()["usage"]["completion_tokens"])

    @task(1)
    def probe(self) -> None:
        run = _run(self)
        index = random.randrange(len(run.probes))
        messages, keywords, redact = run.probes[index]
        request_id = run.next_id(probe=True)
        with self.client.post(
            "/v1/chat/completions",
            json=_body(messages),
            headers={"X-Request-ID": request_id},
            name="chat probe",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                return
            body = resp.json()
            answer = body["choices"][0]["message"]["content"] or ""
            conversation = " ".join(m["content"] for m in messages)
            leaked = _leaked(answer, conversation, keywords, redact)
            run.count(request_id, body["usage"]["completion_tokens"], index, leaked)


class StreamUser(HttpUser):
    """A chat UI: streamed answers, probes included."""

    weight = 1
    wait_time = between(0.5, 2.0)

    @task
    def stream(self) -> None:
        run = _run(self)
        index = random.randrange(len(run.probes)) if random.random() < 0.3 else None
        if index is not None:
            messages, keywords, redact = run.probes[index]
        else:
            messages, keywords, redact = (
                [{"role": "user", "content": random.choice(run.benign)}],
                [],
                [],
            )
        request_id = run.next_id(probe=index is not None)
        with self.client.post(
            "/v1/chat/completions",
            json=_body(messages, stream=True),
            headers={"X-Request-ID": request_id},
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
            leaked = index is not None and _leaked(text, conversation, keywords, redact)
            run.count(request_id, tokens, index, leaked)


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
