"""JSON files the pipeline writes and reads: atomic, canonical writes; one JSON Lines reader.

WHY atomic with unique temp names: a crash never leaves half a file, and two processes writing the same file (two
runs started together) never share a temp file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Canonical JSON (sorted keys, indented): equal content is equal bytes."""
    _atomic_write(Path(path), json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, rows: Iterable[Any]) -> None:
    """JSON Lines, one object per line, UTF-8 kept as is."""
    _atomic_write(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded object) for every non-blank line; a bad line raises ValueError naming FILE:LINE."""
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: invalid JSON ({e.msg} at column {e.colno})") from None


def read_jsonl(path: Path) -> list[Any]:
    """Every object of a JSON Lines file ([] when the file does not exist)."""
    path = Path(path)
    return [obj for _, obj in iter_jsonl(path)] if path.exists() else []
