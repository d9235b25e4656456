"""Reads an uploaded PEFT adapter: two files (adapter_config.json + safetensors) or an archive."""

from __future__ import annotations

import io
import json
import lzma
import tarfile
import zipfile
import zlib
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from app.errors import Unprocessable

CONFIG_NAME = "adapter_config.json"
WEIGHTS_SUFFIX = ".safetensors"


# What reading a damaged, truncated, encrypted or oddly compressed archive raises, besides the
# archive modules' own errors (gzip, bz2, lzma and zlib streams; zip's unsupported methods).
_DAMAGED_ARCHIVE = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    OSError,
    lzma.LZMAError,
    zlib.error,
    NotImplementedError,
    RuntimeError,
)


def _too_big(name: str, limit: int) -> Unprocessable:
    return Unprocessable(
        f"{name!r} unpacks to more than {limit} bytes (LETHE_MAX_ADAPTER_BYTES)", param="files"
    )


def _zip_members(name: str, data: bytes, limit: int) -> dict[str, bytes]:
    """Files of a zip archive, by base name, unpacking at most `limit` bytes in all."""
    out: dict[str, bytes] = {}
    left = limit
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if info.is_dir():
                continue
            # Read one byte past what is left: a header that understates the size cannot
            # make us inflate a bomb.
            with archive.open(info) as handle:
                content = handle.read(left + 1)
            left -= len(content)
            if left < 0:
                raise _too_big(name, limit)
            out[info.filename.rsplit("/", 1)[-1]] = content
    return out


def _tar_members(name: str, data: bytes, limit: int) -> dict[str, bytes] | None:
    """Files of a tar archive (plain or compressed), by base name, at most `limit` bytes in
    all; None when it is no tar."""
    try:
        archive = tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except tarfile.TarError:
        return None
    with archive:
        out: dict[str, bytes] = {}
        members = [m for m in archive.getmembers() if m.isfile()]
        # A member's data is exactly its header's size, so the headers bound what is unpacked.
        if sum(m.size for m in members) > limit:
            raise _too_big(name, limit)
        for member in members:
            if member.isfile():
                handle = archive.extractfile(member)
                if handle is not None:  # read in memory: nothing touches the disk
                    out[member.name.rsplit("/", 1)[-1]] = handle.read()
        return out


def _archive_members(name: str, data: bytes, limit: int) -> dict[str, bytes] | None:
    """Files inside a zip or tar(.gz) upload, by base name; None when `data` is no archive.

    Raises:
        Unprocessable: `data` is an archive that cannot be read to the end.
    """
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            return _zip_members(name, data, limit)
        return _tar_members(name, data, limit)
    except _DAMAGED_ARCHIVE as exc:
        raise Unprocessable(
            f"{name!r} is a damaged or unsupported archive: {exc}", param="files"
        ) from exc


def read_adapter_files(
    files: list[tuple[str, bytes]], max_unpacked: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter config and weights from uploaded files; an archive may unpack to at most
    `max_unpacked` bytes (the upload limit bounds only its compressed size).

    Raises:
        Unprocessable: a file is missing, or the config or weights cannot be read.
    """
    named: dict[str, bytes] = {}
    for filename, data in files:
        base = filename.rsplit("/", 1)[-1]
        if base == CONFIG_NAME or base.endswith(WEIGHTS_SUFFIX):
            named[base] = data
            continue
        members = _archive_members(base, data, max_unpacked)
        if members is None:
            raise Unprocessable(
                f"unexpected file {base!r}: send {CONFIG_NAME} and adapter_model.safetensors, "
                "or one zip/tar archive holding them",
                param="files",
            )
        named.update(members)
    if CONFIG_NAME not in named:
        raise Unprocessable(f"the upload holds no {CONFIG_NAME}", param="files")
    weights = [n for n in named if n.endswith(WEIGHTS_SUFFIX)]
    if len(weights) != 1:
        raise Unprocessable(
            f"the upload must hold exactly one {WEIGHTS_SUFFIX} file, found {len(weights)}",
            param="files",
        )
    try:
        config = json.loads(named[CONFIG_NAME])
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise Unprocessable(f"{CONFIG_NAME} is not valid JSON: {exc}", param="files") from exc
    if not isinstance(config, dict):
        raise Unprocessable(f"{CONFIG_NAME} must hold a JSON object", param="files")
    try:
        tensors = load_safetensors(named[weights[0]])
    except (SafetensorError, ValueError) as exc:
        raise Unprocessable(
            f"{weights[0]} is not a readable safetensors file: {exc}", param="files"
        ) from exc
    return config, tensors
