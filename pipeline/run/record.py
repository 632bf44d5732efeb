"""The run directory (``artifacts/run/``): resume, the rows as they finish, telemetry, and an honest ``run.json``.

Files: ``responses.jsonl`` (one row per prompt × repeat, appended and fsynced as each finishes), ``app.log`` (a
terminal-style transcript that ``python -m pipeline.apps.simple_app parse`` reads back), ``telemetry.jsonl``,
``prompts.jsonl`` (what score needs: references, rules, tags) and ``run.json`` (provenance + status).

Statuses: ``running`` while the stage runs; then ``complete``, ``interrupted`` (device/connection lost, Ctrl-C, SIGTERM:
resumable) or ``failed`` (every prompt failed, or an unexpected error) with the reason in ``error``. A ``running``
left behind by a killed process is reported as ``killed`` by :func:`run_status`.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.jsonio import read_jsonl, write_json, write_jsonl
from pipeline.run.identity import RunIdentity, asked_digest, describe_change, listed
from pipeline.run.outcomes import FailureTally

FILES = ("responses.jsonl", "telemetry.jsonl", "app.log", "run.json", "prompts.jsonl", "bench.json")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class RunDir:
    """One run's directory. Rows are kept only for a run of the same identity and only while what they asked is
    unchanged (pipeline/run/identity.py); another identity starts over and says what changed."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows_path = self.path / "responses.jsonl"
        self.meta: dict[str, Any] = {}
        # the results this run replaces (another identity, or other questions): score marks their MLflow run
        self.previous: dict[str, Any] | None = None
        self.asked = ""  # digest of what this run asks (all prompts' ask keys)

    def resume(self, identity: RunIdentity, asks: dict[str, str]) -> set[tuple[str, int]]:
        """Finished (prompt_id, repeat) pairs to keep: rows of a run with the same identity whose ask key is
        unchanged (``asks``: prompt id → key). Other rows are removed from the directory, and one line says why."""
        self.path.mkdir(parents=True, exist_ok=True)
        meta_path = self.path / "run.json"
        old = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        lines = self.rows_path.read_text(encoding="utf-8").splitlines() if self.rows_path.exists() else []
        self.asked = asked_digest(asks)
        if old.get("run_key") != identity.key:
            if old or lines:
                self.previous = {"run_key": old.get("run_key"), "asked": old.get("asked"),
                                 "why": describe_change(old.get("identity"), identity)}
                print(f"run: starting afresh — {self.previous['why']}; the previous run's {len(lines)} rows in "
                      f"{self.rows_path} are not reused", file=sys.stderr)
            for name in FILES:
                (self.path / name).unlink(missing_ok=True)
            return set()
        self.previous = old.get("previous_run")
        if old.get("asked") != self.asked:  # the same run asking other questions: new results replace the old
            self.previous = {"run_key": old.get("run_key"), "asked": old.get("asked"),
                             "why": "the prompt set changed (rows re-asked or dropped)"}
        if old.get("status") == "running":
            print(f"run: the previous run (pid {old.get('pid')} on {old.get('hostname')}) ended without recording "
                  "its status — it was killed; resuming from its finished rows", file=sys.stderr)
        done, good, changed, gone = set(), [], set(), set()
        for line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a crash mid-write: redo that prompt
                continue
            pid = row["prompt_id"]
            if pid not in asks:
                gone.add(pid)
            elif row.get("ask_key") != asks[pid]:
                changed.add(pid)
            else:
                done.add((pid, row["repeat"]))
                good.append(line)
        self.rows_path.write_text("".join(line + "\n" for line in good), encoding="utf-8")
        said = [f"{len(done)} finished rows kept"] if done else []
        if changed:
            said.append(f"re-asking {len(changed)} changed prompt(s) {listed(sorted(changed))}")
        if gone:
            said.append(f"dropped the rows of {len(gone)} prompt(s) no longer in the set {listed(sorted(gone))}")
        if said:
            print("run: resuming — " + "; ".join(said))
        return done

    def write_prompts(self, items: Iterable[dict[str, Any]]) -> None:
        write_jsonl(self.path / "prompts.jsonl", items)

    def start(self, meta: dict[str, Any], rows: int) -> None:
        self.meta = {**meta, "pid": os.getpid(), "hostname": platform.node(), "asked": self.asked,
                     "previous_run": self.previous}
        write_json(self.path / "run.json", {**self.meta, "status": "running", "rows": rows})

    @contextmanager
    def rows(self) -> Iterator[RowWriter]:
        writer = RowWriter(self.rows_path, self.path / "app.log")
        try:
            yield writer
        finally:
            writer.close()

    def add_telemetry(self, samples: Iterable[dict[str, Any]]) -> None:
        with (self.path / "telemetry.jsonl").open("a", encoding="utf-8") as f:
            f.writelines(json.dumps(s) + "\n" for s in samples)

    def on_disk(self) -> FailureTally:
        """The rows the directory holds, counted from the file: a signal can land between a row's fsync and the
        in-memory count, and run.json must say what is on disk."""
        return FailureTally.from_rows(read_jsonl(self.rows_path))  # [] before the first row

    def finish(self, status: str, reason: str | None) -> None:
        tally = self.on_disk()
        write_json(self.path / "run.json", {**self.meta, "status": status, "error": reason, "rows": tally.rows,
                                            "failures": tally.counts(), "ended": now()})


class RowWriter:
    """Appends each finished row (fsynced: a crash loses at most the row being written) and its transcript."""

    def __init__(self, rows_path: Path, log_path: Path) -> None:
        self.tally = FailureTally.from_rows(read_jsonl(rows_path))  # resumed rows count too
        self._rows = rows_path.open("a", encoding="utf-8")
        self._log = log_path.open("a", encoding="utf-8")
        if self._log.tell() == 0:
            self._log.write(">>> ")

    def __call__(self, row: dict[str, Any]) -> None:
        self._rows.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._rows.flush()
        os.fsync(self._rows.fileno())
        self.tally.add(row)
        raw = base64.b64decode(row["raw_output_b64"] or b"").decode("utf-8", "replace")
        # each answer's bytes end with the app's next `>>> `, so the log reads like the terminal did
        self._log.write(row["sent_text"] + "\n" + (raw or f"[no output: {row['error']}]\n>>> "))
        self._log.flush()

    def close(self) -> None:
        self._rows.close()
        self._log.close()


def run_status(run_json: dict[str, Any]) -> str:
    """The run's status as recorded, with a stale ``running`` (its process is gone) reported as ``killed``."""
    status = run_json.get("status", "unknown")
    if status != "running":
        return status
    pid, host = run_json.get("pid"), run_json.get("hostname")
    if host == platform.node() and isinstance(pid, int) and _pid_alive(pid):
        return "running"
    return "killed"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
