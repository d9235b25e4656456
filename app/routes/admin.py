"""Admin routes: register, list, inspect and delete targets; classify a conversation."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Response

from app.chat import to_turns
from app.deps import ServicesDep
from app.errors import NotFound
from app.schemas.admin import (
    CalibrationOut,
    ClassifyRequest,
    ClassifyResponse,
    MatchOut,
    SpanOut,
    TargetCreate,
    TargetList,
    TargetOut,
)
from app.schemas.openai import ChatCompletionRequest
from guards.targets import Intervention, Target, TargetSpec
from guards.verdict import ChatTurn

router = APIRouter(prefix="/admin", tags=["admin"])


def target_out(target: Target) -> TargetOut:
    """Wire form of a target."""
    spec, cal = target.spec, target.calibration
    return TargetOut(
        id=target.id,
        name=spec.name,
        description=spec.description,
        aliases=list(spec.aliases),
        examples=list(spec.examples),
        redact=list(spec.redact),
        intervention=spec.intervention.value,
        status=target.status,
        created_at=target.created_at,
        calibration=CalibrationOut(
            state=cal.state.value,
            progress=round(cal.progress, 3),
            message=cal.message,
            threshold=round(cal.threshold, 4),
            eco_sigma=cal.eco_sigma,
            expansion_size=len(cal.expansion),
        ),
    )


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@router.post("/targets", status_code=201)
async def create_target(body: TargetCreate, services: ServicesDep) -> TargetOut:
    """Register a target; it is enforced for every request that starts after this returns."""
    spec = TargetSpec(
        name=body.name,
        description=body.description,
        aliases=_unique(body.aliases),
        examples=_unique(body.examples),
        redact=_unique(body.redact),
        intervention=Intervention(body.intervention),
    )
    target = await anyio.to_thread.run_sync(services.registry.add, spec)
    services.calibrator.submit(target.id)
    return target_out(target)


@router.get("/targets")
async def list_targets(services: ServicesDep) -> TargetList:
    """All targets."""
    return TargetList(data=[target_out(t) for t in services.registry.list()])


@router.get("/targets/{target_id}")
async def get_target(target_id: str, services: ServicesDep) -> TargetOut:
    """One target, with its calibration progress."""
    target = services.registry.get(target_id)
    if target is None:
        raise NotFound(f"target {target_id!r} not found", param="target_id")
    return target_out(target)


@router.delete("/targets/{target_id}", status_code=204)
async def delete_target(target_id: str, services: ServicesDep) -> Response:
    """Delete a target; requests that start after this returns are no longer intervened on."""
    removed = await anyio.to_thread.run_sync(services.registry.remove, target_id)
    if not removed:
        raise NotFound(f"target {target_id!r} not found", param="target_id")
    return Response(status_code=204)


@router.post("/classify")
async def classify(body: ClassifyRequest, services: ServicesDep) -> ClassifyResponse:
    """What the detector decides for a conversation (operators only: it names targets)."""
    if body.messages is not None:
        turns = to_turns(
            ChatCompletionRequest(model=services.chat.model_name, messages=body.messages)
        )
    else:
        turns = [ChatTurn("user", body.text or "")]
    verdict = await anyio.to_thread.run_sync(services.detector.inspect, turns)
    return ClassifyResponse(
        flagged=verdict.flagged,
        action=verdict.action,
        matches=[
            MatchOut(
                target_id=m.target_id,
                name=m.name,
                score=m.score,
                source=m.source,
                spans=[SpanOut(message=s.message, start=s.start, end=s.end) for s in m.spans],
            )
            for m in verdict.matches
        ],
    )
