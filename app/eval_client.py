"""The HTTP calls `lethe eval` makes to a gateway: admin API via httpx, chat via openai."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, cast

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from app.eval_pool import Progress
from app.probes import Message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    """Which stage of the gateway's detector flagged a conversation, if any."""

    prompt: bool  # the prompt detector
    answer: bool  # the answer audit (only asked when the prompt detector did not flag)


class EvalError(RuntimeError):
    """The gateway could not be evaluated (unreachable, auth refused, calibration failed...)."""


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200] or response.reason_phrase


class EvalGateway:
    """The HTTP calls `lethe eval` makes: admin API via httpx, chat via the openai client."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.base_url = str(args.base_url).rstrip("/")
        self.model: str = args.model or ""
        self._max_tokens: int = args.max_tokens
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {args.admin_token}"},
            timeout=args.request_timeout,
            transport=httpx.HTTPTransport(retries=2),
        )
        self._chat = openai.OpenAI(
            base_url=self.base_url + "/v1",
            api_key=args.api_key or "none",
            max_retries=2,
            timeout=args.request_timeout,
        )
        self._n_supported = True
        self._n_lock = threading.Lock()

    def close(self) -> None:
        self._http.close()
        self._chat.close()

    def admin(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200,)) -> Any:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise EvalError(f"cannot reach the gateway at {self.base_url}: {exc}") from exc
        if response.status_code in (401, 403):
            raise EvalError(f"admin token rejected (HTTP {response.status_code}) on {path}")
        if response.status_code not in ok:
            detail = _error_detail(response)
            raise EvalError(f"{method} {path} -> HTTP {response.status_code}: {detail}")
        return response.json() if response.content else None

    def prepare(self) -> None:
        """Checks reachability and the admin token, and picks the model."""
        self.classify([{"role": "user", "content": "Hello"}])
        try:
            listed = self.admin("GET", "/admin/targets")
        except EvalError as exc:  # only feeds a warning; classify above proved the basics
            logger.debug("could not list targets: %s", exc)
            listed = None
        existing = listed.get("data") if isinstance(listed, dict) else None
        if existing:
            logger.warning("gateway already has %d targets: answers are not bare", len(existing))
        if not self.model:
            models = self._chat.models.list().data
            if not models:
                raise EvalError("the gateway lists no models; pass --model")
            self.model = models[0].id

    def classify(self, messages: list[Message]) -> Detection:
        """Both stages of the gateway's detector for a conversation: the prompt detector, and
        for what it leaves unflagged, the audit of the greedy answer (as many tokens as the
        eval asks for)."""
        body = {"messages": messages, "audit": True, "audit_max_tokens": self._max_tokens}
        verdict = self.admin("POST", "/admin/classify", body)
        if not isinstance(verdict, dict) or not isinstance(verdict.get("flagged"), bool):
            raise EvalError(f"/admin/classify returned an unexpected body: {verdict!r:.200}")
        if not verdict["flagged"]:
            return Detection(prompt=False, answer=False)
        audited = bool(verdict.get("audited", False))
        return Detection(prompt=not audited, answer=audited)

    def chat(self, messages: list[Message], temperature: float, seed: int, n: int = 1) -> list[str]:
        completion = self._chat.chat.completions.create(
            model=self.model,
            messages=cast("list[ChatCompletionMessageParam]", messages),
            temperature=temperature,
            max_tokens=self._max_tokens,
            seed=seed,
            n=n,
        )
        choices = sorted(completion.choices, key=lambda choice: choice.index)
        return [choice.message.content or "" for choice in choices]

    def greedy(self, messages: list[Message]) -> str:
        return self.chat(messages, temperature=0.0, seed=0)[0]

    def sample(self, messages: list[Message], k: int) -> list[str]:
        """K answers at temperature 1.0: one request with n=K, else one request per seed."""
        if self._n_supported:
            try:
                answers = self.chat(messages, temperature=1.0, seed=1, n=k)
                if len(answers) == k:
                    return answers
                reason = f"{len(answers)} choices returned"
            except openai.BadRequestError as exc:
                reason = exc.message
            with self._n_lock:
                if self._n_supported:
                    self._n_supported = False
                    logger.warning("n=%d not usable (%s); one request per seed", k, reason)
        return [self.chat(messages, temperature=1.0, seed=seed)[0] for seed in range(1, k + 1)]

    def register(self, body: dict[str, Any], intervention: str | None) -> str:
        if intervention is not None:
            body = {**body, "intervention": intervention}
        created = self.admin("POST", "/admin/targets", body, ok=(200, 201))
        if not isinstance(created, dict) or "id" not in created:
            raise EvalError(f"POST /admin/targets returned no id: {created!r:.200}")
        return str(created["id"])

    def wait_calibrated(self, keys_by_id: dict[str, str], timeout: float) -> None:
        """Polls every target until its calibration is done; raises on failure or timeout."""
        deadline = time.monotonic() + timeout
        progress_by_id = dict.fromkeys(keys_by_id, 0.0)
        bar = Progress("calibrating", 100, unit="%")
        try:
            while True:
                for target_id in [t for t, p in progress_by_id.items() if p < 1.0]:
                    target = self.admin("GET", f"/admin/targets/{target_id}")
                    # A gateway that reports no calibration has nothing to wait for.
                    calibration = target.get("calibration") if isinstance(target, dict) else None
                    if not isinstance(calibration, dict):
                        calibration = {"state": "done"}
                    state = calibration.get("state")
                    adapter = target.get("adapter") if isinstance(target, dict) else None
                    adapter = adapter if isinstance(adapter, dict) else {"state": "none"}
                    for job, what in ((calibration, "calibration"), (adapter, "adapter")):
                        if job.get("state") == "failed":
                            message = job.get("message") or "no message"
                            key = keys_by_id[target_id]
                            raise EvalError(f"{what} of target {key!r} failed: {message}")
                    fraction = min(float(calibration.get("progress") or 0.0), 0.99)
                    if adapter.get("state") == "training":  # a lora target: wait for it
                        state = "training"
                        fraction = 0.5 + 0.49 * float(adapter.get("progress") or 0.0)
                    progress_by_id[target_id] = 1.0 if state == "done" else fraction
                bar.update_to(int(100 * sum(progress_by_id.values()) / len(progress_by_id)))
                if all(p >= 1.0 for p in progress_by_id.values()):
                    return
                if time.monotonic() > deadline:
                    pending = [keys_by_id[t] for t, p in progress_by_id.items() if p < 1.0]
                    raise EvalError(f"calibration not done after {timeout:g} s: {pending}")
                time.sleep(1.0)
        finally:
            bar.close()
