"""The worker pool of ``hydra/launcher=pool``: a sweep's jobs in forked processes.

The jobs (Hydra's per-job arguments: context, config, task function, Singleton state) are handed to the workers by
the fork itself — :class:`ForkedJobs` is the workers' own copy of the launcher's object, never pickled (Hydra's
structured configs and the task function are not picklable across processes); only a job's index goes down a queue
and its portable ``JobReturn`` comes back.  Each worker schedules its warm-up (:mod:`pipeline.sweep.warmup`) before
its first job.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
from dataclasses import dataclass
from typing import Any

from pipeline.sweep.warmup import this_worker


@dataclass
class ForkedJobs:
    """One sweep's jobs, run by ``n`` forked workers (``warm``: each warms itself up in the background)."""

    jobs: list[tuple[Any, ...]]  # (idx, overrides, hydra_context, config, task_function, singleton_state)
    n: int
    warm: bool

    def run_all(self) -> list[Any]:
        if self.n <= 1:  # a serial sweep: same process, same behaviour as the basic launcher
            return [self.run_one(i) for i in range(len(self.jobs))]
        ctx = multiprocessing.get_context("fork")
        todo, done = ctx.SimpleQueue(), ctx.Queue()
        for i in range(len(self.jobs)):
            todo.put(i)
        workers = [ctx.Process(target=self._worker, args=(todo, done), daemon=True, name=f"odeval-worker-{k}")
                   for k in range(self.n)]
        for w in workers:
            todo.put(None)
            w.start()
        results: dict[int, Any] = {}
        try:
            while len(results) < len(self.jobs):
                try:
                    i, ret = done.get(timeout=1.0)
                except queue.Empty:
                    if not any(w.is_alive() for w in workers):
                        break  # a worker died mid-job (killed): its job is reported as not finished
                    continue
                results[i] = ret
        finally:
            for w in workers:
                if w.is_alive():
                    w.terminate()
                w.join()
        return [results[i] if i in results else _lost(i) for i in range(len(self.jobs))]

    def _worker(self, todo: Any, done: Any) -> None:
        if self.warm:
            this_worker.schedule(self.jobs[0][3] if self.jobs else {})
        while (i := todo.get()) is not None:
            done.put((i, self.run_one(i)))

    def run_one(self, index: int) -> Any:
        """Job ``index`` with Hydra's own per-job setup (dirs, logging, config), as the joblib launcher does."""
        from hydra_plugins.hydra_joblib_launcher._core import execute_job

        return _portable(execute_job(*self.jobs[index]))


def _lost(index: int) -> Any:
    """The JobReturn of a job whose worker died: FAILED (the sweep summary names it: no job_status.json)."""
    from hydra.core.utils import JobReturn, JobStatus

    ret = JobReturn()
    ret.status = JobStatus.FAILED
    ret._return_value = RuntimeError(f"job {index}: its worker process died before it finished")
    return ret


def _portable(ret: Any) -> Any:
    """The JobReturn as plain containers: its configs hold structured-config classes that Hydra re-creates per
    process, which plain pickle refuses to send back ("not the same object as ..."); loky's cloudpickle hid it."""
    from omegaconf import OmegaConf

    for name in ("cfg", "hydra_cfg"):
        value = getattr(ret, name, None)
        if value is not None:
            setattr(ret, name, OmegaConf.create(OmegaConf.to_container(value, resolve=False)))
    try:
        pickle.dumps(ret._return_value)
    except Exception as e:  # noqa: BLE001 - an unpicklable result/exception: send its text instead
        ret._return_value = RuntimeError(f"{type(e).__name__} returning the job's result: {ret._return_value!r}")
    return ret
