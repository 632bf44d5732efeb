"""DVC stage `score` (DESIGN §3)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.stages import stage_main


def run(cfg: Config, workdir: Path) -> Path:
    raise NotImplementedError(
        "stage score is not built yet — see issue "
        "\"score: throughput statistics, answer quality, DVC metrics and MLflow runs you can compare\""
    )


def main() -> None:
    stage_main("score", run)


if __name__ == "__main__":
    main()
