"""One Hydra job: the four stage functions in order, into the job's own directory.

In a multirun every job logs an MLflow child run under one parent per sweep. The sweep id is the sweep dir's
name; the parent is created by whichever job scores first (under a file lock, so parallel jobs agree). Fetch and
push work is shared across jobs through the content-addressed model cache and the device-side manifests: the
second job using a model builds nothing and sends 0 bytes.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.context import RunContext

JOB_STATUS = "job_status.json"
# What this `python -m pipeline` process is running, for the one line that says how to resume it after Ctrl-C or
# SIGTERM: mode "run" (dir, task, hydra overrides) or "sweep" (+ the sweep's config).
RUNNING: dict[str, Any] = {}


def run_job(cfg: Config, workdir: Path, hydra_cfg: Any = None) -> float | None:
    """Run fetch → push → run → score into `workdir`; returns the quality score (Hydra sweepers can optimise it).

    Writes ``<job dir>/job_profile.json`` (seconds per phase, incl. the wait for a pool device) so a slow sweep
    shows which host-side step serialises the jobs (``benchmarks/pool_speedup.py`` prints it).
    """
    from pipeline.cluster import for_this_node
    from pipeline.device.pool import PoolError, check_pool, leased_device
    from pipeline.stages import StageError, fetch, push, run, score

    cfg = replace(cfg, device=for_this_node(cfg.device))  # on a Ray node: lease only the phones this host owns
    try:
        check_pool(cfg.device, cfg.app.virtual_only)  # a label no pool device has: fail before any download
    except PoolError as e:
        raise StageError(str(e)) from None
    workdir.mkdir(parents=True, exist_ok=True)
    sweep_id = sweep_id_of(hydra_cfg)
    ctx = RunContext.from_env(sweep_id=sweep_id)
    job = f"{sweep_id}/{hydra_cfg.job.num}" if sweep_id else str(workdir)
    prof = _Profile(workdir)
    with prof.phase("fetch"):
        fetch.run(cfg, workdir, ctx)  # parallel jobs share the cache: builds are atomic and skip unchanged files
    try:  # device.kind=pool: hold one device from push to run; fetch and score need none
        with prof.phase("device_wait"), leased_device(cfg.device, job, cfg.app.virtual_only) as device:
            prof.end("device_wait")
            job_cfg = replace(cfg, device=device)
            with prof.phase("push"):
                push.run(job_cfg, workdir, ctx)
            with prof.phase("run"):
                start_pending_preload()  # hydra/launcher=pool: warm the worker while the device works
                run.run(job_cfg, workdir, ctx)
    except PoolError as e:
        raise StageError(str(e)) from None
    with prof.phase("score"):
        score.run(job_cfg, workdir, ctx)
    prof.write()
    score_json = json.loads((workdir / cfg.paths.metrics / "score.json").read_text())
    return score_json["quality"]["score"]


JOB_PROFILE = "job_profile.json"


class _Profile:
    """Wall seconds per phase of one job, its start time and process (to see start-up and worker reuse)."""

    def __init__(self, workdir: Path) -> None:
        import time

        self._clock = time.monotonic
        self.workdir = workdir
        self.t0 = time.time()
        self.warm = PRELOADED.is_set()  # launcher=pool: this worker's background preload had finished
        self.phases: dict[str, float] = {}
        self._open: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._open[name] = self._clock()
        try:
            yield
        finally:
            self.end(name)

    def end(self, name: str) -> None:
        """Close a phase early (the device wait ends when the lease is granted, inside the ``with``)."""
        if name in self._open:
            self.phases[name] = round(self._clock() - self._open.pop(name), 3)

    def write(self) -> None:
        from pipeline.stages import write_json

        write_json(self.workdir / JOB_PROFILE, {"phases_s": self.phases, "job_start": self.t0, "pid": os.getpid(),
                                                   "warm_start": self.warm})


def sweep_id_of(hydra_cfg: Any) -> str | None:
    """The sweep's id (its directory name) in a multirun, else None."""
    if hydra_cfg is None:
        return None
    from hydra.types import RunMode

    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return Path(hydra_cfg.sweep.dir).name.replace(" ", "_")


def record_job(workdir: Path, status: str, error: str | None = None) -> None:
    """``<job dir>/job_status.json``: how the job ended, read by :class:`SweepSummary` at the end of the sweep."""
    from pipeline.stages import write_json

    write_json(workdir / JOB_STATUS, {"status": status, "error": error})


def job_outcomes(sweep_dir: Path) -> list[dict[str, Any]]:
    """Every job dir of a sweep with its status (``did not finish`` when it wrote none), its one-line error and
    the overrides that tell it from the other jobs (``overrides``; all of them in ``overrides_all``)."""
    out = []
    for d in sorted(sweep_dir.glob("job*"), key=lambda p: int(p.name[3:]) if p.name[3:].isdigit() else 0):
        status_file, overrides_file = d / JOB_STATUS, d / ".hydra" / "overrides.yaml"
        info = json.loads(status_file.read_text()) if status_file.exists() else {
            "status": "did not finish", "error": "no job_status.json: the job was killed or its host died"}
        lines = overrides_file.read_text().splitlines() if overrides_file.exists() else []
        info["job"] = d.name
        info["error"] = " ".join(str(info.get("error") or "").split())  # one line
        info["overrides_all"] = [o.removeprefix("- ").strip() for o in lines if o.strip()]
        out.append(info)
    common = set.intersection(*(set(j["overrides_all"]) for j in out)) if len(out) > 1 else set()
    for j in out:
        j["overrides"] = " ".join(o for o in j["overrides_all"] if o not in common)
    return out


def preload_host_side(config: Any, quiet: bool = False) -> dict[str, float]:
    """Import the heavy modules of fetch/push/run/score and load the embedding model of the sweep's base config
    in this process (seconds per item returned). Nothing here starts threads or opens the MLflow store; a failure
    is left for the job to report. Sets :data:`PRELOADED` when done."""
    import importlib
    import time

    took: dict[str, float] = {}
    scoring = config.get("scoring") or {}
    # The bundled embedding model runs on numpy (pipeline.quality.minilm): torch and sentence-transformers are
    # imported only for a user-given scoring.embedding_model, which sentence-transformers loads.
    heavy = ("torch", "sentence_transformers") if scoring.get("relevance", True) and scoring.get("embedding_model") \
        else ()
    # MLflow (~1 s of imports) only when the sweep logs to it: tracking=none sweeps never import it
    tracker = ("mlflow",) if (config.get("tracking") or {}).get("backend") == "mlflow" else ()
    try:  # the backend the plots use (pipeline/score/plots.py), chosen before pyplot is imported
        import matplotlib

        matplotlib.use("Agg")
    except ImportError:
        pass
    for mod in (*heavy, "matplotlib.pyplot", *tracker, "pipeline.stages.fetch", "pipeline.stages.push",
                "pipeline.stages.run", "pipeline.stages.score", "pipeline.quality.composite"):
        t = time.monotonic()
        try:
            importlib.import_module(mod)
        except Exception:  # noqa: BLE001 - an optional module missing is the job's to report
            continue
        took[mod] = round(time.monotonic() - t, 2)
    if scoring.get("relevance", True):
        t = time.monotonic()
        try:
            from pipeline.quality.relevance import load_model

            load_model(scoring.get("embedding_model"))
            took["embedding model"] = round(time.monotonic() - t, 2)
        except Exception:  # noqa: BLE001 - RelevanceError etc.: the job raises it with its own message
            pass
    if not quiet:
        print(f"sweep: preloaded for the forked workers in {sum(took.values()):.1f} s", file=sys.stderr)
    PRELOADED.set()
    return took


# Set once this process has run preload_host_side (a forked worker sees its parent's state).
PRELOADED = threading.Event()


def schedule_preload() -> None:
    """Pool initializer of ``hydra/launcher=pool``: this forked worker will warm itself in a daemon thread that
    :func:`start_pending_preload` starts when its first job reaches the device-bound ``run`` phase.

    WHY in the worker, in the background, during ``run``: a device-bound job spends most of its time waiting on the
    device; loading matplotlib, MLflow and the embedding model meanwhile hides them. A preload in the sweep process
    before forking delayed every first job (0.6-5 s measured, benchmarks/pool_speedup.py), and one started at fork
    competed for the GIL with the job's own fetch/push. A stage that needs a module before the thread has it simply
    waits on Python's import lock / the model lock.
    """
    _PENDING_PRELOAD[:] = [FORK_JOBS[0][3] if FORK_JOBS else {}]


_PENDING_PRELOAD: list[Any] = []  # the sweep config, until this worker's preload thread has been started


def start_pending_preload() -> None:
    """Start the preload thread :func:`schedule_preload` scheduled (once per worker; no-op otherwise)."""
    if _PENDING_PRELOAD and not PRELOADED.is_set():
        config = _PENDING_PRELOAD.pop()
        threading.Thread(target=preload_host_side, args=(config or {}, True), daemon=True,
                         name="odeval-preload").start()


# The jobs of a ForkPoolLauncher sweep (hydra_plugins/odeval_fork_launcher), set in the parent right before the
# fork and read by the workers. It lives here, in a module imported the ordinary way, because Hydra loads plugin
# modules under its own loader: a global there is not the one a worker finds when it unpickles the job function.
FORK_JOBS: list[tuple[Any, ...]] = []


def run_forked_job(index: int) -> Any:
    """Run job ``index`` of :data:`FORK_JOBS` in a forked worker (Hydra's own per-job setup)."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    return _portable(execute_job(*FORK_JOBS[index]))


def _portable(ret: Any) -> Any:
    """The JobReturn as plain containers: its configs hold structured-config classes that Hydra re-creates per
    process, which plain pickle refuses to send back ("not the same object as ..."); loky's cloudpickle hid it."""
    from omegaconf import OmegaConf

    for name in ("cfg", "hydra_cfg"):
        value = getattr(ret, name, None)
        if value is not None:
            setattr(ret, name, OmegaConf.create(OmegaConf.to_container(value, resolve=False)))
    try:
        import pickle

        pickle.dumps(ret._return_value)
    except Exception as e:  # noqa: BLE001 - an unpicklable result/exception: send its text instead
        ret._return_value = RuntimeError(f"{type(e).__name__} returning the job's result: {ret._return_value!r}")
    return ret



try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency
    Callback = object  # type: ignore[assignment,misc]


class SweepSummary(Callback):
    """Hydra callback: after a multirun, name the jobs that failed and end the sweep non-zero if any did.

    WHY: each job catches its own failure (so the other jobs still run), which means Hydra itself would end the
    sweep with status 0; this puts the truth back at the end, on the terminal and on the MLflow parent run. An
    interrupted sweep (Ctrl-C, SIGTERM) never reaches ``on_multirun_end``: ``python -m pipeline`` then calls
    :func:`sweep_interrupted`, which records the same summary with the parent KILLED.
    """

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        hydra = config.hydra
        RUNNING.update(mode="sweep", dir=Path(str(hydra.sweep.dir)).resolve(), task=list(hydra.overrides.task),
                       hydra=list(hydra.overrides.hydra), config=config)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        RUNNING.clear()
        bad = summarize_sweep(config)
        sweep_id = Path(config.hydra.sweep.dir).name
        print(f"compare: python -m pipeline.report --sweep {sweep_id} --out reports/{sweep_id}", file=sys.stderr)
        if bad:
            raise SystemExit(1)


def summarize_sweep(config: Any, interrupted: str | None = None) -> list[dict[str, Any]]:
    """Print the sweep's outcome (one line per job that did not complete) and record it in MLflow: a FAILED child
    per failed job, a KILLED one per job the interruption stopped or never let finish, the parent FAILED (or
    KILLED when ``interrupted`` names the signal) with the summary in its tags. Returns the jobs not complete."""
    sweep_dir = Path(config.hydra.sweep.dir)
    jobs = job_outcomes(sweep_dir)
    bad = [j for j in jobs if j["status"] != "complete"]
    how = f" — interrupted by {interrupted} (jobs not started yet are not counted)" if interrupted else ""
    print(f"sweep {sweep_dir.name}: {len(jobs) - len(bad)} of {len(jobs)} jobs complete{how}",
          file=sys.stderr)
    for j in bad:
        print(f"  {j['job']} ({j['overrides'] or 'no overrides'}): {j['status']} — {j['error']}", file=sys.stderr)
    _mark_parent(config, sweep_dir.name, bad, interrupted)
    return bad


def sweep_interrupted(signum: int) -> None:
    """After Ctrl-C/SIGTERM of a sweep: its summary (MLflow parent and unfinished children KILLED) and the one
    line that resumes it (each job continues in its own dir; complete jobs keep all their rows)."""
    from pipeline.interrupts import signal_name

    config = RUNNING.get("config")
    if config is not None:
        summarize_sweep(config, interrupted=signal_name(signum))
    print(f"sweep interrupted — finished work is kept; resume this sweep: {resume_command()}", file=sys.stderr)


def resume_command() -> str:
    """The command that resumes what :data:`RUNNING` describes: the same overrides, in the same directory."""
    from pipeline.interrupts import command_line

    sweep = RUNNING.get("mode") == "sweep"
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    hydra = [o for o in RUNNING.get("hydra", []) if not o.startswith(("hydra.sweep.dir=", "hydra.run.dir="))]
    argv = ["python", "-m", "pipeline", *(["-m"] if sweep else []), *RUNNING.get("task", []), *hydra,
            f"{key}={RUNNING.get('dir', '?')}"]
    return f"`{command_line(argv)}`"


def _mark_parent(config: Any, sweep_id: str, bad: list[dict[str, Any]], interrupted: str | None = None) -> None:
    from pipeline.tracking import TrackingError, close_running_children, log_failed_job, mark_parent, sweep_parent
    from pipeline.workspace import shared_root

    found = _sweep_tracking(config, "the sweep's outcome is not recorded in MLflow")
    if found is None:
        return
    uri, cfg = found
    try:
        parent = sweep_parent(uri, cfg.tracking.experiment, sweep_id, shared_root() / ".odeval" / "locks")
        for j in bad:  # a child run per job that did not finish, visible next to the finished ones
            log_failed_job(tracking_uri=uri, experiment=cfg.tracking.experiment, parent_run_id=parent,
                           run_name=f"{j['job']}:{j['status']}", error=j["error"] or j["status"],
                           tags={"sweep_id": sweep_id, "odeval.job": j["job"], "odeval.overrides": j["overrides"]},
                           status="FAILED" if j["status"] == "failed" else "KILLED")
        if interrupted:  # a job stopped while it was logging: its child run must not stay RUNNING
            close_running_children(tracking_uri=uri, experiment=cfg.tracking.experiment, parent_run_id=parent)
        failed = "; ".join(f"{j['job']} ({j['overrides']}): {j['status']}" for j in bad)
        tags = {"odeval.failed_jobs": failed or "none", "odeval.n_failed_jobs": str(len(bad))}
        if interrupted:
            tags["odeval.interrupted"] = interrupted
        mark_parent(tracking_uri=uri, parent_run_id=parent, failed=bool(bad), tags=tags,
                    status="KILLED" if interrupted else None)
    except TrackingError as e:
        print(f"warning: could not record the sweep's outcome in MLflow: {e}", file=sys.stderr)


def _sweep_tracking(config: Any, what: str) -> tuple[str, Config] | None:
    """The sweep's tracking URI and base config (the jobs' shared config), None when it does not track."""
    from omegaconf import OmegaConf

    from pipeline.config import ConfigError, to_config
    from pipeline.tracking import resolve_tracking_uri
    from pipeline.workspace import shared_root

    base = OmegaConf.create({k: v for k, v in config.items() if k != "hydra"})
    try:
        cfg = to_config(base)
    except ConfigError as e:
        print(f"warning: {what} (its base config: {e})", file=sys.stderr)
        return None
    if cfg.tracking.backend == "none":
        return None
    return resolve_tracking_uri(cfg.tracking.tracking_uri or "sqlite:///mlflow.db", shared_root()), cfg


def prepare_parent(config: Any) -> None:
    """Create the sweep's MLflow parent run from the controller before any job starts (the Ray launcher).

    WHY: jobs on several hosts share an http tracking server but not a lock file; get_or_create_parent's
    create-then-keep-the-oldest can still leave two parents when two hosts race with skewed clocks. One creator,
    before the jobs exist, leaves the jobs nothing to race for."""
    from pipeline.tracking import TrackingError, sweep_parent
    from pipeline.workspace import shared_root

    found = _sweep_tracking(config, "no MLflow parent created before the jobs")
    if found is None:
        return
    uri, cfg = found
    sweep_id = Path(str(config.hydra.sweep.dir)).name.replace(" ", "_")
    try:
        sweep_parent(uri, cfg.tracking.experiment, sweep_id, shared_root() / ".odeval" / "locks")
    except TrackingError as e:
        print(f"warning: MLflow parent not created before the jobs ({e}); each job will try", file=sys.stderr)
