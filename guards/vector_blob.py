"""A target's index vectors as bytes, tagged with what they embed, so replicas can share them.

A shared registry stores each target's vectors next to the target: a replica that receives a
change indexes them without running the embedder, and a new replica starts without embedding
the whole registry. The tag (embedder name and a digest of the texts) makes stale vectors
detectable: a replica with another embedder, or vectors of older texts, embeds them itself.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np

from guards.embedder import Vectors

MAGIC = b"LVEC1"
_HEADER_LEN = struct.Struct("<I")


def texts_digest(texts: list[str]) -> str:
    """A digest of the texts the vectors embed, in order."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:32]


def pack_vectors(vectors: Vectors, embedder: str, texts: list[str]) -> bytes:
    """Vectors of `texts` by `embedder`, as bytes.

    Example:
        >>> blob = pack_vectors(np.eye(2, dtype=np.float32), "e", ["a", "b"])
        >>> unpack_vectors(blob, "e", ["a", "b"]).shape
        (2, 2)
        >>> unpack_vectors(blob, "e", ["a", "c"]) is None  # other texts: stale
        True
    """
    vecs = np.ascontiguousarray(vectors, dtype="<f4")
    if vecs.ndim != 2 or len(vecs) != len(texts):
        raise ValueError(f"expected one vector per text, got {vecs.shape} for {len(texts)} texts")
    header = json.dumps(
        {
            "embedder": embedder,
            "digest": texts_digest(texts),
            "rows": vecs.shape[0],
            "dim": vecs.shape[1],
        },
        separators=(",", ":"),
    ).encode()
    return MAGIC + _HEADER_LEN.pack(len(header)) + header + vecs.tobytes()


def unpack_vectors(blob: bytes, embedder: str, texts: list[str]) -> Vectors | None:
    """The vectors in `blob` when they embed exactly `texts` with `embedder`; None when they are
    stale or unreadable (the caller embeds the texts itself)."""
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _HEADER_LEN.size:
        return None
    (size,) = _HEADER_LEN.unpack_from(blob, len(MAGIC))
    start = len(MAGIC) + _HEADER_LEN.size
    try:
        header = json.loads(blob[start : start + size])
        rows, dim = int(header["rows"]), int(header["dim"])
    except (ValueError, KeyError, TypeError):
        return None
    if header.get("embedder") != embedder or header.get("digest") != texts_digest(texts):
        return None
    body = blob[start + size :]
    if len(body) != rows * dim * 4:
        return None
    return np.frombuffer(body, dtype="<f4").reshape(rows, dim).astype(np.float32)
