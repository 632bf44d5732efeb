"""Native programs on the virtual device: a pushed file runs on the host only as a *registered* build.

The registry is host-side: the daemon's lookup of this machine's llama.cpp build (:func:`pipeline.llama_cpp.
registered`, in the unconfined broker, when each stream starts and at each exec, so a build made after the daemon
started is found). When the shell is asked to execute a file whose name is a registered program
(``llama-completion``, ``llama-bench``), the daemon hashes the pushed bytes (in-root, through the device's own
view) and runs **its own copy** of the build only when the sha256 is the registered build's; any other file —
a shell script named ``llama-completion``, a patched binary, a symlink to a host file — is refused and logged. So
nothing the device side writes chooses what runs on the host; what the build may touch is the kernel's business:

- it runs in its own Landlock domain (:func:`pipeline.virtual.confine.native_ruleset`): the system libraries, the
  build's own directory, the device storage and its scratch dir — not the Python runtime, not the repository,
  not ``$HOME`` or the rest of the cache;
- its argv is the device's, with every absolute device path turned into the same path inside the storage (the
  program opens files itself; a symlink inside the storage that points out of it meets the domain's walls);
- its environment is the daemon's allowlist (:func:`pipeline.context.forwarded_env`): no device variable
  reaches it (``LD_PRELOAD`` on the device command line is refused and logged, like every other one).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
from pathlib import Path

from pipeline import llama_cpp
from pipeline.virtual.shell_api import Session

log = logging.getLogger("odeval.virtual.security")
NAMES = frozenset(llama_cpp.BINARIES)


_MEMO: dict[tuple[int, int, int, int, int], str] = {}


def pushed_sha256(sh: Session, path: str) -> str:
    """sha256 of the device file ``path`` (read in-root), memoised by (device, inode, size, mtime, ctime): the
    kernel sets ctime on every change, so a rewritten file is hashed again."""
    fd = sh.fs.open(path, os.O_RDONLY, cwd=sh.cwd)
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key in _MEMO:
            return _MEMO[key]
        h = hashlib.sha256()
        while block := os.read(fd, 1 << 20):
            h.update(block)
    finally:
        os.close(fd)
    if len(_MEMO) > 64:
        _MEMO.clear()
    _MEMO[key] = h.hexdigest()
    return _MEMO[key]


def registered_program(sh: Session, path: str) -> Path | None:
    """The host binary to run for the device file ``path``, or None (refused and logged): its name must be a
    registered program's and its bytes the registered build's."""
    name = posixpath.basename(path)
    if name not in NAMES:
        return None
    try:
        sha = pushed_sha256(sh, path)
    except OSError as e:
        log.warning("refused: exec of %r (cannot read it: %s)", path, e.strerror)
        return None
    program = sh.d.native_program(name, sha)
    if program is None:
        log.warning("refused: exec of %r (sha256 %s is not this machine's registered %s build)", path, sha[:16],
                    name)
    return program


def native_argv(sh: Session, program: Path, argv: list[str]) -> list[str]:
    """The host argv: the registered binary, then the device's arguments with absolute device paths mapped into the
    storage (``/data/x`` → ``<storage>/data/x``, normalised first so ``..`` cannot climb out)."""
    root = str(sh.sb.root)
    return [str(program), *(root + sh.sb.normalize(a) if a.startswith("/") else a for a in argv[1:])]
