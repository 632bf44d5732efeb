"""DVC stage `run` (DESIGN §3)."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.stages import stage_main


def run(cfg: Config, workdir: Path) -> Path:
    raise NotImplementedError(
        "stage run is not built yet — see issue "
        "\"run: drive the app's REPL on the device, measure it honestly, survive everything\""
    )


def main() -> None:
    stage_main("run", run)


if __name__ == "__main__":
    main()
