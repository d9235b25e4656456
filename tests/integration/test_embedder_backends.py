"""The detector's embedder backends: torch int8 and ONNX Runtime int8 (real bundled MiniLM)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from app.settings import Settings
from guards.embedder import SentenceEmbedder
from guards.onnx_embedder import (
    OnnxSentenceEmbedder,
    UnsupportedForOnnx,
    _check_stack,
    open_embedder,
)

TEXTS = [
    "Who was the first person to walk on the Moon?",
    "What is the capital of Italy?",
    "Who discovered gravity?",
]


def test_int8_vectors_are_normalised_close_to_fp32_and_keyed_apart() -> None:
    embedder = SentenceEmbedder(Settings().embedder, int8=False)
    int8 = SentenceEmbedder(Settings().embedder, int8=True)
    assert int8.name != embedder.name and int8.name.endswith("#int8-alone")
    assert int8.dim == embedder.dim
    q, f = int8.encode(TEXTS), embedder.encode(TEXTS)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-4)
    cosine = np.sum(q * f, axis=1)
    assert (cosine > 0.9).all()
    assert (cosine < 0.999).all()  # the weights really are quantised
    # Neighbourhoods survive: each text is still nearest to its own fp32 vector.
    assert ((q @ f.T).argmax(axis=1) == np.arange(len(TEXTS))).all()
    # A text's vector does not depend on the batch it is embedded in.
    alone = np.concatenate([int8.encode([t]) for t in TEXTS])
    assert np.allclose(alone, q, atol=1e-5)


def test_onnx_backend_matches_fp32_is_cached_and_thread_safe(tmp_path: Path) -> None:
    fp32 = SentenceEmbedder(Settings().embedder, int8=False)
    onnx = open_embedder(Settings().embedder, "onnx", int8=True, cache_dir=tmp_path)
    assert isinstance(onnx, OnnxSentenceEmbedder)
    assert onnx.name.endswith("#onnx-int8") and onnx.dim == fp32.dim
    q, f = onnx.encode(TEXTS), fp32.encode(TEXTS)
    assert q.dtype == np.float32 and np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-4)
    cosine = np.sum(q * f, axis=1)
    assert (cosine > 0.9).all() and (cosine < 0.999).all()
    assert ((q @ f.T).argmax(axis=1) == np.arange(len(TEXTS))).all()
    # Padding in a batch does not change a text's vector.
    alone = np.concatenate([onnx.encode([t]) for t in TEXTS])
    assert np.allclose(alone, q, atol=1e-4)
    # The export is cached: a second start loads the same file.
    (exported,) = list((tmp_path / "onnx").glob("*.onnx"))
    stamp = exported.stat().st_mtime_ns
    again = open_embedder(Settings().embedder, "onnx", int8=True, cache_dir=tmp_path)
    assert np.allclose(again.encode(TEXTS), q, atol=1e-6)
    assert exported.stat().st_mtime_ns == stamp
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda t: onnx.encode([t]), TEXTS * 4))
    assert all(np.allclose(r, alone[i % len(TEXTS)], atol=1e-5) for i, r in enumerate(results))


def test_a_damaged_cached_export_is_rebuilt(tmp_path: Path) -> None:
    first = open_embedder(Settings().embedder, "onnx", int8=True, cache_dir=tmp_path)
    (exported,) = list((tmp_path / "onnx").glob("*.onnx"))
    exported.write_bytes(b"not an onnx file")
    again = open_embedder(Settings().embedder, "onnx", int8=True, cache_dir=tmp_path)
    assert np.allclose(again.encode(TEXTS), first.encode(TEXTS), atol=1e-6)
    assert [p.name for p in (tmp_path / "onnx").iterdir()] == [exported.name]  # no leftovers


def test_torch_backend_is_kept_when_asked(tmp_path: Path) -> None:
    embedder = open_embedder(Settings().embedder, "torch", int8=False, cache_dir=tmp_path)
    assert isinstance(embedder, SentenceEmbedder) and not embedder.name.endswith("int8")
    assert not (tmp_path / "onnx").exists()


class Transformer:  # stand-ins named like sentence-transformers' modules
    pass


class Pooling:
    def __init__(self, mode: str | None = None, **flags: bool) -> None:
        if mode is not None:  # sentence-transformers 5
            self.pooling_mode = mode
        self.__dict__.update({f"pooling_mode_{k}": v for k, v in flags.items()})


class Dense:
    pass


@pytest.mark.parametrize(
    "stack",
    [
        [Transformer(), Pooling("cls")],
        [Transformer(), Pooling("mean"), Dense()],
        [Transformer(), Pooling(cls_token=True)],
        [Transformer(), Pooling(mean_tokens=True, max_tokens=True)],
        [Transformer()],
    ],
)
def test_stacks_the_onnx_path_cannot_reproduce_are_refused(stack: list[object]) -> None:
    with pytest.raises(UnsupportedForOnnx):
        _check_stack(stack)


def test_mean_pooled_stacks_are_accepted() -> None:
    normalize = type("Normalize", (), {})()
    _check_stack([Transformer(), Pooling("mean")])
    _check_stack([Transformer(), Pooling(mean_tokens=True), normalize])
