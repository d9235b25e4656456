"""Unit tests for guards.vector_blob: a target's vectors shared between replicas."""

from __future__ import annotations

import numpy as np
import pytest

from guards.vector_blob import pack_vectors, texts_digest, unpack_vectors

TEXTS = ["Zorblax Quintavenue", "Who is Zorblax?"]


def vectors() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((2, 8)).astype(np.float32)


def test_round_trip_is_exact() -> None:
    v = vectors()
    got = unpack_vectors(pack_vectors(v, "emb", TEXTS), "emb", TEXTS)
    assert got is not None and got.dtype == np.float32
    assert np.array_equal(got, v)


@pytest.mark.parametrize(
    ("embedder", "texts"),
    [
        ("other-embedder", TEXTS),
        ("emb", [TEXTS[0], "Who is Zorblax"]),  # a text changed
        ("emb", TEXTS[::-1]),  # same texts, other order: rows would be misattributed
        ("emb", TEXTS[:1]),
    ],
)
def test_vectors_of_other_texts_or_embedder_are_stale(embedder: str, texts: list[str]) -> None:
    assert unpack_vectors(pack_vectors(vectors(), "emb", TEXTS), embedder, texts) is None


@pytest.mark.parametrize("blob", [b"", b"garbage", b"LVEC1\x05\x00\x00\x00{bad}", b"LVEC1"])
def test_unreadable_blobs_are_none(blob: bytes) -> None:
    assert unpack_vectors(blob, "emb", TEXTS) is None


def test_truncated_body_is_none() -> None:
    blob = pack_vectors(vectors(), "emb", TEXTS)
    assert unpack_vectors(blob[:-4], "emb", TEXTS) is None


def test_one_vector_per_text_is_required() -> None:
    with pytest.raises(ValueError, match="one vector per text"):
        pack_vectors(vectors(), "emb", TEXTS[:1])


def test_digest_separates_texts_unambiguously() -> None:
    assert texts_digest(["ab", "c"]) != texts_digest(["a", "bc"])
