"""One Hydra job: the four stage functions in order, into the job's own directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config


def run_job(cfg: Config, workdir: Path, hydra_cfg: Any = None) -> float | None:
    """Run fetch → push → run → score into `workdir`; returns the quality score (Hydra sweepers can optimise it)."""
    from pipeline.stages import fetch, push, run, score

    workdir.mkdir(parents=True, exist_ok=True)
    for stage in (fetch, push, run, score):
        stage.run(cfg, workdir)
    return None
