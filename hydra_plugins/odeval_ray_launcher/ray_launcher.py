"""``hydra/launcher=ray``: each sweep job is a Ray task placed on a host with a free matching phone.

Why not hydra-ray-launcher 1.2.2 (the maintained plugin) itself — three reasons, checked, not assumed:

1. It cannot be installed next to this project: it requires ``cloudpickle<3`` while joblib 1.6 (the default
   ``hydra/launcher=joblib`` path) requires ``cloudpickle>=3.0`` — pip reports ResolutionImpossible.
2. It applies one ``hydra.launcher.ray.remote`` dict to every job; a sweep over ``device.require.chip`` needs
   different Ray resources per job.
3. It ``ray.get``s the jobs in order, so one job lost with its node raises out of the launcher: Hydra then skips
   ``on_multirun_end`` and the sweep summary that names unfinished jobs never runs.

So this is the same launcher shape (same config keys: ``ray.init`` → ``ray.init()``, ``ray.remote`` → the task's
options, same use of Hydra's ``run_job``) with per-job resources from ``device.require`` (pipeline/cluster.py)
and lost jobs recorded as ``did not finish`` in their job dir. When hydra-ray-launcher lifts its pin, switching
back is a ``_target_`` change for sweeps that share one ``device.require``.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)

PLACEMENT = "placement.json"


class RayLauncher(Launcher):
    def __init__(self, ray: DictConfig) -> None:
        self.ray_cfg = ray
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from hydra.core.singleton import Singleton
        from hydra.core.utils import configure_log, filter_overrides, setup_globals

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        ray = _import_ray()
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)).resolve()  # workers may have another cwd
        sweep_dir.mkdir(parents=True, exist_ok=True)
        if not ray.is_initialized():
            ray.init(**(OmegaConf.to_container(self.ray_cfg.init, resolve=True) or {}))
        from pipeline.sweep.summary import prepare_parent

        prepare_parent(self.config)  # one process creates the MLflow parent: no cross-host race between jobs
        task = ray.remote(_remote_job)
        submitted = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            job_cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(job_cfg):
                job_cfg.hydra.job.id = f"ray_{idx}"
                job_cfg.hydra.job.num = idx
                job_cfg.hydra.sweep.dir = str(sweep_dir)
            options = remote_options(self.ray_cfg.remote, job_cfg)
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}  (ray: {options.get('resources', {})})")
            ref = task.options(**options).remote(self.hydra_context, job_cfg, self.task_function,
                                                 Singleton.get_state())
            submitted.append((ref, job_cfg, list(overrides)))
        return [_collect(ray, ref, job_cfg, overrides) for ref, job_cfg, overrides in submitted]


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError("hydra/launcher=ray needs Ray: pip install -e '.[cluster]'") from None
    return ray


def remote_options(base: DictConfig | dict | None, job_cfg: DictConfig) -> dict[str, Any]:
    """``hydra.launcher.ray.remote`` plus, for a pool job, one phone with the job's ``device.require`` labels."""
    from pipeline.cluster import job_resources

    opts: dict[str, Any] = dict(OmegaConf.to_container(OmegaConf.create(base or {}), resolve=True))  # type: ignore
    if OmegaConf.select(job_cfg, "device.kind") == "pool":
        require = OmegaConf.to_container(job_cfg.device.require, resolve=True) or {}
        opts["resources"] = {**(opts.get("resources") or {}), **job_resources(require)}  # type: ignore[dict-item]
    return opts


def _remote_job(hydra_context: HydraContext, job_cfg: DictConfig, task_function: TaskFunction,
                singleton_state: Any) -> tuple[JobReturn, dict[str, Any] | None, dict[str, Any]]:
    """Runs on the node Ray chose: Hydra's own run_job, then what the controller needs to know about it."""
    import ray
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals

    from pipeline.cluster import NODE_POOL_ENV
    from pipeline.sweep.job import JOB_STATUS

    setup_globals()
    Singleton.set_state(singleton_state)
    HydraConfig.instance().set_config(job_cfg)
    ret = run_job(hydra_context=hydra_context, task_function=task_function, config=job_cfg,
                  job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
    status_file = Path(str(ret.working_dir)) / JOB_STATUS
    status = json.loads(status_file.read_text()) if status_file.exists() else None
    placement = {"ray_node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
                 "pid": os.getpid(), "node_pool": os.environ.get(NODE_POOL_ENV)}
    return ret, status, placement


def _job_dir(job_cfg: DictConfig) -> Path:
    return Path(str(job_cfg.hydra.sweep.dir)) / str(job_cfg.hydra.sweep.subdir)


def _collect(ray: Any, ref: Any, job_cfg: DictConfig, overrides: list[str]) -> JobReturn:
    """The job's result; a job lost with its node (after Ray's retries) is recorded, not raised, so the sweep
    summary still runs and names it."""
    from pipeline.jsonio import write_json
    from pipeline.sweep.job import JOB_STATUS

    job_dir = _job_dir(job_cfg)
    job_dir.mkdir(parents=True, exist_ok=True)
    try:
        ret, status, placement = ray.get(ref)
    except ray.exceptions.RayError as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        log.error("job %s did not finish: %s", job_dir.name, reason)
        write_json(job_dir / JOB_STATUS, {"status": "did not finish", "error": f"lost on the Ray cluster: {reason}"})
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        if not overrides_file.exists():  # the node died before Hydra wrote it: the summary still names the job
            overrides_file.parent.mkdir(parents=True, exist_ok=True)
            overrides_file.write_text(OmegaConf.to_yaml(OmegaConf.create(overrides)))
        return JobReturn(overrides=overrides, cfg=job_cfg, working_dir=str(job_dir), status=JobStatus.COMPLETED,
                         _return_value=None)
    if status is not None and not (job_dir / JOB_STATUS).exists():  # job dirs not shared between hosts
        write_json(job_dir / JOB_STATUS, status)
    write_json(job_dir / PLACEMENT, placement)
    return ret
