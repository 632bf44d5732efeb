"""One Hydra job: the four stage functions in order, into the job's own directory.

In a multirun every job logs an MLflow child run under one parent per sweep. The sweep id is the sweep dir's
name; the parent is created by whichever job scores first (under a file lock, so parallel jobs agree). Fetch and
push work is shared across jobs through the content-addressed model cache and the device-side manifests: the
second job using a model builds nothing and sends 0 bytes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.context import RunContext
from pipeline.sweep.warmup import this_worker

JOB_STATUS = "job_status.json"


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
                this_worker.start()  # hydra/launcher=pool: warm the worker while the device works
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
        self.warm = this_worker.done.is_set()  # launcher=pool: this worker's background preload had finished
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

