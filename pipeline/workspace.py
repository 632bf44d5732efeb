"""Where things live. Two roots matter because DVC runs queued experiments in a temporary copy of the repo.

``workdir`` is where a stage writes its outputs (the repo for DVC, a job dir for Hydra sweeps). ``shared_root``
is where state that must outlive one run lives: the MLflow database, the model/hash caches and the virtual
device's storage. Inside ``<repo>/.dvc/tmp/exps/<tmp>/`` (a `dvc exp run --queue/--temp` workspace) the shared
root is ``<repo>``, so a queued grid logs to the same ``mlflow.db`` and reuses the same pushed files.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def shared_root(start: Path | None = None) -> Path:
    """The repo whose state (caches, mlflow.db, virtual device) this run shares; ODEVAL_ROOT overrides.

    Starts from the current directory (DVC runs stages in the repo or its temp copy; Hydra jobs keep the cwd),
    never from a job's output dir."""
    if os.environ.get("ODEVAL_ROOT"):
        return Path(os.environ["ODEVAL_ROOT"]).resolve()
    return outside_dvc_temp(start or Path.cwd())


def outside_dvc_temp(path: Path) -> Path:
    """`<repo>/.dvc/tmp/exps/<tmp>/…` → `<repo>` (DVC deletes those copies after the experiment); else `path`."""
    here = path.resolve()
    parts = here.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return here


def resolve(path: str | os.PathLike, base: Path) -> Path:
    """A config path: absolute as given, relative to `base` otherwise."""
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else (base / p)


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_commit(root: Path) -> str | None:
    """HEAD commit sha of the repo at ``root``; None outside a repo, before the first commit, or without git."""
    out = _git(root, "rev-parse", "--verify", "-q", "HEAD")
    return (out.strip() or None) if out else None


def git_dirty(root: Path) -> bool | None:
    """True when tracked files differ from HEAD (None when unknown). Untracked files are ignored on purpose:
    run outputs and scratch files would otherwise mark every run dirty."""
    if git_commit(root) is None:
        return None
    out = _git(root, "status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out.strip())


def cache_home() -> Path:
    """The machine-wide content-addressed cache of built/converted models and host hashes: ``$ODEVAL_CACHE``, else
    ``~/.cache/odeval`` (each checkout's ``paths.cache`` holds hard links into it)."""
    return Path(os.environ.get("ODEVAL_CACHE") or Path.home() / ".cache" / "odeval").expanduser()
