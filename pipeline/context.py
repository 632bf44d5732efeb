"""The run context: how this invocation runs, as opposed to what the experiment is (the config).

WHY a separate object: these settings never change results (progress bars, the sweep a job belongs to, a one-off
verification level), so they must not enter the config hash or params.yaml — and they used to travel as hidden
``ODEVAL_*`` environment variables set in one module and read in another. Entry points (``stage_main``, the Hydra
app) build one :class:`RunContext` and pass it down explicitly.

The environment variables odeval still reads are listed in :data:`ENV_VARS` (and in the README): each is read in
exactly one place, either here (:meth:`RunContext.from_env`) or by the module named.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

# name -> (who reads it, what it does). The only environment variables odeval reads (a test keeps this complete).
ENV_VARS: dict[str, tuple[str, str]] = {
    "HF_TOKEN": ("huggingface_hub", "token for gated/private repos; never written anywhere"),
    "DVC_STAGE": ("pipeline.stages", "set by DVC for a stage's command: an interrupted stage says `dvc repro` resumes"),
    "DVC_EXP_NAME": ("pipeline.stages, pipeline.tracking", "set by `dvc exp run`: the experiment's name (MLflow tag; "
                     "how to resume an interrupted stage)"),
    "CI": ("pipeline.context", "`true`: no progress bars"),
    "ODEVAL_QUIET": ("pipeline.context", "`1`: no progress bars (like --quiet)"),
    "ODEVAL_ROOT": ("pipeline.workspace", "the repo root that shared state (mlflow.db, caches, virtual devices) "
                    "resolves against, when the cwd is not inside it"),
    "ODEVAL_CACHE": ("pipeline.models.tiny", "the machine-wide content-addressed cache of built/converted models "
                     "(default ~/.cache/odeval); each checkout's `paths.cache` holds hard links into it"),
    "ODEVAL_HASH_CACHE": ("pipeline.fetch.manifest", "where the host's sha256 cache lives (default: in ODEVAL_CACHE)"),
    "ODEVAL_ADB": ("pipeline.device.adb", "the adb binary to use (default: the one in the adbutils wheel)"),
    "ODEVAL_NODE_POOL": ("pipeline.cluster", "set by `python -m pipeline.cluster ray-start` on a Ray node: the "
                         "host's pool file; pool jobs placed on that node lease only its phones"),
    "ODEVAL_VIRTUAL_ROOT": ("pipeline.virtual.__main__", "default --root of `python -m pipeline.virtual`"),
    "ODEVAL_ENGINE": ("pipeline.guest.reference_app", "reference app engine: `numpy` or `torch` (default: automatic)"),
    "ODEVAL_THREADS": ("pipeline.guest.reference_app", "CPU threads of the reference app's engine"),
    "ODEVAL_APP_DEBUG": ("pipeline.guest.reference_app", "`1`: the reference app reports its load time on stderr"),
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
    "ODEVAL_STANDIN_MODEL": ("pipeline.guest.reference_app", "internal: `device.virtual.standin_model`"),
    "ODEVAL_FAULT_CRASH_AFTER_TOKENS": ("pipeline.guest.reference_app", "internal: injected fault"),
    "ODEVAL_FAULT_HANG": ("pipeline.guest.reference_app", "internal: injected fault"),
    "ODEVAL_FAULT_INVALID_UTF8": ("pipeline.guest.reference_app", "internal: injected fault"),
    "ODEVAL_FAULT_": ("pipeline.virtual.app_launch", "internal prefix of the injected-fault variables above"),
    "ODEVAL_DEVICE_": ("pipeline.virtual.app_launch", "internal prefix: the device's LD_LIBRARY_PATH / "
                       "ADSP_LIBRARY_PATH passed to the app for information, renamed"),
}


@dataclass(frozen=True)
class RunContext:
    """Per-invocation settings passed explicitly into every stage function.

    ``sweep_id``: the Hydra sweep a job belongs to (its MLflow parent run); ``quiet``: no progress bars;
    ``push_verify``: overrides ``device.push_verify`` for this invocation (``push --verify full``);
    ``push_mover``: ``sync`` (built-in sync client) or ``adb`` (the adb binary's push).
    """

    quiet: bool = False
    sweep_id: str | None = None
    push_verify: str | None = None
    push_mover: str = "sync"

    @classmethod
    def from_env(cls, **overrides: object) -> RunContext:
        """The context of a command-line invocation: ``CI=true`` / ``ODEVAL_QUIET=1`` mean quiet."""
        quiet = bool(os.environ.get("ODEVAL_QUIET")) or os.environ.get("CI", "").lower() == "true"
        return replace(cls(quiet=quiet), **overrides)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> RunContext:
        return replace(self, **changes)  # type: ignore[arg-type]
