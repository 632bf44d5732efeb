"""What this ``python -m pipeline`` process is running (one run in a directory, or a sweep), kept so that a
Ctrl-C or SIGTERM can end with the one line that resumes exactly that: the same overrides, in the same directory.

One :class:`Invocation` per process (:data:`this_process`): the Hydra app records a run, the sweep callback a sweep,
and ``python -m pipeline``'s interrupt handler reads it — each through the object's methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Invocation:
    """``mode`` "run" (``dir``, ``task`` and ``hydra`` overrides) or "sweep" (the same, plus the sweep's config)."""

    mode: str | None = None
    dir: Path | None = None
    task: list[str] = field(default_factory=list)
    hydra: list[str] = field(default_factory=list)
    config: Any = None

    def started(self, mode: str, dir: Path, task: list[str], hydra: list[str], config: Any = None) -> None:
        self.mode, self.dir, self.task, self.hydra, self.config = mode, Path(dir).resolve(), task, hydra, config

    def ended(self) -> None:
        self.mode, self.config = None, None

    @property
    def sweep(self) -> bool:
        return self.mode == "sweep"

    def resume_command(self) -> str:
        """The command that resumes this run or sweep: the same overrides, in the same directory."""
        from pipeline.interrupts import command_line

        key = "hydra.sweep.dir" if self.sweep else "hydra.run.dir"
        hydra = [o for o in self.hydra if not o.startswith(("hydra.sweep.dir=", "hydra.run.dir="))]
        argv = ["python", "-m", "pipeline", *(["-m"] if self.sweep else []), *self.task, *hydra,
                f"{key}={self.dir or '?'}"]
        return f"`{command_line(argv)}`"


this_process = Invocation()
