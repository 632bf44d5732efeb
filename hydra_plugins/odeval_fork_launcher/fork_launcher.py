"""Hydra launcher ``hydra/launcher=pool``: parallel jobs in FORKED worker processes that warm up in the background.

Why not the joblib launcher: it hard-codes joblib's loky backend, whose workers start as fresh interpreters and
each import/load everything at the moment a stage needs it. Measured with 3 workers on 2 cores
(benchmarks/pool_speedup.py): each worker's first job spent 30-80 s in fetch and score doing exactly that, all
three at once, which made a 3-device sweep slower than the serial one. Here the workers are forked from the sweep
process (``multiprocessing`` "fork" context, cheap: nothing heavy is loaded before the fork), and each one starts a
daemon thread that imports matplotlib/MLflow and loads the embedding model (``pipeline.sweep.warmup``)
while its first job runs its prompts on the device — time in which a device-bound job's host is idle. (A preload
in the sweep process before forking delayed every first job by the whole preload; one started at the fork competed
for the GIL with the job's fetch and push.)

The jobs themselves run exactly as under the joblib launcher (Hydra's ``execute_job``: per-job config, output
dir, logging), so job dirs, the pool leases, MLflow parent/child runs and ``SweepSummary`` are unchanged. The
job list travels to the workers inside a :class:`pipeline.sweep.forked.ForkedJobs` through the fork, not pickled:
only the job index goes down and only the ``JobReturn`` comes back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class ForkPoolLauncher(Launcher):
    """``n_jobs`` forked workers; ``preload``: each worker loads the host side in a background thread (module doc)."""

    def __init__(self, n_jobs: int = 3, preload: bool = True) -> None:
        self.n_jobs = int(n_jobs)
        self.preload = bool(preload)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None and self.task_function is not None and self.hydra_context is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        n = max(1, min(self.n_jobs, len(job_overrides)))
        log.info("ForkPoolLauncher(n_jobs=%d) is launching %d jobs in %s", n, len(job_overrides),
                 self.config.hydra.sweep.dir)
        for idx, overrides in enumerate(job_overrides):
            log.info("\t#%d : %s", initial_job_idx + idx, " ".join(filter_overrides(overrides)))
        from pipeline.sweep.forked import ForkedJobs

        state = Singleton.get_state()
        jobs = [(initial_job_idx + idx, overrides, self.hydra_context, self.config, self.task_function, state)
                for idx, overrides in enumerate(job_overrides)]
        if self.preload and n > 1:
            log.info("ForkPoolLauncher: each worker preloads the host side in the background")
        return ForkedJobs(jobs, n, warm=self.preload).run_all()
