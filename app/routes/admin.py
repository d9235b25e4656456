"""Admin routes: register, list, inspect and delete targets; classify a conversation; read
which chat requests were intervened on."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Query, Request, Response, UploadFile

from adapters.lora import AdapterError
from app.adapter_upload import read_adapter_files
from app.chat import to_turns
from app.classification import ConversationClassifier
from app.deps import ServicesDep
from app.errors import NotFound, Unavailable, Unprocessable
from app.schemas.admin import (
    AdapterOut,
    CalibrationOut,
    ClassifyRequest,
    ClassifyResponse,
    InterventionList,
    InterventionOut,
    MatchOut,
    SpanOut,
    TargetCreate,
    TargetList,
    TargetOut,
)
from app.schemas.openai import ChatCompletionRequest
from guards.store import StoreUnavailable
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
        created_at=int(target.created_at),
        method=target.method().value,
        calibration=CalibrationOut(
            state=cal.state.value,
            progress=round(cal.progress, 3),
            message=cal.message,
            threshold=round(cal.threshold, 4),
            eco_sigma=cal.eco_sigma,
            steer_strength=cal.steer_strength,
            auto_method=cal.auto_method.value,
            expansion_size=len(cal.expansion),
        ),
        adapter=AdapterOut(
            state=cal.adapter.state.value,
            source=cal.adapter.source or None,
            progress=round(cal.adapter.progress, 3),
            eta_s=cal.adapter.eta_s,
            rank=cal.adapter.rank or None,
            message=cal.adapter.message,
        ),
    )


def _unique(items: list[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


@router.post("/targets", status_code=201)
async def create_target(body: TargetCreate, services: ServicesDep, request: Request) -> TargetOut:
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
    request.state.target_id = target.id  # for the audit record
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
    services.engine.bank.remove(target_id)
    if not removed:
        raise NotFound(f"target {target_id!r} not found", param="target_id")
    return Response(status_code=204)


@router.post("/targets/{target_id}/adapter")
async def upload_adapter(
    target_id: str, files: list[UploadFile], services: ServicesDep, request: Request
) -> TargetOut:
    """Hot-load a PEFT LoRA adapter for a target (multipart `files`: adapter_config.json and
    adapter_model.safetensors, or one zip/tar archive). Used for `lora` and `auto` targets."""
    request.state.target_id = target_id  # for the audit record
    if services.registry.get(target_id) is None:
        raise NotFound(f"target {target_id!r} not found", param="target_id")
    uploaded = [(f.filename or "", await f.read()) for f in files]
    config, tensors = read_adapter_files(uploaded, services.settings.max_adapter_bytes)
    try:
        weights = await anyio.to_thread.run_sync(services.adapters.validate_upload, config, tensors)
    except AdapterError as exc:
        raise Unprocessable(str(exc), param="files") from exc
    target = await services.adapters.install(target_id, weights, source="uploaded")
    if target is None:
        raise NotFound(f"target {target_id!r} not found", param="target_id")
    return target_out(target)


@router.post("/classify")
async def classify(body: ClassifyRequest, services: ServicesDep) -> ClassifyResponse:
    """What the gateway decides for a conversation: the prompt detector, and with `audit` the
    answer audit too (operators only: it names targets)."""
    if body.messages is not None:
        turns = to_turns(
            ChatCompletionRequest(model=services.chat.model_name, messages=body.messages)
        )
    else:
        turns = [ChatTurn("user", body.text or "")]
    classifier = ConversationClassifier(services.engine, services.detector, services.settings)
    result = await classifier.classify(turns, body.audit_max_tokens if body.audit else None)
    verdict = result.verdict
    return ClassifyResponse(
        flagged=verdict.flagged,
        action=verdict.action,
        audited=result.audited,
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


@router.get("/interventions")
async def list_interventions(
    services: ServicesDep,
    after: Annotated[int, Query(ge=0, description="Return records with seq above this.")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    request_id: Annotated[
        str | None, Query(max_length=128, description="Only this X-Request-ID's records.")
    ] = None,
) -> InterventionList:
    """The chat requests the gateway intervened on, oldest first: ids, stage, action and
    target ids, never text. Replicas sharing a registry in Redis share this record; a lone
    gateway keeps it in memory."""
    try:
        page = await anyio.to_thread.run_sync(
            lambda: services.chat.interventions.read(after, limit, request_id)
        )
    except StoreUnavailable as exc:
        raise Unavailable(str(exc)) from exc
    return InterventionList(
        data=[InterventionOut.model_validate(r, from_attributes=True) for r in page.records],
        last_seq=page.last_seq,
        oldest_seq=page.oldest_seq,
        has_more=page.has_more,
    )
