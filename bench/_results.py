"""What the bench scripts that feed docs/ share: a markdown grid of their figures, and the JSON record that keeps
them with the command that made them (every option spelled out, so a later change of a default does not change
what the record says was run)."""

from __future__ import annotations

import json
from pathlib import Path


def print_grid(corner: str, columns: list[str], rows: list[tuple[str, list[str]]]) -> None:
    """Prints a markdown table: one header row (`corner`, then `columns`), then each (label, cells) row."""
    print(f"| {corner} | {' | '.join(columns)} |")
    print(f"| --- | {' | '.join('---' for _ in columns)} |")
    for label, cells in rows:
        print(f"| {label} | {' | '.join(cells)} |")


def write_record(path: Path, script: str, options: dict[str, object], **fields: object) -> None:
    """Writes `fields` to `path` as JSON, after the command that reruns `script` (bench/NAME.py) with `options`."""
    spelled = " ".join(f"--{name.replace('_', '-')} {value}" for name, value in options.items())
    command = f"EDGESEG_MIRROR=../shared/models .venv/bin/python bench/{script} {spelled}"
    path.write_text(json.dumps({"command": command, **fields}, indent=1) + "\n")
