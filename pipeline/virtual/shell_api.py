"""What a shell builtin sees of the virtual shell: its session (:class:`Session`, a protocol), where its streams
go (:class:`Ctx`), and the helpers every builtin shares (flags, errors, bytes).

WHY a module of its own: the builtins, the app launcher and the process table need these, and the interpreter
(:mod:`pipeline.virtual.shell`) needs the builtins — with the contract here, the interpreter imports its builtins
and nothing imports the interpreter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol


class Session(Protocol):
    """The interpreter state a builtin or the app launcher may use (implemented by pipeline.virtual.shell)."""

    d: Any  # the daemon: faults, sandbox, process table, broker, confinement
    sb: Any  # the device storage (pipeline.virtual.sandbox.Sandbox)
    fs: Any  # its in-root file operations (pipeline.rootfs.DeviceRoot)
    io: Any  # stdin/stdout/stderr of the stream (pipeline.virtual.shell_io.ShellIO)
    cwd: str
    vars: dict[str, str]
    exported: set[str]
    vpid: int
    proc: Any
    status: int

    @property
    def aborted(self) -> bool: ...

    def sleep(self, seconds: float) -> bool: ...

    def adopt(self, child: Any) -> None: ...

    def release(self, child: Any) -> None: ...


class ShellExit(Exception):
    """``exit N``: ends the script with status N."""

    def __init__(self, code: int) -> None:
        self.code = code


@dataclass
class Ctx:
    """Where one command's streams go (after redirections)."""

    out: Callable[[bytes], None]
    err: Callable[[bytes], None]
    read_in: Callable[[], bytes]
    out_file: Any = None
    err_file: Any = None
    in_file: Any = None
    err_to_out: bool = False


def to_bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")



Builtin = Callable[[Session, list[str], Ctx], int]


def split_flags(args: list[str], allowed: str) -> tuple[set[str], list[str]]:
    """Split leading single-letter flags (``-rf``) from operands; ``--`` ends flags."""
    flags: set[str] = set()
    rest = list(args)
    while rest and rest[0].startswith("-") and rest[0] != "-":
        a = rest.pop(0)
        if a == "--":
            break
        if not all(ch in allowed for ch in a[1:]):
            rest.insert(0, a)
            break
        flags.update(a[1:])
    return flags, rest


def report_error(ctx: Ctx, cmd: str, path: str, exc: BaseException) -> None:
    if isinstance(exc, OSError):
        msg = exc.strerror or "Input/output error"  # str(exc) of e.g. shutil.Error lists host paths
    else:
        msg = str(exc)
    ctx.err(to_bytes(f"{cmd}: {path}: {msg}\n"))


def each_path(ctx: Ctx, cmd: str, paths: list[str], op: Callable[[str], object],
              tolerated: type[OSError] | None = None) -> int:
    """``op`` on every path, as coreutils do: an error is reported (``cmd: path: reason``) and the rest still run;
    exit 1 if any failed. ``tolerated`` is the error a flag makes silent (``mkdir -p``: exists; ``rm -f``: missing)."""
    status = 0
    for p in paths:
        try:
            op(p)
        except OSError as e:
            if tolerated is not None and isinstance(e, tolerated):
                continue
            report_error(ctx, cmd, p, e)
            status = 1
    return status
