"""Markdown reference of every LETHE_* setting, generated from app.settings.Settings.

.venv/bin/python scripts/settings_table.py            # print the table
.venv/bin/python scripts/settings_table.py --write    # refresh it in docs/operations.md
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic.fields import FieldInfo

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "operations.md"
START = "<!-- settings-table:start (scripts/settings_table.py --write) -->"
END = "<!-- settings-table:end -->"


def type_name(annotation: Any) -> str:
    """A short readable form of a field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(type_name(a) for a in args)
    if origin is list:
        return f"list[{type_name(args[0])}]"
    if annotation is type(None):
        return "None"
    if annotation is SecretStr:
        return "secret"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """The default as an operator would write it, independent of the machine."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is None:
        return "unset"
    if value == []:
        return "empty"
    if isinstance(value, Path):
        home = Path.home()
        return f"`~/{value.relative_to(home)}`" if value.is_relative_to(home) else f"`{value}`"
    return f"`{value}`"


def table() -> str:
    """The reference table, one row per setting, in the order of the Settings class."""
    rows = [
        "| Variable | Type | Default | Description |",
        "|---|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        description = " ".join((field.description or "").split())
        description = description.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(
            f"| `LETHE_{name.upper()}` | {type_name(field.annotation)} | "
            f"{default_text(field)} | {description} |"
        )
    return "\n".join(rows) + "\n"


def write(doc: Path = DOC) -> bool:
    """Replace the table between the markers in `doc`; True when it changed."""
    text = doc.read_text()
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"{doc}: settings table markers not found")
    new = f"{head}{START}\n{table()}{END}{tail}"
    if new != text:
        doc.write_text(new)
    return new != text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--write", action="store_true", help=f"update {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    if args.write:
        changed = write()
        sys.stdout.write(f"{DOC.relative_to(ROOT)}: {'updated' if changed else 'up to date'}\n")
    else:
        sys.stdout.write(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
