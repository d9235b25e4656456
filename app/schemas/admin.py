"""Admin API wire format: target registration, listing and classification."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.schemas.openai import ChatMessage

Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Alias = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Example = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
RedactString = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=2, max_length=300)
]


class AdminModel(BaseModel):
    """Admin bodies reject unknown fields: a typo must not silently drop a deletion request."""

    model_config = ConfigDict(extra="forbid")


class TargetCreate(AdminModel):
    """POST /admin/targets body."""

    name: Name
    description: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] = ""
    aliases: list[Alias] = Field(default_factory=list, max_length=64)
    examples: list[Example] = Field(default_factory=list, max_length=64)
    redact: list[RedactString] = Field(default_factory=list, max_length=64)
    intervention: Literal["auto", "eco", "steer", "lora", "refuse"] = "auto"


class SpanOut(BaseModel):
    """A character range inside one message."""

    message: int
    start: int
    end: int


class CalibrationOut(BaseModel):
    """Background refinement of a target after registration."""

    state: Literal["pending", "running", "done", "failed"]
    progress: float
    message: str | None = None
    threshold: float
    eco_sigma: float
    steer_strength: float
    auto_method: str  # what `auto` stands for once calibrated
    expansion_size: int


class AdapterOut(BaseModel):
    """A target's LoRA adapter: its training job or upload."""

    state: Literal["none", "training", "ready", "failed"]
    source: Literal["trained", "uploaded"] | None = None
    progress: float
    eta_s: float | None = None
    rank: int | None = None
    message: str | None = None


class TargetOut(BaseModel):
    """A stored target."""

    id: str
    object: Literal["target"] = "target"
    name: str
    description: str
    aliases: list[str]
    examples: list[str]
    redact: list[str]
    intervention: str
    method: str  # the method enforcing the target now (lora falls back while training)
    status: str
    created_at: int
    calibration: CalibrationOut
    adapter: AdapterOut


class TargetList(BaseModel):
    """GET /admin/targets response."""

    object: Literal["list"] = "list"
    data: list[TargetOut]


class ClassifyRequest(AdminModel):
    """POST /admin/classify body: a conversation or a bare text."""

    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=256)
    text: Annotated[str, StringConstraints(min_length=1, max_length=200_000)] | None = None
    audit: bool = Field(
        default=False,
        description="Also run the answer audit: when the prompt detector leaves the "
        "conversation unflagged, generate the served model's greedy answer and check it for "
        "target names, as a chat request would be (slower: it runs the model).",
    )
    audit_max_tokens: int = Field(
        default=64, ge=1, le=1024, description="Tokens of the audited answer."
    )

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.messages is None) == (self.text is None):
            raise ValueError("give exactly one of 'messages' or 'text'")
        return self


class MatchOut(BaseModel):
    """One target a classified conversation touches."""

    target_id: str
    name: str
    score: float
    source: str
    spans: list[SpanOut]


class ClassifyResponse(BaseModel):
    """POST /admin/classify response."""

    flagged: bool
    matches: list[MatchOut]
    action: str
    audited: bool = Field(
        default=False, description="Whether the served model's answer was generated and audited."
    )


class InterventionOut(BaseModel):
    """One chat request the gateway intervened on (ids only, never text)."""

    seq: int = Field(description="Order of the record on this replica, from 1.")
    created_at: float = Field(description="Unix time of the decision.")
    request_id: str = Field(
        description="The request's X-Request-ID (the client's, else the gateway's)."
    )
    completion_id: str = Field(description="The `id` of the chat completion the client got.")
    stage: Literal["prompt", "answer", "stream"] = Field(
        description="'prompt': the detector flagged the conversation; 'answer': the answer "
        "audit flagged the bare answer, which was generated again with the intervention; "
        "'stream': a streamed choice named a target past the look-ahead and was cut off."
    )
    action: str = Field(description="The intervention applied (eco, steer, lora, refuse, ...).")
    target_ids: list[str]


class InterventionList(BaseModel):
    """GET /admin/interventions response: one page of this replica's record."""

    object: Literal["list"] = "list"
    data: list[InterventionOut]
    last_seq: int = Field(description="The newest record's seq on this replica (0: none yet).")
    oldest_seq: int = Field(
        description="The oldest record still held; records between a reader's `after` and "
        "this were dropped from the bounded record (LETHE_INTERVENTION_LOG_SIZE)."
    )
    has_more: bool
