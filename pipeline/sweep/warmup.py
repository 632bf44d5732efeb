"""A forked sweep worker's warm-up (``hydra/launcher=pool``): import the heavy host-side modules and load the
embedding model in a background thread while the worker's first job waits on its device.

WHY in the worker, in the background, during ``run``: a device-bound job spends most of its time waiting on the
device; loading matplotlib, MLflow and the embedding model meanwhile hides them. A preload in the sweep process
before forking delayed every first job (0.6-5 s measured, benchmarks/pool_speedup.py), and one started at fork
competed for the GIL with the job's own fetch/push. A stage that needs a module before the thread has it simply
waits on Python's import lock / the model lock.
"""

from __future__ import annotations

import sys
import threading
from typing import Any


def preload_host_side(config: Any, quiet: bool = False) -> dict[str, float]:
    """Import the heavy modules of fetch/push/run/score and load the embedding model of the sweep's base config
    in this process (seconds per item returned). Nothing here starts threads or opens the MLflow store; a failure
    is left for the job to report."""
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
    return took


class Warmup:
    """This worker's warm-up: :meth:`schedule` (when the worker is forked) names the sweep config, :meth:`start`
    (when its first job reaches ``run``) starts the thread once; ``done`` is set when it has finished."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self._config: Any = None
        self._lock = threading.Lock()

    def schedule(self, config: Any) -> None:
        with self._lock:
            self._config = config if config is not None else {}

    def start(self) -> None:
        with self._lock:
            config, self._config = self._config, None
        if config is not None and not self.done.is_set():
            threading.Thread(target=self._run, args=(config,), daemon=True, name="odeval-preload").start()

    def _run(self, config: Any) -> None:
        try:
            preload_host_side(config, quiet=True)
        finally:
            self.done.set()


this_worker = Warmup()  # the process's own; a forked worker schedules its copy itself (pipeline/sweep/forked.py)
