"""Unit tests for guards.index: the faiss vector index of target texts."""

from __future__ import annotations

import numpy as np
import pytest

from guards.index import FaissVectorIndex, Hit, VectorIndex

DIM = 16


def unit(*idx: int) -> np.ndarray:
    """Rows of the identity matrix: orthonormal vectors."""
    return np.eye(DIM, dtype=np.float32)[list(idx)]


def best(index: FaissVectorIndex, query: np.ndarray) -> Hit:
    hits = [h for h in index.search(query, k=DIM) if h.query == 0]
    return max(hits, key=lambda h: h.score)


def test_satisfies_the_protocol() -> None:
    index: VectorIndex = FaissVectorIndex(DIM)
    assert len(index) == 0


def test_empty_index_search_returns_nothing() -> None:
    assert FaissVectorIndex(DIM).search(unit(0), k=4) == []


def test_add_and_search_by_cosine() -> None:
    index = FaissVectorIndex(DIM)
    index.add("a", unit(0, 1))
    index.add("b", unit(2))
    assert len(index) == 3
    hit = best(index, unit(2))
    assert hit.target_id == "b" and hit.score == pytest.approx(1.0)
    mixed = (unit(0) + unit(2)) / np.sqrt(2)
    scores: dict[str, float] = {}
    for h in index.search(mixed.astype(np.float32), k=3):
        scores[h.target_id] = max(h.score, scores.get(h.target_id, -1.0))
    assert scores["a"] == pytest.approx(1 / np.sqrt(2), abs=1e-6)
    assert scores["b"] == pytest.approx(1 / np.sqrt(2), abs=1e-6)


def test_search_reports_query_rows() -> None:
    index = FaissVectorIndex(DIM)
    index.add("a", unit(0))
    index.add("b", unit(1))
    hits = index.search(unit(1, 0), k=1)
    assert [(h.query, h.target_id) for h in hits] == [(0, "b"), (1, "a")]


def test_k_larger_than_index_is_clamped() -> None:
    index = FaissVectorIndex(DIM)
    index.add("a", unit(0))
    hits = index.search(unit(0), k=100)
    assert [h.target_id for h in hits] == ["a"]


def test_adding_again_replaces_the_vectors() -> None:
    index = FaissVectorIndex(DIM)
    index.add("a", unit(0, 1, 2))
    index.add("b", unit(5))
    index.add("a", unit(3))
    assert len(index) == 2
    assert {h.target_id for h in index.search(unit(0), k=DIM) if h.score > 0.5} == set()
    assert best(index, unit(3)).target_id == "a"
    assert best(index, unit(5)).target_id == "b"


def test_remove_drops_only_that_target() -> None:
    index = FaissVectorIndex(DIM)
    index.add("a", unit(0))
    index.add("b", unit(1, 2))
    index.remove("b")
    assert len(index) == 1
    assert {h.target_id for h in index.search(unit(1), k=DIM)} == {"a"}
    index.remove("b")  # unknown ids are ignored
    index.remove("never-added")
    assert len(index) == 1


def test_remove_then_add_again_works() -> None:
    index = FaissVectorIndex(DIM)
    index.add("a", unit(0))
    index.remove("a")
    assert index.search(unit(0), k=1) == []
    index.add("a", unit(4))
    assert best(index, unit(4)).target_id == "a"


def test_wrong_shape_is_rejected() -> None:
    index = FaissVectorIndex(DIM)
    with pytest.raises(ValueError, match="shape"):
        index.add("a", np.ones((2, DIM + 1), dtype=np.float32))
    with pytest.raises(ValueError, match="shape"):
        index.add("a", np.ones(DIM, dtype=np.float32))
    assert len(index) == 0


def test_float64_input_is_accepted() -> None:
    index = FaissVectorIndex(DIM)
    index.add("a", np.eye(DIM)[:1])
    assert best(index, np.eye(DIM)[:1]).score == pytest.approx(1.0)
