"""What device-side code may touch on the host, as Landlock rulesets (:mod:`pipeline.virtual.landlock`).

Two domains, the second nested in the first:

- **device** (every shell session and sync stream of the daemon, and all they start): write the device storage and
  the host-private app scratch dir; read and execute what the apps must run — the Python runtime, the system
  libraries, the project's ``pipeline`` package (not the repo: it can hold tokens, MLflow stores, notes), and
  read-only the host dirs the daemon was started with (a stand-in model, a test hook's files).
- **app** (one per ``simple_app`` start): the same reads and storage writes (an app may write in its dir, as
  on a phone), its own scratch dir for the model view (:mod:`pipeline.guest.device_view`); not the other apps'
  scratch dirs.

Neither grants ``$HOME``, ``/etc`` (but ``ld.so.cache``/``localtime``), ``/tmp``, ``/proc`` (but ``cpuinfo``), the
daemon's state dir, or any TCP port.  When the kernel cannot enforce this the daemon refuses to start
(:func:`check_available`) unless the user opted out (``device.virtual.sandbox=off``).
"""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

from pipeline.rootfs import openat2_available
from pipeline.virtual import landlock

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../pipeline
SYSTEM_READ_EXEC = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin")
SYSTEM_READ = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/proc/cpuinfo",
               "/sys/devices/system/cpu", "/sys/fs/cgroup/cpu.max", "/dev/urandom", "/dev/random")
SYSTEM_READ_WRITE_FILES = ("/dev/null", "/dev/zero")
SANDBOX_MODES = ("on", "off")


class SandboxUnavailable(Exception):
    """The kernel cannot confine the device side; the message names what is missing and the opt-out."""


def runtime_dirs() -> list[str]:
    """The Python installation and its package dirs (venv and base), never a dir that contains this repo."""
    repo = PACKAGE_DIR.parent
    cwd = Path.cwd().resolve()
    found: list[str] = []
    candidates = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
                  os.path.dirname(os.path.realpath(sys.executable)),
                  *(sysconfig.get_paths().get(k, "") for k in ("stdlib", "platstdlib", "purelib", "platlib")),
                  *sys.path]
    for c in candidates:
        if not c or not os.path.isdir(c):
            continue
        real = Path(os.path.realpath(c))
        inside_repo = real.is_relative_to(repo) and not real.is_relative_to(repo / ".venv")
        if inside_repo or repo.is_relative_to(real) or real == cwd:
            continue  # the repo (or a parent of it) on sys.path, the cwd: the package dir alone is granted, below
        if str(real) not in found:
            found.append(str(real))
    return found


def _add(rs: landlock.Ruleset, paths: Iterable[str | os.PathLike[str]], rights: int) -> None:
    for p in paths:
        if p:
            rs.allow(p, rights)


def _base(extra_read: Iterable[str]) -> landlock.Ruleset:
    rs = landlock.Ruleset()
    _add(rs, SYSTEM_READ_EXEC, landlock.READ_EXEC)
    _add(rs, SYSTEM_READ, landlock.READ)
    _add(rs, SYSTEM_READ_WRITE_FILES, landlock.READ | landlock.WRITE_FILE)
    _add(rs, runtime_dirs(), landlock.READ_EXEC)
    _add(rs, [PACKAGE_DIR], landlock.READ_EXEC)
    _add(rs, extra_read, landlock.READ_EXEC)
    return rs


def device_ruleset(storage: Path, scratch: Path, extra_read: Iterable[str] = ()) -> landlock.Ruleset:
    """The domain of every thread that serves a device stream (and of all it starts)."""
    rs = _base(extra_read)
    rs.allow(storage, landlock.READ_EXEC | landlock.WRITE)
    rs.allow(scratch, landlock.READ | landlock.WRITE)
    return rs


def app_ruleset(storage: Path, scratch: Path, extra_read: Iterable[str] = ()) -> landlock.Ruleset:
    """The (nested) domain of one app process: the storage, its own scratch dir for the model view."""
    rs = _base(extra_read)
    rs.allow(storage, landlock.READ_EXEC | landlock.WRITE)
    rs.allow(scratch, landlock.READ | landlock.WRITE)
    return rs


def native_ruleset(storage: Path, scratch: Path, build_dir: Path) -> landlock.Ruleset:
    """The (nested) domain of one registered native program (llama.cpp): the system libraries, its own build dir,
    the storage and its scratch dir — no Python runtime, no package, nothing else of the host."""
    rs = landlock.Ruleset()
    _add(rs, SYSTEM_READ_EXEC, landlock.READ_EXEC)
    _add(rs, SYSTEM_READ, landlock.READ)
    _add(rs, SYSTEM_READ_WRITE_FILES, landlock.READ | landlock.WRITE_FILE)
    rs.allow(build_dir, landlock.READ_EXEC)
    rs.allow(storage, landlock.READ_EXEC | landlock.WRITE)
    rs.allow(scratch, landlock.READ | landlock.WRITE)
    return rs


def check_available() -> str:
    """A one-word description of the confinement (``landlock-abi7``), or :class:`SandboxUnavailable`."""
    if not openat2_available():
        raise SandboxUnavailable("the kernel has no openat2 (Linux ≥ 5.6), which the virtual device needs to "
                                 "resolve device paths inside its storage")
    abi = landlock.abi_version()
    if abi < 1:
        raise SandboxUnavailable(
            "Landlock is not available (Linux ≥ 5.13 with landlock in the lsm= boot list; some container runtimes "
            "block its syscalls), so the virtual device cannot be confined by the kernel. Enable it, or accept an "
            "unconfined virtual device explicitly: device.virtual.sandbox=off (`--sandbox off`)")
    return f"landlock-abi{abi}"
