"""The int8 option of the detector's embedder (real bundled MiniLM)."""

from __future__ import annotations

import numpy as np

from app.settings import Settings
from guards.embedder import SentenceEmbedder

TEXTS = [
    "Who was the first person to walk on the Moon?",
    "What is the capital of Italy?",
    "Who discovered gravity?",
]


def test_int8_vectors_are_normalised_close_to_fp32_and_keyed_apart() -> None:
    embedder = SentenceEmbedder(Settings().embedder, int8=False)
    int8 = SentenceEmbedder(Settings().embedder, int8=True)
    assert int8.name != embedder.name and int8.name.endswith("#int8")
    assert int8.dim == embedder.dim
    q, f = int8.encode(TEXTS), embedder.encode(TEXTS)
    assert np.allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-4)
    cosine = np.sum(q * f, axis=1)
    assert (cosine > 0.9).all()
    assert (cosine < 0.999).all()  # the weights really are quantised
    # Neighbourhoods survive: each text is still nearest to its own fp32 vector.
    assert ((q @ f.T).argmax(axis=1) == np.arange(len(TEXTS))).all()
