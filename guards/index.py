"""Vector index of target texts: `VectorIndex` is the contract, faiss the implementation."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Protocol

import faiss
import numpy as np

from guards.embedder import Vectors


@dataclass(frozen=True)
class Hit:
    """One nearest target vector for one query row."""

    query: int  # row of the query matrix
    target_id: str
    score: float  # cosine similarity


class VectorIndex(Protocol):
    """Add/remove vectors per target and search by cosine."""

    def add(self, target_id: str, vectors: Vectors) -> None: ...
    def remove(self, target_id: str) -> None: ...
    def search(self, queries: Vectors, k: int) -> list[Hit]: ...
    def __len__(self) -> int: ...


class FaissVectorIndex:
    """Exact inner-product search (vectors are normalised, so scores are cosines).

    An `IndexIDMap2` over `IndexFlatIP` adds and removes by id without a rebuild.

    Example:
        >>> idx = FaissVectorIndex(384)
        >>> idx.add("t1", np.eye(384, dtype=np.float32)[:2])
        >>> idx.search(np.eye(384, dtype=np.float32)[:1], k=1)[0].target_id
        't1'
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._lock = threading.Lock()
        self._next_id = 0
        self._owner: dict[int, str] = {}  # faiss id -> target id
        self._ids_of: dict[str, np.ndarray] = {}  # target id -> faiss ids

    def add(self, target_id: str, vectors: Vectors) -> None:
        """Index a target's vectors; adding again replaces them."""
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [n, {self.dim}], got {vecs.shape}")
        with self._lock:
            self._remove_locked(target_id)
            ids = np.arange(self._next_id, self._next_id + len(vecs), dtype=np.int64)
            self._next_id += len(vecs)
            self._index.add_with_ids(vecs, ids)
            self._ids_of[target_id] = ids
            for i in ids.tolist():
                self._owner[i] = target_id

    def _remove_locked(self, target_id: str) -> None:
        ids = self._ids_of.pop(target_id, None)
        if ids is None:
            return
        self._index.remove_ids(ids)  # type: ignore[arg-type]  # faiss accepts id arrays
        for i in ids.tolist():
            self._owner.pop(i, None)

    def remove(self, target_id: str) -> None:
        """Drop a target's vectors; unknown ids are ignored."""
        with self._lock:
            self._remove_locked(target_id)

    def search(self, queries: Vectors, k: int) -> list[Hit]:
        """The k nearest vectors per query row, as hits."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        with self._lock:
            if self._index.ntotal == 0 or len(q) == 0:
                return []
            scores, ids = self._index.search(q, min(k, self._index.ntotal))
            hits: list[Hit] = []
            for row in range(len(q)):
                for score, fid in zip(scores[row].tolist(), ids[row].tolist(), strict=True):
                    owner = self._owner.get(fid)
                    if owner is not None:
                        hits.append(Hit(query=row, target_id=owner, score=float(score)))
        return hits

    def __len__(self) -> int:
        with self._lock:
            return int(self._index.ntotal)
