"""docs/operations.md cannot go stale: its settings table names every setting (and only real
ones), and its metrics table names every metric the gateway exports."""

from __future__ import annotations

import importlib.util
import re
import shutil
from pathlib import Path
from types import ModuleType

from app.metrics import GatewayMetrics
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "operations.md"
FIX = "run `.venv/bin/python scripts/settings_table.py --write`"


def settings_table_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "settings_table", ROOT / "scripts" / "settings_table.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_block() -> str:
    script = settings_table_module()
    text = DOC.read_text()
    assert script.START in text and script.END in text
    return text.split(script.START, 1)[1].split(script.END, 1)[0]


def test_every_setting_is_documented() -> None:
    block = table_block()
    missing = [
        f"LETHE_{name.upper()}"
        for name in Settings.model_fields
        if f"| `LETHE_{name.upper()}` |" not in block
    ]
    assert not missing, f"undocumented settings {missing}: {FIX}"


def test_documented_settings_exist() -> None:
    documented = re.findall(r"^\| `LETHE_(\w+)` \|", table_block(), flags=re.M)
    assert documented
    stale = [f"LETHE_{n}" for n in documented if n.lower() not in Settings.model_fields]
    assert not stale, f"settings documented but gone: {stale}: {FIX}"


def test_write_refreshes_the_table_and_is_idempotent(tmp_path: Path) -> None:
    script = settings_table_module()
    doc = tmp_path / "operations.md"
    shutil.copy(DOC, doc)
    stale = doc.read_text().replace("| `LETHE_PORT` |", "| `LETHE_OLD_PORT` |")
    doc.write_text(stale)
    assert script.write(doc) is True
    assert "| `LETHE_PORT` |" in doc.read_text()
    assert "LETHE_OLD_PORT" not in doc.read_text()
    assert script.write(doc) is False


def test_every_metric_is_documented() -> None:
    text = DOC.read_text()
    names = {family.name for family in GatewayMetrics().registry.collect()}
    assert len(names) >= 11
    for name in names:
        # prometheus_client names counter families without their _total suffix
        exported = f"{name}_total" if f"`{name}_total`" in text else name
        assert f"`{exported}`" in text, f"metric {name} is not in docs/operations.md"
