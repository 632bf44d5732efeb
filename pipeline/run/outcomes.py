"""How a prompt's row ended: an answer, or a failure (crashed, timed out, error) — and a run's verdict from them.

The rule used everywhere (run status, score, summary): a failed prompt is a failed answer, not a skipped one.
"""

from __future__ import annotations

from collections.abc import Iterable


class FailureTally:
    """Counts measured rows that are not answers (crashed, timed out, other errors) — over resumed rows too.

    The verdict: every measured row failed → the run ``failed`` (nothing was measured); some failed → ``complete``
    with the counts recorded (score counts each as a failed answer).
    """

    KINDS = ("crashed", "timed_out", "error")

    def __init__(self) -> None:
        self.rows = 0
        self.measured = 0
        self._counts = dict.fromkeys(self.KINDS, 0)

    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> FailureTally:
        tally = cls()
        for row in rows:
            tally.add(row)
        return tally

    def add(self, row: dict) -> None:
        self.rows += 1
        if row.get("warmup"):
            return
        self.measured += 1
        kind = failure_kind(row)
        if kind is not None:
            self._counts[kind] += 1

    @property
    def failed(self) -> int:
        return sum(self._counts.values())

    def counts(self) -> dict[str, int]:
        return {"measured": self.measured, "failed": self.failed, **self._counts}

    def describe(self) -> str:
        parts = [f"{k.replace('_', ' ')} {v}/{self.measured}" for k, v in self._counts.items() if v]
        return f"{self.failed} of {self.measured} prompts failed ({', '.join(parts)})"

    def verdict(self) -> tuple[str, str | None]:
        if self.measured and self.failed == self.measured:
            return "failed", f"every prompt failed: {self.describe()}"
        return "complete", None


def failure_kind(row: dict) -> str | None:
    """Why a row is not an answer: ``crashed``, ``timed_out`` or ``error`` (e.g. the app refused), else None."""
    if row.get("crashed"):
        return "crashed"
    if row.get("timed_out"):
        return "timed_out"
    if row.get("error") and not (row.get("truncated") or row.get("eos") or row.get("app_tok_s") is not None):
        return "error"  # (an error note on a finished or truncated answer, e.g. the app exiting after it, is not)
    return None
