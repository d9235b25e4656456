"""The detector's embedder on ONNX Runtime with int8 weights: ~3x faster per window than torch.

The sentence-transformers model's transformer is exported to ONNX once (torch's exporter),
its weights quantised to int8 (ONNX Runtime's dynamic quantisation) and both files cached
under the cache folder, keyed by the model and the library versions; later starts load the
cached file. Pooling (mean over tokens) and normalisation are done here, as the model's own
modules would. Models whose modules are not Transformer -> mean Pooling -> Normalize are left
to the torch backend (`open_embedder` falls back with a warning).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from guards.embedder import Embedder, NamedEmbedder, SentenceEmbedder, Vectors

logger = logging.getLogger(__name__)

_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class UnsupportedForOnnx(RuntimeError):
    """The model's module stack is not one this exporter reproduces."""


def _check_stack(model: Any) -> None:
    names = [type(module).__name__ for module in model]
    if names[:2] != ["Transformer", "Pooling"] or names[2:] not in ([], ["Normalize"]):
        raise UnsupportedForOnnx(f"modules {names}")
    pooling = model[1]
    mode = getattr(pooling, "pooling_mode", None)  # sentence-transformers 5: one mode name
    if isinstance(mode, str):
        if mode != "mean":
            raise UnsupportedForOnnx(f"pooling mode {mode!r}")
        return
    others = ("cls_token", "max_tokens", "mean_sqrt_len_tokens", "weightedmean_tokens")
    if getattr(pooling, "pooling_mode_mean_tokens", False) is not True or any(
        getattr(pooling, f"pooling_mode_{other}", False) for other in others
    ):
        raise UnsupportedForOnnx("pooling is not a plain mean over tokens")


def _export(model: Any, target: Path) -> None:
    """Write the transformer as int8 ONNX to `target` (atomically)."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    transformer = model[0].auto_model.eval()
    sample = model[0].tokenizer(["hello world"], return_tensors="pt")
    names = [n for n in _INPUTS if n in sample]
    axes = {n: {0: "batch", 1: "tokens"} for n in [*names, "last_hidden_state"]}
    # Private names until the final rename: replicas sharing a cache may export at once.
    unique = uuid.uuid4().hex[:12]
    fp32 = target.with_name(f"{target.stem}.{unique}.fp32.onnx")
    partial = target.with_name(f"{target.stem}.{unique}.tmp.onnx")
    target.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            transformer,
            tuple(sample[n] for n in names),
            str(fp32),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
    try:
        quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8)
        partial.replace(target)
    finally:
        fp32.unlink(missing_ok=True)
        partial.unlink(missing_ok=True)


def _cache_key(spec: str, model: Any) -> str:
    import onnxruntime
    import torch

    config = model[0].auto_model.config.to_json_string()
    parts = [spec, config, torch.__version__, onnxruntime.__version__]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:16]


class OnnxSentenceEmbedder(NamedEmbedder):
    """A sentence-transformers model run by ONNX Runtime with int8 weights; `encode` is
    thread-safe (ONNX Runtime sessions are) and runs concurrent calls in parallel.

    Example:
        >>> emb = OnnxSentenceEmbedder("bundled:all-minilm-l6-v2", Path("/tmp/c"))  # doctest: +SKIP
        >>> emb.encode(["hello"]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(self, spec: str, cache_dir: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        source = SentenceEmbedder(spec)  # tokenizer, config and weights to export
        model = source.model
        _check_stack(model)
        self._tokenizer = model[0].tokenizer
        self._tokenizer_lock = threading.Lock()
        self._max_tokens = int(model.max_seq_length or 256)
        self._dim = source.dim
        self._name = f"{spec}#onnx-int8"
        path = cache_dir / "onnx" / f"embedder-{_cache_key(spec, model)}.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if path.exists():
            try:
                self._session = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # a damaged cache file is rebuilt, not fatal
                logger.warning("cached ONNX embedder %s unreadable (%s): re-exporting", path, exc)
                path.unlink(missing_ok=True)
        if not path.exists():
            logger.info("exporting embedder %s to ONNX int8 (once; cached at %s)", spec, path)
            _export(model, path)
            self._session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        self._inputs = [i.name for i in self._session.get_inputs()]
        logger.info("embedder %s loaded on ONNX Runtime (dim %d)", spec, self._dim)

    def encode(self, texts: list[str]) -> Vectors:
        """Normalised float32 vectors, one row per text.

        One text per run: int8 activations are quantised with one scale per tensor, so in a
        padded batch a text's vector would depend on its neighbours; alone it is the same
        whatever else a request or the corpus holds, and unpadded runs cost no more here.
        """
        out = np.zeros((len(texts), self._dim), dtype=np.float32)
        for row, text in enumerate(texts):
            # A fast tokenizer sets its truncation state per call: concurrent calls can fail
            # with "Already borrowed", so tokenising is serialised (~0.1 ms); the runs are not.
            with self._tokenizer_lock:
                tokens = self._tokenizer(
                    text, truncation=True, max_length=self._max_tokens, return_tensors="np"
                )
            feeds = {n: np.asarray(tokens[n], dtype=np.int64) for n in self._inputs}
            hidden = self._session.run(None, feeds)[0][0]  # [tokens, dim]
            pooled = hidden.mean(axis=0)
            out[row] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return out


def open_embedder(spec: str, backend: str, int8: bool, cache_dir: Path) -> Embedder:
    """The detector's embedder as the settings name it: `onnx` (int8 on ONNX Runtime) or
    `torch` (sentence-transformers, int8 or fp32). A model the ONNX path cannot reproduce
    falls back to torch."""
    if backend == "onnx":
        try:
            return OnnxSentenceEmbedder(spec, cache_dir)
        except UnsupportedForOnnx as exc:
            logger.warning("embedder %s stays on torch (%s)", spec, exc)
    return SentenceEmbedder(spec, int8=int8)
