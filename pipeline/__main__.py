"""`python -m pipeline`: the Hydra app. One job = the four DVC stage functions in order, into the job's own dir.

    python -m pipeline                                    # one run of the default (offline) experiment
    python -m pipeline --cfg job model=tiny-w4            # print the composed config (validated first)
    python -m pipeline -m model=tiny-fp,tiny-w4 prompts=qa,instruct   # a sweep: one MLflow parent, a child per job
    python -m pipeline ... hydra.run.dir=outputs/<date>/<time>     # resume an interrupted run in its directory

Ctrl-C or SIGTERM ends a run with status ``interrupted`` (run.json; in a sweep also the MLflow parent and the
unfinished children) and one line with the command that resumes it.
"""

from __future__ import annotations

import sys
import traceback
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
    from hydra.types import RunMode

    from pipeline.stages import StageError, StageInterrupted
    from pipeline.sweep.invocation import this_process
    from pipeline.sweep.job import record_job, run_job

    hc = HydraConfig.get()
    workdir = Path(hc.runtime.output_dir)
    if hc.mode != RunMode.MULTIRUN:  # what main() needs to say how to resume this very run
        this_process.started("run", workdir, list(hc.overrides.task), list(hc.overrides.hydra))
    try:
        cfg = to_config(raw)
        result = run_job(cfg, workdir, hc)
    except KeyboardInterrupt as e:  # Ctrl-C / SIGTERM: recorded here, reported once by main()
        if hc.mode == RunMode.MULTIRUN:
            workdir.mkdir(parents=True, exist_ok=True)
            record_job(workdir, "interrupted", str(e) or "interrupted")
        raise
    except (ConfigError, StageError, Exception) as e:
        expected = isinstance(e, ConfigError | StageError)
        message = str(e) if expected else f"{type(e).__name__}: {e}"
        if hc.mode != RunMode.MULTIRUN:  # one clear message, not Hydra's traceback
            if not expected:
                raise
            if isinstance(e, StageInterrupted):
                message += f"; resume this run: {this_process.resume_command()}"
            print(f"error: {message}", file=sys.stderr)
            raise SystemExit(2) from None
        # a sweep job fails alone: the other jobs run, and SweepSummary names this one at the end
        if not expected:
            traceback.print_exc()
        print(f"error in job {hc.job.num}: {message}", file=sys.stderr)
        workdir.mkdir(parents=True, exist_ok=True)
        record_job(workdir, "failed", message)
        return None
    if hc.mode == RunMode.MULTIRUN:
        record_job(workdir, "complete")
    return result


def main() -> None:
    from pipeline.interrupts import Interrupted, signal_name, signals_as_exceptions, signum_of

    _validate_before_print(sys.argv[1:])
    try:
        with signals_as_exceptions():
            app()
    except KeyboardInterrupt as e:  # one line (per sweep: its summary), never a raw traceback
        from pipeline.sweep.invocation import this_process
        from pipeline.sweep.summary import sweep_interrupted

        signum = signum_of(e)
        if this_process.sweep:
            sweep_interrupted(signum)
        else:
            what = e.message if isinstance(e, Interrupted) and e.message else f"interrupted by {signal_name(signum)}"
            print(f"error: {what} — finished work is kept; resume this run: {this_process.resume_command()}",
                  file=sys.stderr)
        raise SystemExit(128 + signum) from None


if __name__ == "__main__":
    main()
