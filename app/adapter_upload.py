"""Reads an uploaded PEFT adapter: two files (adapter_config.json + safetensors) or an archive."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from app.errors import Unprocessable

CONFIG_NAME = "adapter_config.json"
WEIGHTS_SUFFIX = ".safetensors"


def _archive_members(name: str, data: bytes) -> dict[str, bytes] | None:
    """Files inside a zip or tar(.gz) upload, by base name; None when `data` is no archive."""
    if zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return {
                info.filename.rsplit("/", 1)[-1]: archive.read(info)
                for info in archive.infolist()
                if not info.is_dir()
            }
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as archive:
            out: dict[str, bytes] = {}
            for member in archive.getmembers():
                if member.isfile():
                    handle = archive.extractfile(member)
                    if handle is not None:  # read in memory: nothing touches the disk
                        out[member.name.rsplit("/", 1)[-1]] = handle.read()
            return out
    except tarfile.TarError:
        return None


def read_adapter_files(
    files: list[tuple[str, bytes]],
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The adapter config and weights from uploaded files.

    Raises:
        Unprocessable: a file is missing, or the config or weights cannot be read.
    """
    named: dict[str, bytes] = {}
    for filename, data in files:
        base = filename.rsplit("/", 1)[-1]
        if base == CONFIG_NAME or base.endswith(WEIGHTS_SUFFIX):
            named[base] = data
            continue
        members = _archive_members(base, data)
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
    except ValueError as exc:
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
