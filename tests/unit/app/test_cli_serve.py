"""`lethe serve --workers`: several processes need the shared registry."""

from __future__ import annotations

import pytest

from app.cli import main


def test_workers_with_the_sqlite_registry_are_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LETHE_REGISTRY_URL", raising=False)
    assert main(["serve", "--workers", "2", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert "--workers" in err and "redis://" in err
