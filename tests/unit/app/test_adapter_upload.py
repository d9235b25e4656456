"""Reading uploaded adapters: damaged archives and configs are 422s (Unprocessable), never 500s."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import pytest
import torch
from safetensors.torch import save

from app.adapter_upload import read_adapter_files
from app.errors import Unprocessable

CONFIG = json.dumps({"peft_type": "LORA", "r": 2}).encode()
LIMIT = 1 << 20
WEIGHTS = save({"base_model.model.x.lora_A.weight": torch.zeros(2, 4)})


def _zip(method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        archive.writestr("adapter_config.json", CONFIG)
        archive.writestr("adapter_model.safetensors", WEIGHTS)
    return buffer.getvalue()


def _tar_gz() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in (("adapter_config.json", CONFIG), ("adapter_model.safetensors", WEIGHTS)):
            info = tarfile.TarInfo(f"adapter/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _bad_crc() -> bytes:
    data = bytearray(_zip(zipfile.ZIP_STORED))
    start = data.index(CONFIG)
    data[start] ^= 0xFF  # the stored bytes no longer match their CRC-32
    return bytes(data)


def _unknown_method() -> bytes:
    data = bytearray(_zip(zipfile.ZIP_STORED))
    data[8:10] = (99).to_bytes(2, "little")  # local header's compression method
    central = data.index(b"PK\x01\x02")
    data[central + 10 : central + 12] = (99).to_bytes(2, "little")
    return bytes(data)


def test_zip_and_tar_archives_are_read() -> None:
    for name, data in (("a.zip", _zip()), ("a.tar.gz", _tar_gz())):
        config, tensors = read_adapter_files([(name, data)], LIMIT)
        assert config == json.loads(CONFIG) and list(tensors) == [
            "base_model.model.x.lora_A.weight"
        ]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_bad_crc(), "damaged or unsupported archive"),
        (_unknown_method(), "damaged or unsupported archive"),
        (_tar_gz()[:-40], "damaged or unsupported archive"),  # truncated gzip stream
        (_tar_gz()[:30], "damaged or unsupported archive"),
        (b"not an archive", "unexpected file"),
    ],
)
def test_unreadable_archives_are_unprocessable(data: bytes, message: str) -> None:
    with pytest.raises(Unprocessable, match=message):
        read_adapter_files([("adapter.bin", data)], LIMIT)


def test_config_nested_too_deeply_is_unprocessable() -> None:
    files = [("adapter_config.json", b"[" * 100_000), ("adapter_model.safetensors", WEIGHTS)]
    with pytest.raises(Unprocessable, match="not valid JSON"):
        read_adapter_files(files, LIMIT)


def _bomb_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("adapter_config.json", CONFIG)
        archive.writestr("adapter_model.safetensors", b"\0" * (4 * LIMIT))
    return buffer.getvalue()


def _bomb_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        info = tarfile.TarInfo("adapter_model.safetensors")
        info.size = 4 * LIMIT
        archive.addfile(info, io.BytesIO(b"\0" * info.size))
    return buffer.getvalue()


@pytest.mark.parametrize("data", [_bomb_zip(), _bomb_tar()])
def test_an_archive_unpacking_past_the_limit_is_refused(data: bytes) -> None:
    assert len(data) < LIMIT // 16  # small compressed, large unpacked
    with pytest.raises(Unprocessable, match="unpacks to more than"):
        read_adapter_files([("adapter.bin", data)], LIMIT)
