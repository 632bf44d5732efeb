"""A small toybox-like shell for the virtual device — never the host ``/bin/sh``.

Why an interpreter of our own: every command line the host sends (built with ``shlex.quote``) must be parsed exactly
like a phone's ``sh`` would parse it, and nothing in it may ever reach a host shell.  Words are lexed like POSIX sh
(single/double quotes, backslashes, ``$VAR``/``${VAR}``/``$$``/``$?``, ``&&``/``||``/``;``, ``> >> < 2> 2>&1``);
command substitution is refused (status 2), pipes and ``&`` too.  Builtins operate on the sandbox.  Executing a file
named ``simple_app`` starts the host reference app as a subprocess in its own process group, wired to the stream.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import os
import platform
import posixpath
import queue
import re
import shutil
import signal
import stat as statmod
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.virtual.sandbox import Sandbox, SandboxError

if TYPE_CHECKING:
    from pipeline.virtual.adbd import Daemon, Stream

_ABI = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64-v8a", "arm64": "arm64-v8a",
        "armv7l": "armeabi-v7a", "i686": "x86", "i386": "x86"}
HOST_ARCH = platform.machine().lower() or "unknown"
VIRTUAL_PROPS = {
    "ro.product.model": "odeval-virtual",
    "ro.product.name": "odeval_virtual",
    "ro.product.device": "odeval_virtual",
    "ro.product.brand": "odeval",
    "ro.product.manufacturer": "odeval",
    "ro.soc.model": "virtual-host-cpu",
    "ro.soc.manufacturer": "odeval",
    "ro.board.platform": "virtual",
    "ro.product.cpu.abi": _ABI.get(HOST_ARCH, HOST_ARCH),
    "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
    "ro.build.fingerprint": "odeval/odeval_virtual/odeval_virtual:14/ODEVAL.1/1:user/release-keys",
    "ro.odeval.virtual": "1",
    "ro.serialno": "odeval-virtual",
}
DEVICE_ENV = {"PATH": "/product/bin:/apex/com.android.runtime/bin:/system/bin:/system/xbin:/odm/bin:/vendor/bin",
              "HOME": "/", "TMPDIR": "/data/local/tmp", "USER": "shell", "SHELL": "/system/bin/sh"}
APP_BASENAME = "simple_app"
REPO_ROOT = Path(__file__).resolve().parents[2]
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=")
_SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15, "CONT": 18, "STOP": 19}


class ShellSyntaxError(Exception):
    """A command line the virtual shell cannot (or will not) parse; reported as ``sh: …`` with status 2."""


# ---------------------------------------------------------------------------------------------------------------
# process table (daemon-wide: a second adb shell can `kill` what the first one started)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class VProc:
    vpid: int
    name: str
    ppid: int
    session: Session | None = None
    popen: subprocess.Popen | None = None
    started: float = field(default_factory=time.time)


class ProcessTable:
    """Virtual pids for shell sessions and the apps they start; maps them to host processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next = 1000
        self._procs: dict[int, VProc] = {}

    def add(self, name: str, ppid: int, session: Session | None = None, vpid: int | None = None) -> VProc:
        with self._lock:
            if vpid is None:
                self._next += 1
                vpid = self._next
            proc = VProc(vpid, name, ppid, session)
            self._procs[vpid] = proc
            return proc

    def remove(self, vpid: int, proc: VProc | None = None) -> None:
        with self._lock:
            if proc is None or self._procs.get(vpid) is proc:
                self._procs.pop(vpid, None)

    def get(self, vpid: int) -> VProc | None:
        with self._lock:
            return self._procs.get(vpid)

    def all(self) -> list[VProc]:
        with self._lock:
            return sorted(self._procs.values(), key=lambda p: p.vpid)

    def kill_all(self) -> None:
        for p in self.all():
            if p.popen is not None:
                kill_group(p.popen, signal.SIGKILL)
            if p.session is not None:
                p.session.abort()


def kill_group(popen: subprocess.Popen, sig: int) -> None:
    """Signal the whole process group of a child we started (it is its own group leader)."""
    try:
        os.killpg(popen.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


# ---------------------------------------------------------------------------------------------------------------
# I/O of one shell session
# ---------------------------------------------------------------------------------------------------------------
class ShellIO:
    """stdin queue + stdout/stderr writers; subclasses decide how bytes travel (v1 raw, v2 packets, memory)."""

    def __init__(self) -> None:
        self._stdin: queue.Queue[bytes] = queue.Queue()
        self._eof = False
        self.closed = threading.Event()

    def feed(self, data: bytes) -> None:
        self._stdin.put(data)

    def feed_eof(self) -> None:
        self._stdin.put(b"")

    def unread(self, data: bytes) -> None:
        """Give back bytes a consumer took but could not use (they stay for the next command)."""
        rest = [data]
        while True:
            try:
                rest.append(self._stdin.get_nowait())
            except queue.Empty:
                break
        for item in rest:
            self._stdin.put(item)

    def read_in(self, timeout: float | None = None) -> bytes | None:
        """Next stdin bytes; b"" at EOF (sticky); None on timeout."""
        if self._eof:
            return b""
        try:
            data = self._stdin.get(timeout=timeout)
        except queue.Empty:
            return None
        if data == b"":
            self._eof = True
        return data

    def write_out(self, data: bytes) -> None:
        raise NotImplementedError

    def write_err(self, data: bytes) -> None:
        raise NotImplementedError


class MemoryIO(ShellIO):
    """In-memory I/O for unit tests of the interpreter (no adb involved)."""

    def __init__(self, stdin: bytes = b"") -> None:
        super().__init__()
        if stdin:
            self.feed(stdin)
        self.feed_eof()
        self.out = bytearray()
        self.err = bytearray()

    def write_out(self, data: bytes) -> None:
        self.out += data

    def write_err(self, data: bytes) -> None:
        self.err += data


class StreamIO(ShellIO):
    """I/O over an ADB stream: shell protocol v2 packets, or raw bytes for ``shell:``/``exec:``."""

    def __init__(self, stream: Stream, v2: bool) -> None:
        super().__init__()
        self.stream = stream
        self.v2 = v2
        self.closed = stream.closed
        threading.Thread(target=self._pump_input, daemon=True, name="shell-stdin").start()

    def _pump_input(self) -> None:
        from pipeline.virtual.adbd import StreamClosed

        try:
            if not self.v2:
                while chunk := self.stream.read_chunk():
                    self.feed(chunk)
                return
            while True:
                head = self.stream.read_exact(5)
                kind, n = head[0], struct.unpack("<I", head[1:5])[0]
                payload = bytes(self.stream.read_exact(n)) if n else b""
                if kind == 0 and payload:
                    self.feed(payload)
                elif kind == 4:
                    self.feed_eof()
                # 5 = window size change, ignored
        except (StreamClosed, OSError):
            pass
        finally:
            self.feed_eof()

    def _packet(self, kind: int, data: bytes) -> None:
        from pipeline.virtual.adbd import StreamClosed

        try:
            if self.v2:
                self.stream.write(struct.pack("<BI", kind, len(data)) + data)
            else:
                self.stream.write(data)
        except (StreamClosed, OSError):
            pass

    def write_out(self, data: bytes) -> None:
        if data:
            self._packet(1, data)

    def write_err(self, data: bytes) -> None:
        if data:
            self._packet(2, data)

    def send_exit(self, code: int) -> None:
        if self.v2:
            self._packet(3, bytes([code & 0xFF]))


# ---------------------------------------------------------------------------------------------------------------
# lexer / parser
# ---------------------------------------------------------------------------------------------------------------
Part = tuple[str, str, bool]  # ("lit"|"var", text, quoted)


@dataclass
class Word:
    parts: list[Part]


@dataclass
class Op:
    text: str


@dataclass
class Command:
    words: list[Word] = field(default_factory=list)
    redirects: list[tuple[str, Word | None]] = field(default_factory=list)


REDIRECT_OPS = {">", ">>", "<", "2>", "2>>", "2>&1", ">&2", "1>", "1>>", "1>&2"}


def lex(text: str) -> list[Word | Op]:
    """Split a command line into words (with quoting info) and operators, like POSIX sh."""
    out: list[Word | Op] = []
    cur: list[Part] | None = None
    buf: list[str] = []
    i, n = 0, len(text)

    def flush_lit() -> None:
        nonlocal cur
        if buf:
            (cur := cur if cur is not None else []).append(("lit", "".join(buf), False))
            buf.clear()

    def add(kind: str, s: str, quoted: bool) -> None:
        nonlocal cur
        flush_lit()
        (cur := cur if cur is not None else []).append((kind, s, quoted))

    def end_word() -> None:
        nonlocal cur
        flush_lit()
        if cur is not None:
            out.append(Word(cur))
            cur = None

    def var_at(j: int, quoted: bool) -> int:
        """Parse after a '$' at j; returns the index after the expansion."""
        if j + 1 >= n:
            add("lit", "$", quoted)
            return j + 1
        c = text[j + 1]
        if c in "$?#!":
            add("var", c, quoted)
            return j + 2
        if c == "(":
            raise ShellSyntaxError("command substitution $(...) is not supported by the virtual device shell")
        if c == "{":
            end = text.find("}", j + 2)
            if end < 0:
                raise ShellSyntaxError("bad substitution: missing '}'")
            name = text[j + 2:end]
            if not (_NAME.fullmatch(name) or name in ("$", "?")):
                raise ShellSyntaxError(f"${{{name}}}: bad substitution")
            add("var", name, quoted)
            return end + 1
        m = _NAME.match(text, j + 1)
        if m:
            add("var", m.group(0), quoted)
            return m.end()
        if c.isdigit():
            add("var", c, quoted)
            return j + 2
        add("lit", "$", quoted)
        return j + 1

    while i < n:
        c = text[i]
        if c in " \t":
            end_word()
            i += 1
        elif c == "\n":
            end_word()
            out.append(Op(";"))
            i += 1
        elif c == "#" and cur is None and not buf:
            nl = text.find("\n", i)
            i = n if nl < 0 else nl
        elif c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise ShellSyntaxError("unterminated quoted string")
            add("lit", text[i + 1:end], True)
            i = end + 1
        elif c == '"':
            add("lit", "", True)  # "" is an (empty) word
            i += 1
            seg: list[str] = []
            while True:
                if i >= n:
                    raise ShellSyntaxError("unterminated quoted string")
                d = text[i]
                if d == '"':
                    i += 1
                    break
                if d == "\\" and i + 1 < n and text[i + 1] in '$`"\\\n':
                    if text[i + 1] != "\n":
                        seg.append(text[i + 1])
                    i += 2
                elif d == "$":
                    if seg:
                        add("lit", "".join(seg), True)
                        seg.clear()
                    i = var_at(i, True)
                elif d == "`":
                    raise ShellSyntaxError("command substitution `...` is not supported by the virtual device shell")
                else:
                    seg.append(d)
                    i += 1
            if seg:
                add("lit", "".join(seg), True)
        elif c == "\\":
            if i + 1 < n:
                if text[i + 1] != "\n":
                    add("lit", text[i + 1], True)
                i += 2
            else:
                buf.append("\\")
                i += 1
        elif c == "$":
            i = var_at(i, False)
        elif c == "`":
            raise ShellSyntaxError("command substitution `...` is not supported by the virtual device shell")
        elif c in ";&|<>":
            prefix = ""
            if c in "<>" and cur is None and len(buf) == 1 and buf[0] in "12":
                prefix = buf.pop()
            end_word()
            two = text[i:i + 2]
            if two in ("&&", "||", ">>", ";;"):
                op, i = two, i + 2
            elif text[i:i + 3] in (">&1", ">&2"):
                op, i = text[i:i + 3], i + 3
            else:
                op, i = c, i + 1
            out.append(Op(prefix + op))
        else:
            buf.append(c)
            i += 1
    end_word()
    return out


def parse(tokens: list[Word | Op]) -> list[list[tuple[str, Command]]]:
    """Tokens → list of and-or lists: each is [(connector, command)] with connector '' / '&&' / '||'."""
    program: list[list[tuple[str, Command]]] = []
    andor: list[tuple[str, Command]] = []
    cmd = Command()
    connector = ""
    need_cmd = False  # after && / ||
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if isinstance(tok, Word):
            cmd.words.append(tok)
        elif tok.text in REDIRECT_OPS:
            if tok.text in ("2>&1", ">&2", "1>&2"):
                cmd.redirects.append((tok.text, None))
            else:
                nxt = tokens[i + 1] if i + 1 < len(tokens) else None
                if not isinstance(nxt, Word):
                    raise ShellSyntaxError(f"syntax error: {tok.text} needs a file name")
                i += 1
                cmd.redirects.append((tok.text, nxt))
        elif tok.text in ("&&", "||", ";"):
            if cmd.words or cmd.redirects:
                andor.append((connector, cmd))
                cmd, need_cmd = Command(), False
            elif need_cmd or (tok.text != ";" and not andor):
                raise ShellSyntaxError(f"syntax error: unexpected {tok.text!r}")
            if tok.text == ";":
                if andor:
                    program.append(andor)
                andor, connector = [], ""
            else:
                connector, need_cmd = tok.text, True
        elif tok.text == "|":
            raise ShellSyntaxError("pipes are not supported by the virtual device shell")
        elif tok.text == "&":
            raise ShellSyntaxError("background jobs (&) are not supported by the virtual device shell")
        else:
            raise ShellSyntaxError(f"syntax error: unexpected {tok.text!r}")
        i += 1
    if cmd.words or cmd.redirects:
        andor.append((connector, cmd))
    elif need_cmd:
        raise ShellSyntaxError(f"syntax error: command expected after {connector}")
    if andor:
        program.append(andor)
    return program


# ---------------------------------------------------------------------------------------------------------------
# interpreter
# ---------------------------------------------------------------------------------------------------------------
class _Exit(Exception):
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


def _b(s: str) -> bytes:
    return s.encode("utf-8", "surrogateescape")


class Session:
    """One shell invocation: variables, cwd, the session's virtual pid, and the builtins."""

    def __init__(self, daemon: Daemon, io: ShellIO, env: dict[str, str] | None = None) -> None:
        self.d = daemon
        self.sb: Sandbox = daemon.sandbox
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
            self.io.write_err(_b(f"sh: {e}\n"))
            self.status = 2
            return 2
        try:
            for andor in program:
                self._run_andor(andor)
                if self._aborted.is_set():
                    break
        except _Exit as e:
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
                    self.io.write_err(_b(f"sh: {e}\n"))
                    self.status = 2
                    continue
                try:
                    for andor in program:
                        self._run_andor(andor)
                except _Exit as e:
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
            host_dir = self.sb.host(head_dev or (("/" if pattern.startswith("/") else "") or "."), self.cwd)
            names = sorted(os.listdir(host_dir))
        except (OSError, SandboxError):
            return []
        matched = [x for x in names if fnmatch.fnmatchcase(x, tail) and (tail.startswith(".") or x[0] != ".")]
        prefix = (head + "/") if (head or pattern.startswith("/")) else ""
        return [_glob_unescape(prefix) + x for x in matched]

    def _run_command(self, cmd: Command, exec_mode: bool = False) -> int:
        words = list(cmd.words)
        assigns: dict[str, str] = {}
        while words:
            first = words[0].parts[0] if words[0].parts else None
            m = _ASSIGN.match(first[1]) if first and first[0] == "lit" and not first[2] else None
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
            raise _Exit(status)
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
                mode = "ab" if op.endswith(">>") else ("rb" if op == "<" else "wb")
                try:
                    fh = open(os.devnull, mode) if name == "/dev/null" else open(  # noqa: SIM115
                        self.sb.host(name, self.cwd), mode)
                except (OSError, SandboxError) as e:
                    msg = e.message if isinstance(e, SandboxError) else (e.strerror or str(e))
                    self.io.write_err(_b(f"sh: {name}: {msg}\n"))
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
            ctx.err(_b(f"sh: {name}: not found\n"))
            return 127
        saved = {k: self.vars.get(k) for k in assigns}
        self.vars.update(assigns)
        try:
            return builtin(self, argv[1:], ctx)
        except _Exit:
            raise
        except BrokenPipeError:
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
            host = self.sb.host(path, self.cwd)
            st = host.stat()
        except SandboxError:
            ctx.err(_b(f"sh: {path}: Permission denied\n"))
            return 126
        except OSError:
            ctx.err(_b(f"sh: {path}: not found\n"))
            return 127
        if statmod.S_ISDIR(st.st_mode):
            ctx.err(_b(f"sh: {path}: Is a directory\n"))  # sh says "cannot execute" variants; keep errno text
            return 126
        if not st.st_mode & 0o111:
            ctx.err(_b(f"sh: {path}: Permission denied\n"))
            return 126
        if posixpath.basename(path) != APP_BASENAME:
            ctx.err(_b(f"sh: {path}: cannot execute - the virtual device runs no host binaries\n"))
            return 126
        return self._run_app(host, argv, assigns, ctx, exec_mode)

    # the app ---------------------------------------------------------------------------------------------------
    def _app_command(self, argv: list[str]) -> list[str] | str:
        faults = self.d.faults.get()
        prefix = faults.app_cmd
        if prefix is None and os.environ.get("ODEVAL_VIRTUAL_APP_CMD"):
            try:
                prefix = json.loads(os.environ["ODEVAL_VIRTUAL_APP_CMD"])
            except json.JSONDecodeError:
                return "ODEVAL_VIRTUAL_APP_CMD is not a JSON list of strings"
        if prefix is None:
            if importlib.util.find_spec("pipeline.apps.reference_app") is None:
                return "reference app not available (pipeline/apps/reference_app.py is missing)"
            prefix = [sys.executable, "-m", "pipeline.apps.reference_app"]
        args = list(argv[1:])
        if args:  # argv[1] is the model dir (§4): hand the app the host path of that device dir
            try:
                args[0] = str(self.sb.host(args[0], self.cwd))
            except SandboxError:
                return f"{args[0]}: Permission denied"
        return [*prefix, *args]

    def _app_env(self, assigns: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("ODEVAL_FAULT_") and k not in ("ODEVAL_STANDIN_MODEL", "ODEVAL_VIRTUAL_APP_CMD")}
        device_env = {k: self.vars[k] for k in self.exported if k in self.vars}
        device_env.update(assigns)
        for k, v in device_env.items():
            # the host loader must not search sandbox dirs full of Android .so files: keep them for the app to read
            env[f"ODEVAL_DEVICE_{k}" if k.startswith("LD_") else k] = v
        env.update(self.d.faults.get().app_env())
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH", "")]))
        env["ODEVAL_VIRTUAL_PID"] = ""  # filled per launch
        return env

    def _run_app(self, host: Path, argv: list[str], assigns: dict[str, str], ctx: Ctx, exec_mode: bool) -> int:
        command = self._app_command(argv)
        if isinstance(command, str):
            ctx.err(_b(f"{argv[0]}: {command}\n"))
            return 127
        if self._aborted.is_set():
            return 137
        proc = self.proc if exec_mode else self.d.procs.add(APP_BASENAME, self.vpid, None)
        env = self._app_env(assigns)
        env["ODEVAL_VIRTUAL_PID"] = str(proc.vpid)
        try:
            child = subprocess.Popen(  # noqa: S603 - argv list, no shell; only the reference app or a test hook
                command, cwd=host.parent, env=env, bufsize=0, start_new_session=True,
                stdin=ctx.in_file if ctx.in_file is not None else subprocess.PIPE,
                stdout=ctx.out_file if ctx.out_file is not None else subprocess.PIPE,
                stderr=(subprocess.STDOUT if ctx.err_to_out and ctx.out_file is None
                        else ctx.err_file if ctx.err_file is not None else subprocess.PIPE))
        except OSError as e:
            if not exec_mode:
                self.d.procs.remove(proc.vpid, proc)
            ctx.err(_b(f"{argv[0]}: cannot start the reference app: {e}\n"))
            return 126
        proc.popen, proc.name = child, APP_BASENAME
        with self._lock:
            self._children.add(child)
        if self._aborted.is_set():
            kill_group(child, signal.SIGKILL)
        threads = []
        if child.stdout is not None:
            threads.append(_pump(child.stdout, ctx.out))
        if child.stderr is not None:
            threads.append(_pump(child.stderr, ctx.err))
        feeder = None
        if child.stdin is not None:
            feeder = threading.Thread(target=self._feed_child, args=(child,), daemon=True, name="app-stdin")
            feeder.start()
        try:
            code = child.wait()
        finally:
            kill_group(child, signal.SIGKILL)  # nothing the app started may outlive it
            for t in threads:
                t.join(timeout=5)
            if feeder is not None:
                feeder.join(timeout=5)
            with self._lock:
                self._children.discard(child)
            if exec_mode:
                proc.popen = None
            else:
                self.d.procs.remove(proc.vpid, proc)
        return 128 - code if code < 0 else code

    def _feed_child(self, child: subprocess.Popen) -> None:
        """Forward session stdin to the app until it exits; on stdin EOF close the app's stdin."""
        assert child.stdin is not None
        try:
            while child.poll() is None:
                data = self.io.read_in(timeout=0.1)
                if data is None:
                    continue
                if data == b"":
                    break
                try:
                    child.stdin.write(data)
                except (BrokenPipeError, OSError):
                    self.io.unread(data)
                    break
        finally:
            try:
                child.stdin.close()
            except OSError:
                pass

    # helpers for builtins -------------------------------------------------------------------------------------
    def host(self, path: str, follow: bool = True) -> Path:
        return self.sb.host(path, self.cwd, follow=follow)

    def sleep(self, seconds: float) -> bool:
        """Interruptible sleep; False if the session was aborted."""
        return not self._aborted.wait(seconds)


def _pump(pipe: Any, write: Callable[[bytes], None]) -> threading.Thread:
    """Stream child output as it comes (no line buffering)."""

    def run() -> None:
        fd = pipe.fileno()
        try:
            while data := os.read(fd, 65536):
                write(data)
        except OSError:
            pass
        finally:
            pipe.close()

    t = threading.Thread(target=run, daemon=True, name="app-out")
    t.start()
    return t


def _glob_escape(s: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", s)


def _glob_unescape(s: str) -> str:
    return re.sub(r"\[([*?\[])\]", r"\1", s)


# ---------------------------------------------------------------------------------------------------------------
# builtins
# ---------------------------------------------------------------------------------------------------------------
Builtin = Callable[[Session, list[str], Ctx], int]
BUILTINS: dict[str, Builtin] = {}


def builtin(*names: str) -> Callable[[Builtin], Builtin]:
    def deco(fn: Builtin) -> Builtin:
        for n in names:
            BUILTINS[n] = fn
        return fn
    return deco


def _flags(args: list[str], allowed: str) -> tuple[set[str], list[str]]:
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


def _err(ctx: Ctx, cmd: str, path: str, exc: BaseException) -> None:
    if isinstance(exc, SandboxError):
        msg = exc.message
    elif isinstance(exc, OSError):
        msg = exc.strerror or str(exc)
    else:
        msg = str(exc)
    ctx.err(_b(f"{cmd}: {path}: {msg}\n"))


@builtin("true", ":")
def b_true(sh: Session, args: list[str], ctx: Ctx) -> int:
    return 0


@builtin("false")
def b_false(sh: Session, args: list[str], ctx: Ctx) -> int:
    return 1


@builtin("exit")
def b_exit(sh: Session, args: list[str], ctx: Ctx) -> int:
    try:
        code = int(args[0]) & 0xFF if args else sh.status
    except ValueError:
        ctx.err(_b(f"sh: exit: {args[0]}: bad number\n"))
        code = 2
    raise _Exit(code)


@builtin("echo")
def b_echo(sh: Session, args: list[str], ctx: Ctx) -> int:
    newline, escapes = True, False
    while args and re.fullmatch(r"-[neE]+", args[0]):
        opts = args.pop(0)
        newline = newline and "n" not in opts
        escapes = ("e" in opts) or (escapes and "E" not in opts)
    text = " ".join(args)
    if escapes:
        text = text.encode("utf-8", "surrogateescape").decode("unicode_escape").encode("latin-1").decode(
            "utf-8", "surrogateescape")
    ctx.out(_b(text + ("\n" if newline else "")))
    return 0


@builtin("cd")
def b_cd(sh: Session, args: list[str], ctx: Ctx) -> int:
    target = args[0] if args else sh.vars.get("HOME", "/")
    try:
        if not sh.host(target).is_dir():
            raise NotADirectoryError(20, "Not a directory" if sh.host(target).exists() else "No such file or directory")
    except (OSError, SandboxError) as e:
        _err(ctx, "sh: cd", target, e)
        return 1
    sh.cwd = Sandbox.normalize(target, sh.cwd)
    sh.vars["PWD"] = sh.cwd
    return 0


@builtin("pwd")
def b_pwd(sh: Session, args: list[str], ctx: Ctx) -> int:
    ctx.out(_b(sh.cwd + "\n"))
    return 0


@builtin("export")
def b_export(sh: Session, args: list[str], ctx: Ctx) -> int:
    for a in args:
        name, sep, value = a.partition("=")
        if not _NAME.fullmatch(name):
            ctx.err(_b(f"sh: export: {name}: bad variable name\n"))
            return 1
        if sep:
            sh.vars[name] = value
        sh.exported.add(name)
    return 0


@builtin("unset")
def b_unset(sh: Session, args: list[str], ctx: Ctx) -> int:
    for a in args:
        sh.vars.pop(a, None)
        sh.exported.discard(a)
    return 0


@builtin("id")
def b_id(sh: Session, args: list[str], ctx: Ctx) -> int:
    ctx.out(b"uid=2000(shell) gid=2000(shell) groups=2000(shell) context=u:r:shell:s0\n")
    return 0


@builtin("whoami")
def b_whoami(sh: Session, args: list[str], ctx: Ctx) -> int:
    ctx.out(b"shell\n")
    return 0


@builtin("uname")
def b_uname(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, _ = _flags(args, "amnrsv")
    parts = []
    if not flags or "s" in flags or "a" in flags:
        parts.append("Linux")
    if flags & {"n", "a"}:
        parts.append("localhost")
    if flags & {"r", "a"}:
        parts.append(platform.release())
    if flags & {"v", "a"}:
        parts.append("#1 SMP odeval-virtual")
    if flags & {"m", "a"}:
        parts.append(HOST_ARCH)
    ctx.out(_b(" ".join(parts) + "\n"))
    return 0


@builtin("getprop")
def b_getprop(sh: Session, args: list[str], ctx: Ctx) -> int:
    if not args:
        ctx.out(_b("".join(f"[{k}]: [{v}]\n" for k, v in sorted(VIRTUAL_PROPS.items()))))
    else:
        ctx.out(_b(VIRTUAL_PROPS.get(args[0], args[1] if len(args) > 1 else "") + "\n"))
    return 0


@builtin("sleep")
def b_sleep(sh: Session, args: list[str], ctx: Ctx) -> int:
    try:
        seconds = sum(float(a.rstrip("s")) for a in args) if args else None
    except ValueError:
        seconds = None
    if seconds is None:
        ctx.err(_b(f"sleep: invalid number '{' '.join(args)}'\n"))
        return 1
    return 0 if sh.sleep(seconds) else 137


def _proc_file(sh: Session, dev: str) -> bytes | None:
    """``/proc/<vpid>/status|cmdline`` for processes this device started (real host data for the app)."""
    m = re.fullmatch(r"/proc/(\d+|self)/(status|cmdline)", dev)
    if not m:
        return None
    vpid = sh.vpid if m.group(1) == "self" else int(m.group(1))
    proc = sh.d.procs.get(vpid)
    if proc is None:
        return None
    popen = proc.popen
    if popen is not None:
        try:
            raw = Path(f"/proc/{popen.pid}/{m.group(2)}").read_bytes()
        except OSError:
            return None
        if m.group(2) == "cmdline":
            return raw
        text = raw.decode("utf-8", "replace")
        text = re.sub(r"(?m)^Name:\t.*$", f"Name:\t{proc.name}", text)
        text = re.sub(r"(?m)^(Pid|Tgid):\t\d+$", lambda mm: f"{mm.group(1)}:\t{vpid}", text)
        text = re.sub(r"(?m)^PPid:\t\d+$", f"PPid:\t{proc.ppid}", text)
        return text.encode()
    if m.group(2) == "cmdline":
        return b"sh\0"
    return (f"Name:\t{proc.name}\nState:\tS (sleeping)\nTgid:\t{vpid}\nPid:\t{vpid}\nPPid:\t{proc.ppid}\n"
            "Uid:\t2000\t2000\t2000\t2000\nGid:\t2000\t2000\t2000\t2000\n").encode()


@builtin("cat")
def b_cat(sh: Session, args: list[str], ctx: Ctx) -> int:
    status = 0
    for path in args or ["-"]:
        if path == "-":
            while data := ctx.read_in():
                ctx.out(data)
            continue
        dev = Sandbox.normalize(path, sh.cwd)
        if dev.startswith("/proc/"):
            data = _proc_file(sh, dev)
            if data is None:
                ctx.err(_b(f"cat: {path}: No such file or directory\n"))
                status = 1
            else:
                ctx.out(data)
            continue
        if dev.startswith("/sys/"):
            sh.sb.refresh_sys(sh.d.faults.get())
        try:
            with open(sh.host(path), "rb") as fh:
                while chunk := fh.read(1 << 20):
                    ctx.out(chunk)
        except (OSError, SandboxError) as e:
            _err(ctx, "cat", path, e)
            status = 1
    return status


def _mode_str(mode: int) -> str:
    return statmod.filemode(mode)


@builtin("ls")
def b_ls(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, paths = _flags(args, "alA1dhR")
    status = 0
    files: list[tuple[str, os.stat_result]] = []
    dirs: list[str] = []
    for path in paths or ["."]:
        if Sandbox.normalize(path, sh.cwd).startswith("/sys"):  # simulated sysfs appears before it is listed
            sh.sb.refresh_sys(sh.d.faults.get())
        try:
            st = os.stat(sh.host(path))
        except (OSError, SandboxError) as e:
            _err(ctx, "ls", path, e)
            status = 1
            continue
        if statmod.S_ISDIR(st.st_mode) and "d" not in flags:
            dirs.append(path)
        else:
            files.append((path, st))

    def emit(entries: list[tuple[str, os.stat_result]]) -> None:
        for name, st in entries:
            if "l" in flags:
                when = time.strftime("%Y-%m-%d %H:%M", time.localtime(st.st_mtime))
                ctx.out(_b(f"{_mode_str(st.st_mode)} {st.st_nlink:>2} shell shell {st.st_size:>10} {when} {name}\n"))
            else:
                ctx.out(_b(name + "\n"))

    emit(files)
    for i, d in enumerate(dirs):
        if len(dirs) + len(files) > 1:
            ctx.out(_b(("\n" if i or files else "") + f"{d}:\n"))
        host = sh.host(d)
        names = sorted(os.listdir(host))
        if "a" in flags:
            names = [".", "..", *names]
        elif "A" not in flags:
            names = [x for x in names if not x.startswith(".")]
        entries = []
        for x in names:
            try:
                entries.append((x, os.lstat(host / x)))
            except OSError:
                continue
        emit(entries)
    return status


@builtin("mkdir")
def b_mkdir(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, paths = _flags(args, "pm")
    mode = 0o777
    if "m" in flags and paths:
        mode = int(paths.pop(0), 8)
    status = 0
    for p in paths:
        try:
            host = sh.host(p)
            if "p" in flags:
                host.mkdir(parents=True, exist_ok=True, mode=mode)
            else:
                host.mkdir(mode=mode)
        except (OSError, SandboxError) as e:
            _err(ctx, "mkdir", p, e)
            status = 1
    return status


@builtin("rm")
def b_rm(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, paths = _flags(args, "rRfvd")
    status = 0
    for p in paths:
        try:
            if Sandbox.normalize(p, sh.cwd) == "/":
                raise PermissionError(13, "Permission denied")
            host = sh.host(p, follow=False)
            if host.is_symlink() or host.is_file() or (host.exists() and not host.is_dir()):
                host.unlink()
            elif host.is_dir():
                if not flags & {"r", "R"}:
                    raise IsADirectoryError(21, "Is a directory")
                shutil.rmtree(host)
            elif "f" not in flags:
                raise FileNotFoundError(2, "No such file or directory")
        except (OSError, SandboxError) as e:
            _err(ctx, "rm", p, e)
            status = 1
    return status


def _target(sh: Session, src: str, dst: str) -> Path:
    host = sh.host(dst)
    return host / posixpath.basename(src.rstrip("/")) if host.is_dir() else host


@builtin("mv")
def b_mv(sh: Session, args: list[str], ctx: Ctx) -> int:
    _flags_, paths = _flags(args, "fin")
    if len(paths) < 2:
        ctx.err(b"mv: needs 2 arguments\n")
        return 1
    status = 0
    for src in paths[:-1]:
        try:
            os.replace(sh.host(src, follow=False), _target(sh, src, paths[-1]))
        except (OSError, SandboxError) as e:
            _err(ctx, "mv", src, e)
            status = 1
    return status


@builtin("cp")
def b_cp(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, paths = _flags(args, "rRpaf")
    if len(paths) < 2:
        ctx.err(b"cp: needs 2 arguments\n")
        return 1
    status = 0
    for src in paths[:-1]:
        try:
            shost, dhost = sh.host(src), _target(sh, src, paths[-1])
            if shost.is_dir():
                if not flags & {"r", "R", "a"}:
                    raise IsADirectoryError(21, "Is a directory")
                shutil.copytree(shost, dhost, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(shost, dhost)
        except (OSError, SandboxError) as e:
            _err(ctx, "cp", src, e)
            status = 1
    return status


@builtin("touch")
def b_touch(sh: Session, args: list[str], ctx: Ctx) -> int:
    status = 0
    for p in args:
        try:
            sh.host(p).touch()
        except (OSError, SandboxError) as e:
            _err(ctx, "touch", p, e)
            status = 1
    return status


def _chmod_mode(spec: str, current: int) -> int:
    if re.fullmatch(r"[0-7]{1,4}", spec):
        return int(spec, 8)
    mode = current
    for clause in spec.split(","):
        m = re.fullmatch(r"([ugoa]*)([+\-=])([rwx]*)", clause)
        if not m:
            raise ValueError(spec)
        who = m.group(1) or "a"
        bits = sum({"r": 4, "w": 2, "x": 1}[c] for c in m.group(3))
        mask = sum({"u": bits << 6, "g": bits << 3, "o": bits}[w] for w in ("ugo" if "a" in who else who))
        if m.group(2) == "+":
            mode |= mask
        elif m.group(2) == "-":
            mode &= ~mask
        else:
            clear = sum({"u": 0o700, "g": 0o070, "o": 0o007}[w] for w in ("ugo" if "a" in who else who))
            mode = (mode & ~clear) | mask
    return mode


@builtin("chmod")
def b_chmod(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, rest = _flags(args, "R")
    if len(rest) < 2:
        ctx.err(b"chmod: needs MODE FILE...\n")
        return 1
    spec, paths = rest[0], rest[1:]
    status = 0
    for p in paths:
        try:
            host = sh.host(p)
            os.chmod(host, _chmod_mode(spec, statmod.S_IMODE(os.stat(host).st_mode)))
        except ValueError:
            ctx.err(_b(f"chmod: invalid mode '{spec}'\n"))
            return 1
        except (OSError, SandboxError) as e:
            _err(ctx, "chmod", p, e)
            status = 1
    return status


def _stat_format(fmt: str, name: str, st: os.stat_result) -> str:
    kinds = {statmod.S_IFREG: "regular file", statmod.S_IFDIR: "directory", statmod.S_IFLNK: "symbolic link"}

    def sub(m: re.Match[str]) -> str:
        c = m.group(1)
        return {
            "s": str(st.st_size), "n": name, "Y": str(int(st.st_mtime)), "X": str(int(st.st_atime)),
            "Z": str(int(st.st_ctime)), "a": f"{statmod.S_IMODE(st.st_mode):o}", "A": statmod.filemode(st.st_mode),
            "F": kinds.get(statmod.S_IFMT(st.st_mode), "file"), "f": f"{st.st_mode:x}", "u": "2000", "g": "2000",
            "U": "shell", "G": "shell", "i": str(st.st_ino), "h": str(st.st_nlink), "b": str(st.st_blocks),
            "y": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(st.st_mtime)), "%": "%",
        }.get(c, "?")

    return re.sub(r"%(.)", sub, fmt).replace("\\n", "\n").replace("\\t", "\t")


@builtin("stat")
def b_stat(sh: Session, args: list[str], ctx: Ctx) -> int:
    fmt = None
    follow = False
    rest: list[str] = []
    it = iter(args)
    for a in it:
        if a == "-c":
            fmt = next(it, "")
        elif a.startswith("--format="):
            fmt = a.split("=", 1)[1]
        elif a in ("-L", "--dereference"):
            follow = True
        else:
            rest.append(a)
    status = 0
    for p in rest:
        try:
            host = sh.host(p, follow=follow)
            st = os.stat(host) if follow else os.lstat(host)
        except (OSError, SandboxError) as e:
            ctx.err(_b(f"stat: '{p}': {e.message if isinstance(e, SandboxError) else e.strerror}\n"))
            status = 1
            continue
        if fmt is None:
            ctx.out(_b(_stat_format("  File: %n\n  Size: %s\tBlocks: %b\t%F\nAccess: (0%a/%A)\tUid: (2000/shell)"
                                    "\nModify: %y\n", p, st)))
        else:
            ctx.out(_b(_stat_format(fmt, p, st) + "\n"))
    return status


@builtin("df")
def b_df(sh: Session, args: list[str], ctx: Ctx) -> int:
    """POSIX-ish ``df``: one filesystem (/data) whose size is the configured capacity."""
    flags, paths = _flags(args, "khPa")
    faults = sh.d.faults.get()
    used = sh.sb.used_bytes()
    total = faults.capacity_bytes
    avail = 0 if faults.disk_full else max(0, total - used)
    for p in paths:
        try:
            if not sh.host(p).exists():
                raise FileNotFoundError(2, "No such file or directory")
        except (OSError, SandboxError) as e:
            _err(ctx, "df", p, e)
            return 1
    pct = 100 if faults.disk_full or not total else min(100, -(-used * 100 // total))
    if "h" in flags:
        def h(n: int) -> str:
            for unit in "KMGT":
                n_f = n / 1024
                if n_f < 1024 or unit == "T":
                    return f"{n_f:.1f}{unit}"
                n = int(n_f)
            return str(n)
        row = (h(total), h(used), h(avail))
        head = "Filesystem                  Size  Used Avail Use% Mounted on\n"
    else:
        row = (str(total // 1024), str(used // 1024), str(avail // 1024))
        head = "Filesystem                1K-blocks     Used Available Use% Mounted on\n"
    ctx.out(_b(head + f"/dev/block/odeval-virtual {row[0]:>9} {row[1]:>8} {row[2]:>9} {pct:>3}% /data\n"))
    return 0


def _hashsum(algo: str) -> Builtin:
    def run(sh: Session, args: list[str], ctx: Ctx) -> int:
        status = 0
        for p in args or ["-"]:
            h = hashlib.new(algo)
            try:
                if p == "-":
                    while data := ctx.read_in():
                        h.update(data)
                else:
                    with open(sh.host(p), "rb") as fh:
                        while chunk := fh.read(1 << 20):
                            h.update(chunk)
            except (OSError, SandboxError) as e:
                _err(ctx, f"{algo}sum", p, e)
                status = 1
                continue
            ctx.out(_b(f"{h.hexdigest()}  {p}\n"))
        return status
    return run


BUILTINS["sha256sum"] = _hashsum("sha256")
BUILTINS["md5sum"] = _hashsum("md5")
BUILTINS["sha1sum"] = _hashsum("sha1")


@builtin("test", "[")
def b_test(sh: Session, args: list[str], ctx: Ctx) -> int:
    if args and args[-1] == "]":
        args = args[:-1]
    negate = bool(args) and args[0] == "!"
    if negate:
        args = args[1:]

    def ev() -> bool:
        if not args:
            return False
        if len(args) == 1:
            return args[0] != ""
        if len(args) == 2:
            op, operand = args
            if op in ("-n", "-z"):
                return (operand != "") == (op == "-n")
            try:
                host = sh.host(operand)
            except SandboxError:
                return False
            checks = {"-e": host.exists, "-f": host.is_file, "-d": host.is_dir,
                      "-s": lambda: host.is_file() and host.stat().st_size > 0,
                      "-x": lambda: host.exists() and os.access(host, os.X_OK),
                      "-r": host.exists, "-w": host.exists, "-L": host.is_symlink}
            return bool(checks.get(op, lambda: False)())
        a, op, b = args[:3]
        if op in ("=", "=="):
            return a == b
        if op == "!=":
            return a != b
        nums = {"-eq": int.__eq__, "-ne": int.__ne__, "-lt": int.__lt__, "-le": int.__le__, "-gt": int.__gt__,
                "-ge": int.__ge__}
        if op in nums:
            return nums[op](int(a), int(b))
        raise ValueError(op)

    try:
        result = ev()
    except ValueError:
        ctx.err(_b(f"test: bad expression: {' '.join(args)}\n"))
        return 2
    return 0 if result != negate else 1


def _parse_signal(spec: str) -> int | None:
    spec = spec.upper().removeprefix("SIG")
    if spec.isdigit():
        return int(spec)
    return _SIGNALS.get(spec)


@builtin("kill")
def b_kill(sh: Session, args: list[str], ctx: Ctx) -> int:
    sig = signal.SIGTERM
    rest = list(args)
    if rest and rest[0] == "-s" and len(rest) > 1:
        s = _parse_signal(rest[1])
        rest = rest[2:]
        if s is None:
            ctx.err(_b(f"kill: unknown signal '{args[1]}'\n"))
            return 1
        sig = s
    elif rest and rest[0].startswith("-") and len(rest[0]) > 1:
        s = _parse_signal(rest[0][1:])
        if s is None:
            ctx.err(_b(f"kill: unknown signal '{rest[0][1:]}'\n"))
            return 1
        sig, rest = s, rest[1:]
    if not rest:
        ctx.err(b"usage: kill [-s SIG | -SIG] PID...\n")
        return 1
    status = 0
    for p in rest:
        proc = sh.d.procs.get(int(p)) if p.isdigit() else None
        if proc is None:
            ctx.err(_b(f"kill: {p}: No such process\n"))
            status = 1
            continue
        if sig == 0:
            continue
        if proc.popen is not None:
            kill_group(proc.popen, sig)
        elif proc.session is not None and sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            proc.session.abort(sig)
    return status


def _rss_kb(proc: VProc) -> int:
    if proc.popen is None:
        return 0
    try:
        m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{proc.popen.pid}/status").read_text())
        return int(m.group(1)) if m else 0
    except OSError:
        return 0


@builtin("ps")
def b_ps(sh: Session, args: list[str], ctx: Ctx) -> int:
    lines = ["USER            PID   PPID        VSZ    RSS WCHAN            ADDR S NAME"]
    for p in sh.d.procs.all():
        lines.append(f"shell      {p.vpid:>8} {p.ppid:>6} {0:>10} {_rss_kb(p):>6} 0                   0 S {p.name}")
    ctx.out(_b("\n".join(lines) + "\n"))
    return 0


@builtin("pidof")
def b_pidof(sh: Session, args: list[str], ctx: Ctx) -> int:
    pids = [str(p.vpid) for p in reversed(sh.d.procs.all()) if p.name in args or posixpath.basename(p.name) in args]
    if not pids:
        return 1
    ctx.out(_b(" ".join(pids) + "\n"))
    return 0


# ---------------------------------------------------------------------------------------------------------------
# service entry point
# ---------------------------------------------------------------------------------------------------------------
def parse_service(service: str) -> tuple[str, bool, str]:
    """``shell,v2,TERM=xterm,raw:cmd`` → (kind, v2, cmd).  kind is 'shell' or 'exec'."""
    head, _, cmd = service.partition(":")
    opts = head.split(",")
    return opts[0], "v2" in opts[1:], cmd


def serve_shell_stream(daemon: Daemon, stream: Stream, service: str) -> None:
    """Run ``shell:``, ``shell,v2…:`` or ``exec:`` on a stream until the command finishes or the host closes."""
    kind, v2, cmd = parse_service(service)
    io = StreamIO(stream, v2=v2 and kind == "shell")
    session = Session(daemon, io)
    stream.on_close.append(session.abort)
    try:
        code = session.run_script(cmd) if cmd.strip() else session.run_interactive()
    finally:
        session.close()
    if not stream.closed.is_set():
        io.send_exit(code)
