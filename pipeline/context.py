"""The run context: how this invocation runs, as opposed to what the experiment is (the config).

WHY a separate object: these settings never change results (progress bars, the sweep a job belongs to, a one-off
verification level), so they must not enter the config hash or params.yaml — and they used to travel as hidden
``ODEVAL_*`` environment variables set in one module and read in another. Entry points (``stage_main``, the Hydra
app) build one :class:`RunContext` and pass it down explicitly.

The environment variables odeval still reads are listed in :data:`ENV_VARS` (and in docs/configuration.md): each
is read in exactly one place, the module named (a test checks it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

# name -> (who reads it, what it does). The only environment variables odeval reads (a test keeps this complete).
ENV_VARS: dict[str, tuple[str, str]] = {
    "HF_TOKEN": ("pipeline.fetch.hub_errors", "huggingface_hub's token for gated/private repos; odeval only scrubs "
                 "it from messages; never written anywhere, never forwarded to the virtual device"),
    "HUGGING_FACE_HUB_TOKEN": ("pipeline.fetch.hub_errors", "the old name of HF_TOKEN: scrubbed the same way"),
    "HF_ENDPOINT": ("pipeline.fetch.hub", "the Hub's address (default https://huggingface.co); the tests point it at "
                    "a local Hub-compatible server"),
    "HF_HUB_OFFLINE": ("pipeline.fetch.hub", "`1`: fetch uses the local Hub cache only (an error names what is "
                       "missing)"),
    "DVC_EXP_NAME": ("pipeline.context", "set by `dvc exp run`: the MLflow tag dvc.exp_name; how to resume a stage"),
    "DVC_STAGE": ("pipeline.context", "set by DVC for a stage's command: an interrupted stage says `dvc repro`"),
    "HOME": ("pipeline.device.connect", "where adb keeps this host's key (~/.android/adbkey.pub, for AUTH hints)"),
    "PYTHONPATH": ("pipeline.cluster", "kept, behind this checkout, on the `ray start` line it prints"),
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": ("pipeline.tracking.store", "MLflow's; bounded to 2 unless you set it"),
    "MLFLOW_HTTP_REQUEST_TIMEOUT": ("pipeline.tracking.store", "MLflow's; bounded to 10 s unless you set it"),
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": ("pipeline.tracking.store", "MLflow's; bounded to 1 unless you set it"),
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": ("pipeline.report.runs", "MLflow's; off while the report downloads "
                                             "artifacts, unless you set it"),
    "scoring.judge.api_key_env": ("pipeline.quality.judge", "the variable this config key names holds the judge's "
                                  "API key (read there, never logged)"),
    "CI": ("pipeline.context", "`true`: no progress bars"),
    "ODEVAL_QUIET": ("pipeline.context", "`1`: no progress bars (like --quiet)"),
    "ODEVAL_ROOT": ("pipeline.workspace", "the repo root that shared state (mlflow.db, caches, virtual devices) "
                    "resolves against, when the cwd is not inside it"),
    "ODEVAL_CACHE": ("pipeline.workspace", "the machine-wide content-addressed cache of built/converted models "
                     "(default ~/.cache/odeval); each checkout's `paths.cache` holds hard links into it"),
    "ODEVAL_HASH_CACHE": ("pipeline.fetch.manifest", "where the host's sha256 cache lives (default: in ODEVAL_CACHE)"),
    "ODEVAL_ADB": ("pipeline.device.adb", "the adb binary to use (default: the one in the adbutils wheel)"),
    "ODEVAL_NODE_POOL": ("pipeline.cluster", "set by `python -m pipeline.cluster ray-start` on a Ray node: the "
                         "host's pool file; pool jobs placed on that node lease only its phones"),
    "ODEVAL_VIRTUAL_ROOT": ("pipeline.virtual.__main__", "default --root of `python -m pipeline.virtual`"),
    "ODEVAL_ENGINE": ("pipeline.guest.engine", "reference app engine: `native`, `numpy` or `torch` (default: "
                      "automatic — native when its kernel is built, numpy for A8 models)"),
    "ODEVAL_THREADS": ("pipeline.guest.engine", "CPU threads of the reference app's engine (the run stage sets it "
                       "from `app.threads`; default: half the host's CPUs, 1 on a 2-core host)"),
    "ODEVAL_APP_DEBUG": ("pipeline.guest.reference_app", "`1`: the reference app reports its load time, engine, "
                         "threads and each prompt's prefill mode on stderr"),
    "CC": ("pipeline.native_kernel", "the C compiler for the reference app's native kernel (default: `cc`/`gcc` on "
           "PATH); part of the kernel's build key (and of llama.cpp's)"),
    "CXX": ("pipeline.llama_cpp", "the C++ compiler for the host build of llama.cpp (`app=llama-cpp`; default: "
            "`c++`/`g++` on PATH); part of its build key"),
    "ODEVAL_TEMPLATE": ("pipeline.guest.reference_app", "set by the run stage on the device command line: the "
                        "reference app's prompt template (`app.template`)"),
    "ODEVAL_QUIRK_PAST_END_TOKEN": ("pipeline.guest.reference_app", "set by the run stage: `app.past_end_token`"),
    # set by the virtual device for the app it launches (internal; never taken from the device side)
    "ODEVAL_ROOT_FD": ("pipeline.guest.device_view", "internal: the inherited fd of the device's / (model dirs are "
                       "resolved inside it by the kernel)"),
    "ODEVAL_DEVICE_CWD": ("pipeline.guest.device_view", "internal: the device shell's cwd when the app started"),
    "ODEVAL_APP_SCRATCH": ("pipeline.guest.device_view", "internal: the app's host-private dir for its model views"),
    "ODEVAL_VIRTUAL_PID": ("pipeline.guest.reference_app", "internal: the app's pid as the device shows it"),
    "ODEVAL_AUDIT_FD": ("pipeline.guest.reference_app", "internal: where the app reports refusals to the daemon log"),
    "ODEVAL_STANDIN_MODEL": ("pipeline.guest.engine", "internal: `device.virtual.standin_model`"),
    "ODEVAL_QKERNEL": ("pipeline.native_kernel", "internal: the native kernel the confined app may load (or "
                       "`unavailable: <why>`)"),
    "ODEVAL_FAULT_CRASH_AFTER_TOKENS": ("pipeline.guest.reference_app", "internal: injected fault"),
    "ODEVAL_FAULT_HANG": ("pipeline.guest.reference_app", "internal: injected fault"),
    "ODEVAL_FAULT_INVALID_UTF8": ("pipeline.guest.reference_app", "internal: injected fault"),
    "ODEVAL_FAULT_": ("pipeline.virtual.app_launch", "internal prefix of the injected-fault variables above"),
    "ODEVAL_DEVICE_": ("pipeline.virtual.app_launch", "internal prefix: the device's LD_LIBRARY_PATH / "
                       "ADSP_LIBRARY_PATH passed to the app for information, renamed"),
}


# What the virtual device's daemon and the apps it starts get from your environment — nothing else (no HF_TOKEN,
# no other user variable): the locale and time zone, BLAS/OpenMP thread settings and OpenBLAS's CPU override
# (wrong results without it on some CPUs), the reference app's engine knobs, the Hub's offline switches, and where
# the reference app's native kernel and llama.cpp are built (the daemon looks them up by the compilers' identity:
# pipeline/native_kernel.py, pipeline/llama_cpp.py).
FORWARDED = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "MKL_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "ODEVAL_THREADS", "ODEVAL_ENGINE",
             "ODEVAL_APP_DEBUG", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "ODEVAL_CACHE", "CC", "CXX")


def forwarded_env() -> dict[str, str]:
    """The :data:`FORWARDED` variables that are set: the virtual device's whole inherited environment."""
    return {k: os.environ[k] for k in FORWARDED if k in os.environ}


@dataclass(frozen=True)
class RunContext:
    """Per-invocation settings passed explicitly into every stage function.

    ``sweep_id``: the Hydra sweep a job belongs to (its MLflow parent run); ``quiet``: no progress bars;
    ``push_verify``: overrides ``device.push_verify`` for this invocation (``push --verify full``);
    ``push_mover``: ``sync`` (built-in sync client) or ``adb`` (the adb binary's push); ``dvc_exp_name`` /
    ``under_dvc``: whether DVC started this process (how to resume it, what the results are tagged with).
    """

    quiet: bool = False
    sweep_id: str | None = None
    push_verify: str | None = None
    push_mover: str = "sync"
    dvc_exp_name: str | None = None  # `dvc exp run` sets DVC_EXP_NAME: recorded with the results
    under_dvc: bool = False  # DVC started this process (DVC_STAGE): `dvc repro` resumes it

    @classmethod
    def from_env(cls, **overrides: object) -> RunContext:
        """The context of a command-line invocation: ``CI=true`` / ``ODEVAL_QUIET=1`` mean quiet."""
        quiet = bool(os.environ.get("ODEVAL_QUIET")) or os.environ.get("CI", "").lower() == "true"
        ctx = cls(quiet=quiet, dvc_exp_name=os.environ.get("DVC_EXP_NAME") or None,
                  under_dvc=bool(os.environ.get("DVC_STAGE")))
        return replace(ctx, **overrides)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> RunContext:
        return replace(self, **changes)  # type: ignore[arg-type]
