"""Landlock (Linux ≥ 5.13) through ctypes: the kernel, not our path checks, decides what device-side code may open.

A :class:`Ruleset` lists the host hierarchies that may be read (and executed) or written; :meth:`Ruleset.enforce`
applies it to the *calling thread* and everything that thread starts afterwards (threads and processes).  Once
enforced it cannot be lifted, only narrowed by a further ruleset.  Every filesystem right the running kernel knows
is "handled" (denied unless a rule grants it), TCP bind/connect are handled with no rule (device-side code opens no
TCP socket), and signals and abstract unix sockets are scoped to the domain (ABI ≥ 6).

Facts this module relies on (measured on kernel 6.18, ABI 7): Landlock checks ``open``/``execve``/``mkdir``/…
against the path the file really has, so a symlink, a ``..`` or a rename race cannot reach a hierarchy no rule
grants; it does not check ``stat``; a ruleset fd can be enforced by many threads; a new thread or child inherits
the creating thread's domain.  As root, ``/proc/<pid>/environ`` of an unconfined process stays readable through
Landlock (CAP_SYS_PTRACE): rulesets here therefore never grant ``/proc`` as a whole.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import stat

# syscall numbers: the same on every architecture (allocated after the unified syscall table, Linux 5.13)
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
REMOVE_DIR, REMOVE_FILE, MAKE_CHAR, MAKE_DIR, MAKE_REG = 1 << 4, 1 << 5, 1 << 6, 1 << 7, 1 << 8
MAKE_SOCK, MAKE_FIFO, MAKE_BLOCK, MAKE_SYM = 1 << 9, 1 << 10, 1 << 11, 1 << 12
REFER, TRUNCATE, IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV  # the only rights a rule on a file may carry
READ = READ_FILE | READ_DIR
READ_EXEC = READ | EXECUTE
WRITE = (WRITE_FILE | REMOVE_DIR | REMOVE_FILE | MAKE_DIR | MAKE_REG | MAKE_SYM | MAKE_FIFO | MAKE_SOCK | REFER
         | TRUNCATE)
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1  # ABI 4
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1  # ABI 6


class LandlockError(OSError):
    """Landlock is missing, disabled or refused a rule; the message says which and what to do."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


_libc: ctypes.CDLL | None = None


def _syscall(*args: object) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    result = _libc.syscall(*args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(result)


def abi_version() -> int:
    """The kernel's Landlock ABI (0 when absent or disabled at boot)."""
    if platform.system() != "Linux":
        return 0
    try:
        return _syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint(_CREATE_RULESET_VERSION))
    except OSError:
        return 0


def _prctl_no_new_privs() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise LandlockError(err, f"prctl(PR_SET_NO_NEW_PRIVS) failed: {os.strerror(err)}")


class Ruleset:
    """A Landlock ruleset being built: ``allow(path, rights)`` then ``enforce()`` (per thread, repeatable)."""

    def __init__(self) -> None:
        abi = abi_version()
        if abi < 1:
            raise LandlockError(errno.ENOSYS, "Landlock is not available in this kernel (needs Linux ≥ 5.13 with "
                                              "landlock in the lsm= boot list)")
        self.abi = abi
        self.fs = _FS_BY_ABI.get(abi, (1 << 16) - 1)
        attr = _RulesetAttr(self.fs, (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0,
                            (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0)
        size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
        try:
            self.fd = _syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint(0))
        except OSError as e:
            raise LandlockError(e.errno, f"landlock_create_ruleset failed: {e.strerror}") from None
        self.rules: list[tuple[str, int]] = []

    def allow(self, path: str | os.PathLike[str], rights: int) -> bool:
        """Grant ``rights`` beneath ``path`` (a file: only its file rights).  A missing path is skipped (False)."""
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
            access = (rights if is_dir else rights & FILE_RIGHTS) & self.fs
            if not access:
                return False
            attr = _PathBeneathAttr(access, fd)
            try:
                _syscall(_SYS_ADD_RULE, self.fd, _RULE_PATH_BENEATH, ctypes.byref(attr), ctypes.c_uint(0))
            except OSError as e:
                raise LandlockError(e.errno, f"landlock_add_rule({os.fspath(path)}) failed: {e.strerror}") from None
        finally:
            os.close(fd)
        self.rules.append((os.fspath(path), access))
        return True

    def enforce(self) -> None:
        """Confine the calling thread (and all it starts from now on) to the rules; irreversible."""
        _prctl_no_new_privs()
        try:
            _syscall(_SYS_RESTRICT_SELF, self.fd, ctypes.c_uint(0))
        except OSError as e:
            raise LandlockError(e.errno, f"landlock_restrict_self failed: {e.strerror}") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Ruleset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
