"""`python -m pipeline`: the Hydra app. One job = the four DVC stage functions in order, into the job's own dir.

    python -m pipeline                                    # one run of the default (offline) experiment
    python -m pipeline --cfg job model=tiny-w4            # print the composed config (validated first)
    python -m pipeline -m model=tiny-fp,tiny-w4 prompts=qa,instruct   # a sweep: one MLflow parent, a child per job
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from pipeline.config import ConfigError, compose, register_configs, to_config

register_configs()


def _validate_before_print(argv: list[str]) -> None:
    """Hydra's `--cfg` prints without running the app; validate first so a bad value still exits non-zero."""
    if not any(a in ("--cfg", "-c") or a.startswith("--cfg=") for a in argv) or "-m" in argv or "--multirun" in argv:
        return
    overrides = [a for a in argv if "=" in a and not a.startswith("-") and not a.startswith("hydra")]
    try:
        raw = compose(overrides)
    except Exception:  # unknown group option etc.: Hydra itself reports it, with the list of options
        return
    try:
        to_config(raw)
    except ConfigError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def app(raw: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from pipeline.stages import StageError
    from pipeline.sweep import run_job

    try:
        cfg = to_config(raw)
        return run_job(cfg, Path(HydraConfig.get().runtime.output_dir), HydraConfig.get())
    except (ConfigError, StageError) as e:  # one clear message, not Hydra's traceback
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def main() -> None:
    _validate_before_print(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
