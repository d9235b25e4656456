"""Per-target LoRA adapters: background training with progress, uploads, and loading.

A `lora` target is enforced from its 201 on by steering or ECO (`Target.method`); its adapter
is trained here in the background, one at a time (training takes both CPU cores for a few
minutes on the default model), and takes over as soon as it is stored. An uploaded adapter
replaces a trained one, and wins over a training job still running.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

import anyio
import torch

from adapters.engine import Engine, GenerationRequest, SamplingParams
from adapters.lora import LoraWeights, parse_peft
from adapters.lora_training import TrainingConfig, train_adapter
from adapters.prompt import render
from app.settings import Settings
from guards.contrast import forget_questions, ignorance_answers
from guards.registry import Registry
from guards.store import StoreError
from guards.targets import AdapterInfo, AdapterState, Target
from guards.verdict import ChatTurn, Plan

logger = logging.getLogger(__name__)

LORA_ARTIFACT = "lora"


class AdapterTrainer:
    """Queue and worker for adapter jobs; progress and ETA go to the target's calibration."""

    def __init__(self, engine: Engine, registry: Registry, settings: Settings) -> None:
        self.engine = engine
        self.registry = registry
        self.settings = settings
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker (inside the running loop)."""
        self._task = asyncio.create_task(self._worker(), name="lethe-adapter-trainer")

    async def stop(self) -> None:
        """Cancel the worker; a training step in flight finishes in its thread."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def submit(self, target_id: str) -> None:
        """Queue a target's adapter for training."""
        target = self.registry.get(target_id)
        if target is not None and target.calibration.adapter.state is not AdapterState.READY:
            self.registry.update_calibration(
                target_id,
                adapter=AdapterInfo(
                    AdapterState.TRAINING, "trained", 0.0, None, self.settings.lora_rank
                ),
            )
        self._queue.put_nowait(target_id)

    async def _worker(self) -> None:
        while True:
            target_id = await self._queue.get()
            try:
                await self.train(target_id)
            except asyncio.CancelledError:
                raise
            except InterruptedError:
                logger.info("adapter training for %s stopped: target deleted", target_id)
            except Exception as exc:
                logger.exception("adapter training for %s failed", target_id)
                try:
                    self._set(
                        target_id, state=AdapterState.FAILED, message=str(exc)[:200], eta_s=None
                    )
                except StoreError:  # the store is down too: the worker must live on
                    logger.warning("could not record the failed adapter job of %s", target_id)

    def _set(self, target_id: str, **changes: object) -> Target | None:
        target = self.registry.get(target_id)
        if target is None:
            return None
        adapter = replace(target.calibration.adapter, **changes)  # type: ignore[arg-type]
        return self.registry.update_calibration(target_id, adapter=adapter)

    async def _bare_answer(self, question: str) -> str:
        prompt = render(self.engine.loaded.tokenizer, [ChatTurn("user", question)])
        sampling = SamplingParams(max_tokens=self.settings.expansion_max_tokens, temperature=0.0)
        return await self.engine.text_of(GenerationRequest(prompt, Plan(), sampling))

    def _retain_questions(self) -> list[str]:
        prompts = self.registry.corpus.prompts
        step = max(1, len(prompts) // 16)
        return list(prompts[::step][:16])

    async def train(self, target_id: str) -> None:
        """Train, store and load one target's adapter (skipped when one is already ready)."""
        target = self.registry.get(target_id)
        if target is None or target.calibration.adapter.state is AdapterState.READY:
            return
        s = self.settings
        questions = forget_questions(target.spec)
        answers = ignorance_answers()
        forget = [(q, answers[i % len(answers)]) for i, q in enumerate(questions)]
        retain_q = self._retain_questions()
        retain = list(
            zip(
                retain_q,
                await asyncio.gather(*(self._bare_answer(q) for q in retain_q)),
                strict=True,
            )
        )
        self._set(
            target_id, state=AdapterState.TRAINING, source="trained", progress=0.0, rank=s.lora_rank
        )
        loop = asyncio.get_running_loop()
        last = [0.0]

        def progress(done: float, eta: float | None) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0 or done >= 1.0:  # one store write per second at most
                last[0] = now
                loop.call_soon_threadsafe(
                    lambda: self._set(
                        target_id,
                        progress=round(done, 3),
                        eta_s=None if eta is None else round(eta, 1),
                    )
                )

        config = TrainingConfig(
            rank=s.lora_rank,
            alpha=2.0 * s.lora_rank,
            steps=s.lora_steps,
            learning_rate=s.lora_learning_rate,
        )
        weights = await anyio.to_thread.run_sync(
            lambda: train_adapter(
                self.engine.loaded,
                self.engine.patches,
                forget,
                retain,
                config,
                progress=progress,
                cancelled=lambda: self.registry.get(target_id) is None,
            )
        )
        current = self.registry.get(target_id)
        if current is None or current.calibration.adapter.source == "uploaded":
            return  # deleted, or an upload replaced the job meanwhile
        await self.install(target_id, weights, source="trained")

    async def install(self, target_id: str, weights: LoraWeights, source: str) -> Target | None:
        """Store an adapter, load it on this replica and mark it ready; None when the target
        is gone."""
        stored = await anyio.to_thread.run_sync(
            self.registry.put_artifact, target_id, LORA_ARTIFACT, weights.to_bytes()
        )
        if not stored:
            return None
        self.engine.bank.put_lora(target_id, weights)
        return self._set(
            target_id,
            state=AdapterState.READY,
            source=source,
            progress=1.0,
            eta_s=0.0,
            rank=weights.rank,
            message=None,
        )

    def validate_upload(
        self, config: dict[str, object], tensors: dict[str, torch.Tensor]
    ) -> LoraWeights:
        """Check an uploaded PEFT adapter against the served model (raises AdapterError)."""
        return parse_peft(config, tensors, self.engine.loaded.model, self.settings.max_lora_rank)


def load_interventions(
    registry: Registry, engine: Engine, settings: Settings, resubmit: Callable[[str], None]
) -> None:
    """At start-up: load every target's stored steering vectors and adapter into the engine's
    bank, and re-queue adapter jobs a restart interrupted."""
    from adapters.steering import SteeringVectors
    from app.steering_calibration import STEERING_ARTIFACT

    for target in registry.list():
        data = registry.artifact(target.id, STEERING_ARTIFACT)
        if data is not None:
            engine.bank.put_steering(target.id, SteeringVectors.from_bytes(data))
        data = registry.artifact(target.id, LORA_ARTIFACT)
        if data is not None:
            engine.bank.put_lora(
                target.id, LoraWeights.from_bytes(data, engine.loaded.model, settings.max_lora_rank)
            )
        elif target.calibration.adapter.state is AdapterState.TRAINING:
            resubmit(target.id)
