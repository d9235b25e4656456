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


# --- past the exact threshold: an inverted file, rebuilt in the background ---------------------

IVF_DIM = 32


def random_unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, IVF_DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def own_vectors_found(index: FaissVectorIndex, vectors: dict[str, np.ndarray]) -> list[str]:
    """Targets whose first vector does not find that target first, with cosine 1."""
    wrong = []
    for target_id, vecs in vectors.items():
        hits = [h for h in index.search(vecs[:1], k=1) if h.query == 0]
        if not hits or hits[0].target_id != target_id or hits[0].score < 0.999:
            wrong.append(target_id)
    return wrong


def test_ivf_list_count_follows_the_square_root_and_has_training_points() -> None:
    from guards.index import MIN_POINTS_PER_LIST, ivf_lists

    assert ivf_lists(20_001) == 512
    assert ivf_lists(80_000) == 2048
    assert ivf_lists(1_000_000) == 4096
    for n in (100, 1_000, 20_001, 300_000):
        assert n // ivf_lists(n) >= MIN_POINTS_PER_LIST


def test_index_turns_into_an_inverted_file_and_stays_incremental() -> None:
    rng = np.random.default_rng(1)
    index = FaissVectorIndex(IVF_DIM, exact_max=200, nprobe=4, background=False)
    vectors = {f"t{i}": random_unit(rng, 4) for i in range(60)}
    for target_id, vecs in vectors.items():
        index.add(target_id, vecs)
    state = index.describe()
    assert state["kind"] == "ivf" and state["nlist"] >= 2 and state["vectors"] == 240
    assert own_vectors_found(index, vectors) == []
    # Scores stay exact cosines: only which vectors are visited is approximate.
    query = random_unit(rng, 1)
    hit = index.search(query, k=1)[0]
    best = max(float(v @ query[0]) for vecs in vectors.values() for v in vecs)
    assert hit.score <= best + 1e-5
    index.remove("t3")
    index.add("t4", random_unit(rng, 2))  # replaces t4's vectors in place
    assert len(index) == 240 - 4 - 2
    assert all(h.target_id != "t3" for h in index.search(vectors["t3"], k=8))
    assert index.describe()["kind"] == "ivf"


def test_index_turns_exact_again_when_it_shrinks() -> None:
    rng = np.random.default_rng(2)
    index = FaissVectorIndex(IVF_DIM, exact_max=200, background=False)
    vectors = {f"t{i}": random_unit(rng, 5) for i in range(50)}
    for target_id, vecs in vectors.items():
        index.add(target_id, vecs)
    assert index.describe()["kind"] == "ivf"
    for i in range(45):
        index.remove(f"t{i}")
        vectors.pop(f"t{i}")
    assert index.describe()["kind"] == "exact"
    assert len(index) == 25
    assert own_vectors_found(index, vectors) == []


def test_changes_during_background_rebuilds_are_not_lost() -> None:
    """Adds and removes race the rebuild thread; afterwards the index holds exactly the live
    targets' vectors."""
    rng = np.random.default_rng(3)
    index = FaissVectorIndex(IVF_DIM, exact_max=150, nprobe=64, background=True)
    live: dict[str, np.ndarray] = {}
    removed: set[str] = set()
    for i in range(1500):
        target_id = f"t{i}"
        live[target_id] = random_unit(rng, 3)
        index.add(target_id, live[target_id])
        if i % 3 == 0:
            gone = f"t{int(rng.integers(0, i + 1))}"
            if gone in live:
                index.remove(gone)
                live.pop(gone)
                removed.add(gone)
        if i % 5 == 0 and live:
            again = next(iter(live))
            live[again] = random_unit(rng, 2)
            index.add(again, live[again])
    assert index.wait(120)
    state = index.describe()
    assert state["kind"] == "ivf" and not state["rebuilding"]
    assert len(index) == sum(len(v) for v in live.values())
    assert own_vectors_found(index, live) == []
    found = {h.target_id for h in index.search(np.concatenate(list(live.values())), k=4)}
    assert not found & removed
