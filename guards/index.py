"""Vector index of target texts: `VectorIndex` is the contract, faiss the implementation."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import faiss
import numpy as np
import numpy.typing as npt

from guards.embedder import Vectors

logger = logging.getLogger(__name__)

Ids = npt.NDArray[np.int64]

# Measured on 2 CPU cores with 384-dim MiniLM-like vectors (docs/benchmarks.md, "Shared
# registry"; `bench/registry.py index`): exact search of one request's windows (4 queries)
# costs ~0.3 ms per 1,000 vectors, so ~6 ms at 20,000 and ~300 ms at 1M; an inverted file with
# 4,096 lists and 32 probes answers at 1M in ~3 ms (p99 5 ms) and returns the exact nearest
# vector for every test query (cosine ~0.6), while exact search stays exact and training-free.
EXACT_MAX_VECTORS = 20_000
DEFAULT_NPROBE = 32
GROWTH = 4  # retrain when the index has grown (or shrunk) this many times since its training
MIN_POINTS_PER_LIST = 39  # faiss's own floor for a meaningful k-means training set
TRAIN_POINTS_PER_LIST = 32  # k-means sample per list (faiss subsamples with a fixed seed)
TRAIN_ITERATIONS = 10


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


def ivf_lists(n: int) -> int:
    """Inverted lists for an index of `n` vectors: a power of two near 4·sqrt(2n).

    2n because the index keeps these lists until it has grown GROWTH-fold, and sqrt(N) lists
    balance the coarse search (nlist centroids) against the list scans (N·nprobe/nlist).
    Never more than n / MIN_POINTS_PER_LIST, so every list has training points.
    """
    if n < MIN_POINTS_PER_LIST * 2:
        return 1
    wanted = 2 ** round(math.log2(4 * math.sqrt(2 * n)))
    ceiling = 2 ** int(math.log2(n // MIN_POINTS_PER_LIST))
    return int(max(1, min(wanted, ceiling)))


_DIRECT_MAP_HASHTABLE: int = faiss.DirectMap.Hashtable  # type: ignore[attr-defined]


def _exact(dim: int) -> Any:
    return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))


class FaissVectorIndex:
    """Cosine search (vectors are normalised, so inner products) from ten vectors to millions.

    Up to `exact_max` vectors the index is exact: an `IndexIDMap2` over `IndexFlatIP`. Past it
    the index becomes an inverted file (`IndexIVFFlat`, k-means lists trained on the vectors
    themselves, a hashtable direct map so `remove_ids` costs O(removed)); it is retrained when
    it has grown GROWTH-fold since its training and turns exact again once it shrinks below
    exact_max / GROWTH. Adds and removes are incremental in both forms.

    Rebuilds run in a background thread: the current index keeps answering meanwhile, and every
    add and remove made during the rebuild is replayed on the new index before it is swapped
    in. Scores are exact cosines in both forms; the inverted file is approximate only in which
    vectors a query visits (`nprobe` nearest lists).

    Example:
        >>> idx = FaissVectorIndex(384)
        >>> idx.add("t1", np.eye(384, dtype=np.float32)[:2])
        >>> idx.search(np.eye(384, dtype=np.float32)[:1], k=1)[0].target_id
        't1'
    """

    def __init__(
        self,
        dim: int,
        *,
        exact_max: int = EXACT_MAX_VECTORS,
        nprobe: int = DEFAULT_NPROBE,
        background: bool = True,
        search_threads: int = 1,
        build_threads: int = 1,
    ) -> None:
        self.dim = dim
        self.exact_max = exact_max
        self.nprobe = max(1, nprobe)
        self.background = background
        # NOTE: faiss's OpenMP thread count is per calling thread. One thread per search is
        # faster on a loaded 2-core machine (a parallel region waits for a free core: 8 ms
        # instead of 0.6 ms per search in our measurements); concurrency comes from requests.
        self.search_threads = search_threads
        self.build_threads = build_threads
        self._lock = threading.Lock()
        self._index: Any = _exact(dim)
        self._nlist = 0  # 0: exact
        self._trained_n = 0  # vectors when the current inverted file was trained
        self._next_id = 0
        self._owner: dict[int, str] = {}  # faiss id -> target id
        self._ids_of: dict[str, Ids] = {}  # target id -> faiss ids
        # While a rebuild runs: every change made to the live index, replayed on the new one.
        self._journal: list[tuple[Ids, Vectors | None]] | None = None
        self._idle = threading.Event()
        self._idle.set()

    # --- writes -----------------------------------------------------------------------
    def add(self, target_id: str, vectors: Vectors) -> None:
        """Index a target's vectors; adding again replaces them."""
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or vecs.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape [n, {self.dim}], got {vecs.shape}")
        with self._lock:
            self._remove_locked(target_id)
            ids = np.arange(self._next_id, self._next_id + len(vecs), dtype=np.int64)
            self._next_id += len(vecs)
            if len(vecs):
                self._index.add_with_ids(vecs, ids)
                if self._journal is not None:
                    self._journal.append((ids, vecs))
            self._ids_of[target_id] = ids
            for i in ids.tolist():
                self._owner[i] = target_id
            self._maybe_rebuild_locked()

    def _remove_locked(self, target_id: str) -> None:
        ids = self._ids_of.pop(target_id, None)
        if ids is None:
            return
        if len(ids):
            self._index.remove_ids(ids)
            if self._journal is not None:
                self._journal.append((ids, None))
        for i in ids.tolist():
            self._owner.pop(i, None)

    def remove(self, target_id: str) -> None:
        """Drop a target's vectors; unknown ids are ignored."""
        with self._lock:
            self._remove_locked(target_id)
            self._maybe_rebuild_locked()

    # --- reads ------------------------------------------------------------------------
    def search(self, queries: Vectors, k: int) -> list[Hit]:
        """The k nearest vectors per query row, as hits."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        faiss.omp_set_num_threads(self.search_threads)
        with self._lock:
            if self._index.ntotal == 0 or len(q) == 0:
                return []
            scores, ids = self._index.search(q, min(k, int(self._index.ntotal)))
            hits: list[Hit] = []
            for row in range(len(q)):
                for score, fid in zip(scores[row].tolist(), ids[row].tolist(), strict=True):
                    owner = self._owner.get(fid)  # -1 (fewer hits than k) has no owner
                    if owner is not None:
                        hits.append(Hit(query=row, target_id=owner, score=float(score)))
        return hits

    def __len__(self) -> int:
        with self._lock:
            return int(self._index.ntotal)

    def describe(self) -> dict[str, Any]:
        """What the index is now: its form, size and search breadth (for /health and benches)."""
        with self._lock:
            return {
                "kind": "exact" if self._nlist == 0 else "ivf",
                "vectors": int(self._index.ntotal),
                "nlist": self._nlist,
                "nprobe": min(self.nprobe, self._nlist) if self._nlist else 0,
                "rebuilding": self._journal is not None,
            }

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no rebuild is running; False on timeout."""
        return self._idle.wait(timeout)

    # --- rebuilds -----------------------------------------------------------------------
    def _wanted_lists(self, n: int) -> int:
        if self._nlist == 0:
            return ivf_lists(n) if n > self.exact_max else 0
        if n < self.exact_max // GROWTH:
            return 0
        if n >= GROWTH * self._trained_n or n * GROWTH <= self._trained_n:
            return ivf_lists(n)
        return self._nlist

    def _maybe_rebuild_locked(self) -> None:
        if self._journal is not None:
            return  # one at a time; the finished rebuild checks again
        n = int(self._index.ntotal)
        nlist = self._wanted_lists(n)
        if nlist == self._nlist:
            return
        self._journal = []
        self._idle.clear()
        if self.background:
            threading.Thread(
                target=self._rebuild, args=(nlist,), name="lethe-index-rebuild", daemon=True
            ).start()
        else:
            self._lock.release()  # the rebuild takes the lock itself, as in the background
            try:
                self._rebuild(nlist)
            finally:
                self._lock.acquire()

    def _snapshot(self) -> tuple[Ids, Vectors]:
        """Every (id, vector) of the live index. Exact indexes are copied in one go (they are
        small); inverted files list by list, so searches are never held up for long: a change
        that lands between two lists is in the journal, and replaying it is idempotent."""
        with self._lock:
            index = self._index
            if self._nlist == 0:
                n = int(index.ntotal)
                ids = faiss.vector_to_array(index.id_map).astype(np.int64)
                vecs = index.index.reconstruct_n(0, n) if n else np.zeros((0, self.dim))
                return ids, np.ascontiguousarray(vecs, dtype=np.float32)
        id_parts: list[Ids] = []
        vec_parts: list[Vectors] = []
        invlists = index.invlists
        for lst in range(index.nlist):
            with self._lock:
                size = int(invlists.list_size(lst))
                if size == 0:
                    continue
                id_parts.append(faiss.rev_swig_ptr(invlists.get_ids(lst), size).copy())
                raw = faiss.rev_swig_ptr(invlists.get_codes(lst), size * invlists.code_size)
                vec_parts.append(raw.copy().view(np.float32).reshape(size, self.dim))
        if not id_parts:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(id_parts).astype(np.int64), np.concatenate(vec_parts)

    def _build(self, nlist: int, ids: Ids, vecs: Vectors) -> Any:
        if nlist == 0:
            exact = _exact(self.dim)
            if len(ids):
                exact.add_with_ids(vecs, ids)
            return exact
        ivf: Any = faiss.index_factory(self.dim, f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = TRAIN_ITERATIONS
        ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
        ivf.train(vecs)
        ivf.set_direct_map_type(_DIRECT_MAP_HASHTABLE)  # remove_ids in O(removed)
        ivf.add_with_ids(vecs, ids)
        ivf.nprobe = min(self.nprobe, nlist)
        return ivf

    def _rebuild(self, nlist: int) -> None:
        faiss.omp_set_num_threads(self.build_threads)
        started = time.perf_counter()
        try:
            ids, vecs = self._snapshot()
            new = self._build(nlist, ids, vecs)
        except Exception:
            logger.exception("vector index rebuild (%d lists) failed; keeping the old one", nlist)
            with self._lock:
                self._journal = None
                self._idle.set()
            return
        with self._lock:
            for op_ids, op_vecs in self._journal or []:
                new.remove_ids(op_ids)  # idempotent: the snapshot may already hold this change
                if op_vecs is not None:
                    new.add_with_ids(op_vecs, op_ids)
            self._index = new
            self._nlist = nlist
            self._trained_n = len(ids)
            self._journal = None
            logger.info(
                "vector index rebuilt: %s, %d vectors, %.1f s",
                f"inverted file with {nlist} lists" if nlist else "exact",
                int(new.ntotal),
                time.perf_counter() - started,
            )
            self._maybe_rebuild_locked()
            if self._journal is None:
                self._idle.set()
