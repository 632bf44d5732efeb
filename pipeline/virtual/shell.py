"""A small toybox-like shell for the virtual device — never the host ``/bin/sh``: the interpreter (:class:`Session`)
and the ``shell:``/``exec:`` service entry point.

Why an interpreter of our own: every command line the host sends (built with ``shlex.quote``) must be parsed exactly
like a phone's ``sh`` would parse it, and nothing in it may ever reach a host shell.  The job is split by module:
:mod:`~pipeline.virtual.shell_parse` (lexer/parser), this module (variables, expansion, redirections, dispatch),
:mod:`~pipeline.virtual.shell_builtins` and :mod:`~pipeline.virtual.fs_builtins` (builtins on the sandbox),
:mod:`~pipeline.virtual.app_launch` (executing a file named ``simple_app`` starts the host reference app, with an
allowlisted environment, in its own process group wired to the stream), :mod:`~pipeline.virtual.shell_io`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import posixpath
import re
import signal
import stat as statmod
import subprocess
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pipeline.virtual import fs_builtins, shell_builtins
from pipeline.virtual.app_launch import APP_BASENAME, run_app
from pipeline.virtual.native_apps import NAMES as NATIVE_NAMES
from pipeline.virtual.native_apps import registered_program
from pipeline.virtual.procs import ProcessTable, VProc, kill_group
from pipeline.virtual.props import DEVICE_ENV, VIRTUAL_PROPS
from pipeline.virtual.sandbox import Sandbox
from pipeline.virtual.shell_api import Ctx, ShellExit, to_bytes
from pipeline.virtual.shell_io import MemoryIO, ShellIO, StreamIO
from pipeline.virtual.shell_parse import ASSIGN, Command, ShellSyntaxError, Word, lex, parse
from pipeline.virtual.space import NoSpace

if TYPE_CHECKING:
    from pipeline.virtual.adbd import Stream
    from pipeline.virtual.daemon import Daemon

__all__ = ["Session", "serve_shell_stream", "parse_service", "MemoryIO", "ShellIO", "StreamIO", "ShellSyntaxError",
           "lex", "parse", "ProcessTable", "VProc", "VIRTUAL_PROPS", "DEVICE_ENV", "APP_BASENAME", "BUILTINS"]
log = logging.getLogger("odeval.virtual.security")


BUILTINS = {**shell_builtins.BUILTINS, **fs_builtins.BUILTINS}  # every command the shell knows; others: not found


class Session:
    """One shell invocation: variables, cwd, the session's virtual pid, and the builtins."""

    def __init__(self, daemon: Daemon, io: ShellIO, env: dict[str, str] | None = None) -> None:
        self.d = daemon
        self.sb: Sandbox = daemon.sandbox
        self.fs = daemon.sandbox.fs
        self.io = io
        self.vars: dict[str, str] = dict(DEVICE_ENV)
        self.exported: set[str] = set()
        if env:
            self.vars.update(env)
            self.exported.update(env)
        self.cwd = "/"
        self.status = 0
        self.proc = daemon.procs.add("sh", 1, self)
        self.vpid = self.proc.vpid
        self._aborted = threading.Event()
        self._children: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    # lifecycle -----------------------------------------------------------------------------------------------
    def abort(self, sig: int = signal.SIGKILL) -> None:
        """Stream closed or the session was killed: stop everything it started."""
        self._aborted.set()
        with self._lock:
            children = list(self._children)
        for child in children:
            kill_group(child, sig)

    def close(self) -> None:
        self.abort()
        self.d.procs.remove(self.vpid, self.proc)

    # entry points --------------------------------------------------------------------------------------------
    def run_script(self, text: str) -> int:
        try:
            program = parse(lex(text))
        except ShellSyntaxError as e:
            self.io.write_err(to_bytes(f"sh: {e}\n"))
            self.status = 2
            return 2
        try:
            for andor in program:
                self._run_andor(andor)
                if self._aborted.is_set():
                    break
        except ShellExit as e:
            self.status = e.code
        return self.status

    def run_interactive(self) -> int:
        """``adb shell`` with no command: read command lines from stdin until EOF or ``exit``."""
        pending = b""
        while not self._aborted.is_set():
            data = self.io.read_in()
            if not data:
                if pending.strip():
                    self.run_script(pending.decode("utf-8", "surrogateescape"))
                break
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                try:
                    program = parse(lex(line.decode("utf-8", "surrogateescape")))
                except ShellSyntaxError as e:
                    self.io.write_err(to_bytes(f"sh: {e}\n"))
                    self.status = 2
                    continue
                try:
                    for andor in program:
                        self._run_andor(andor)
                except ShellExit as e:
                    self.status = e.code
                    return self.status
        return self.status

    # execution -----------------------------------------------------------------------------------------------
    def _run_andor(self, andor: list[tuple[str, Command]]) -> None:
        for connector, cmd in andor:
            if connector == "&&" and self.status != 0:
                continue
            if connector == "||" and self.status == 0:
                continue
            self.status = self._run_command(cmd)

    def _expand_var(self, name: str) -> str:
        if name == "$":
            return str(self.vpid)
        if name == "?":
            return str(self.status)
        if name == "#":
            return "0"
        if name == "!" or name.isdigit():
            return ""
        return self.vars.get(name, "")

    def expand_word(self, word: Word, split: bool = True) -> list[str]:
        """Variable expansion, field splitting of unquoted expansions, and globbing of unquoted * ? patterns."""
        fields: list[list[str]] = [[]]
        pattern: list[list[str]] = [[]]
        has_glob = [False]
        started = [False]
        for kind, text, quoted in word.parts:
            value = self._expand_var(text) if kind == "var" else text
            if kind == "var" and not quoted and split:
                pieces = value.split()
                if not pieces:
                    continue
                if value[:1].isspace() and started[-1]:
                    fields.append([])
                    pattern.append([])
                    has_glob.append(False)
                    started.append(False)
                for k, piece in enumerate(pieces):
                    if k:
                        fields.append([])
                        pattern.append([])
                        has_glob.append(False)
                        started.append(False)
                    fields[-1].append(piece)
                    pattern[-1].append(_glob_escape(piece))
                    started[-1] = True
                if value[-1:].isspace():
                    fields.append([])
                    pattern.append([])
                    has_glob.append(False)
                    started.append(False)
                continue
            fields[-1].append(value)
            started[-1] = True
            if kind == "lit" and not quoted and any(ch in value for ch in "*?["):
                has_glob[-1] = True
                pattern[-1].append(value)
            else:
                pattern[-1].append(_glob_escape(value))
        result: list[str] = []
        for f, p, g, s in zip(fields, pattern, has_glob, started, strict=True):
            if not s:
                continue
            literal = "".join(f)
            matches = self._glob("".join(p)) if g and split else []
            result.extend(matches or [literal])
        return result

    def _glob(self, pattern: str) -> list[str]:
        """Glob the last path component inside the sandbox (directories in the pattern must be literal)."""
        head, _, tail = pattern.rpartition("/")
        if any(ch in head for ch in "*?["):
            return []
        head_dev = head if pattern.startswith("/") or head else ""
        try:
            names = self.fs.listdir(head_dev or (("/" if pattern.startswith("/") else "") or "."), self.cwd)
        except OSError:
            return []
        matched = [x for x in names if fnmatch.fnmatchcase(x, tail) and (tail.startswith(".") or x[0] != ".")]
        prefix = (head + "/") if (head or pattern.startswith("/")) else ""
        return [_glob_unescape(prefix) + x for x in matched]

    def _run_command(self, cmd: Command, exec_mode: bool = False) -> int:
        words = list(cmd.words)
        assigns: dict[str, str] = {}
        while words:
            first = words[0].parts[0] if words[0].parts else None
            m = ASSIGN.match(first[1]) if first and first[0] == "lit" and not first[2] else None
            if not m:
                break
            rest = [("lit", first[1][m.end():], False), *words[0].parts[1:]]
            assigns[m.group(1)] = "".join(self.expand_word(Word(rest), split=False))
            words.pop(0)
        argv: list[str] = []
        for w in words:
            argv.extend(self.expand_word(w))
        if not argv:
            self.vars.update(assigns)
            return 0 if not cmd.redirects else self._with_redirects(cmd, lambda ctx: 0)
        if argv[0] == "exec" and not exec_mode:
            argv = argv[1:]
            if not argv:
                return 0
            status = self._with_redirects(cmd, lambda ctx: self._dispatch(argv, assigns, ctx, exec_mode=True))
            raise ShellExit(status)
        return self._with_redirects(cmd, lambda ctx: self._dispatch(argv, assigns, ctx, exec_mode=exec_mode))

    def _with_redirects(self, cmd: Command, body: Callable[[Ctx], int]) -> int:
        ctx = Ctx(out=self.io.write_out, err=self.io.write_err, read_in=self._stdin_reader())
        opened = []
        try:
            for op, target in cmd.redirects:
                if op in ("2>&1",):
                    ctx.err, ctx.err_file, ctx.err_to_out = ctx.out, ctx.out_file, True
                    continue
                if op in (">&2", "1>&2"):
                    ctx.out, ctx.out_file = ctx.err, ctx.err_file
                    continue
                assert target is not None
                names = self.expand_word(target, split=False)
                name = names[0] if names else ""
                try:
                    fh = self._open_redirect(name, op)
                except OSError as e:
                    self.io.write_err(to_bytes(f"sh: {name}: {e.strerror or 'Input/output error'}\n"))
                    return 1
                opened.append(fh)
                if op == "<":
                    ctx.in_file = fh
                    ctx.read_in = lambda fh=fh: fh.read(65536)
                elif op.startswith("2"):
                    ctx.err, ctx.err_file = fh.write, fh
                else:
                    ctx.out, ctx.out_file = fh.write, fh
            return body(ctx)
        finally:
            for fh in opened:
                fh.close()

    def _open_redirect(self, name: str, op: str) -> Any:
        """The file of ``< name`` / ``> name`` / ``>> name``, in-root; writes are capacity-charged."""
        if name == "/dev/null":
            return open(os.devnull, "rb" if op == "<" else "ab")  # noqa: SIM115 - closed by the caller
        if op == "<":
            return os.fdopen(self.fs.open(name, cwd=self.cwd), "rb")
        return self.sb.create(name, "a" if op.endswith(">>") else "w", self.cwd)

    def _stdin_reader(self) -> Callable[[], bytes]:
        def read() -> bytes:
            while True:
                data = self.io.read_in(timeout=0.2)
                if data is not None:
                    return data
                if self._aborted.is_set():
                    return b""
        return read

    def _dispatch(self, argv: list[str], assigns: dict[str, str], ctx: Ctx, exec_mode: bool) -> int:
        name = argv[0]
        if "/" in name:
            return self._exec_file(argv, assigns, ctx, exec_mode)
        builtin = BUILTINS.get(name)
        if builtin is None:
            ctx.err(to_bytes(f"sh: {name}: not found\n"))
            return 127
        saved = {k: self.vars.get(k) for k in assigns}
        self.vars.update(assigns)
        try:
            return builtin(self, argv[1:], ctx)
        except ShellExit:
            raise
        except BrokenPipeError:
            return 1
        except NoSpace as e:  # a redirect onto a full device
            self.io.write_err(to_bytes(f"{name}: write error: {e.strerror}\n"))
            return 1
        finally:
            for k, v in saved.items():
                if v is None:
                    self.vars.pop(k, None)
                else:
                    self.vars[k] = v

    def _exec_file(self, argv: list[str], assigns: dict[str, str], ctx: Ctx, exec_mode: bool) -> int:
        path = argv[0]
        try:
            st = self.fs.stat(path, self.cwd)
        except PermissionError:
            ctx.err(to_bytes(f"sh: {path}: Permission denied\n"))
            return 126
        except OSError:
            ctx.err(to_bytes(f"sh: {path}: not found\n"))
            return 127
        if statmod.S_ISDIR(st.st_mode):
            ctx.err(to_bytes(f"sh: {path}: Is a directory\n"))  # sh says "cannot execute" variants; keep errno text
            return 126
        if not st.st_mode & 0o111:
            ctx.err(to_bytes(f"sh: {path}: Permission denied\n"))
            return 126
        if posixpath.basename(path) == APP_BASENAME:
            return run_app(self, argv, assigns, ctx, exec_mode)
        program = registered_program(self, path)  # a registered host build, only for its very bytes
        if program is None:
            if posixpath.basename(path) not in NATIVE_NAMES:
                log.warning("refused: exec of %r (only a file named %s or a registered build starts an app; no "
                            "host binaries)", path, APP_BASENAME)
            ctx.err(to_bytes(f"sh: {path}: cannot execute - the virtual device runs no host binaries but this "
                             "machine's registered llama.cpp build, and these bytes are not it (re-run the fetch "
                             "stage: it builds and pushes that build)\n"))
            return 126
        return run_app(self, argv, assigns, ctx, exec_mode, program)

    # children (the app launcher) --------------------------------------------------------------------------------
    @property
    def aborted(self) -> bool:
        return self._aborted.is_set()

    def adopt(self, child: subprocess.Popen) -> None:
        """Track a started child so that an abort kills it (at once if the abort came first)."""
        with self._lock:
            self._children.add(child)
        if self._aborted.is_set():
            kill_group(child, signal.SIGKILL)

    def release(self, child: subprocess.Popen) -> None:
        with self._lock:
            self._children.discard(child)

    # helpers for builtins -------------------------------------------------------------------------------------
    def sleep(self, seconds: float) -> bool:
        """Interruptible sleep; False if the session was aborted."""
        return not self._aborted.wait(seconds)


def _glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


def _glob_unescape(s: str) -> str:
    return re.sub(r"\[([*?\[])\]", r"\1", s)



def parse_service(service: str) -> tuple[str, bool, str]:
    """``shell,v2,TERM=xterm,raw:cmd`` → (kind, v2, cmd).  kind is 'shell' or 'exec'."""
    head, _, cmd = service.partition(":")
    opts = head.split(",")
    return opts[0], "v2" in opts[1:], cmd


def serve_shell_stream(daemon: Daemon, stream: Stream, service: str) -> None:
    """Run ``shell:``, ``shell,v2…:`` or ``exec:`` on a stream until the command finishes or the host closes."""
    kind, v2, cmd = parse_service(service)
    io = StreamIO(stream, v2=v2 and kind == "shell")
    cap = daemon.faults.get().max_processes
    if len(daemon.procs.all()) >= cap:  # fork's EAGAIN: every session is a device process
        log.warning("refused: shell stream %r (%d device processes, cap %d)", service[:80], cap, cap)
        io.write_err(b"/system/bin/sh: can't fork: Try again\n")
        io.send_exit(1)
        return
    session = Session(daemon, io)
    stream.on_close.append(session.abort)
    try:
        code = session.run_script(cmd) if cmd.strip() else session.run_interactive()
    finally:
        session.close()
    if not stream.closed.is_set():
        io.send_exit(code)
