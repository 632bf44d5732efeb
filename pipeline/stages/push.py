"""DVC stage `push` (DESIGN §3)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.stages import stage_main


def run(cfg: Config, workdir: Path) -> Path:
    raise NotImplementedError(
        "stage push is not built yet — see issue "
        "\"fetch and push: verified downloads from the Hub, incremental verified deploys over ADB\""
    )


def main() -> None:
    stage_main("push", run)


if __name__ == "__main__":
    main()
