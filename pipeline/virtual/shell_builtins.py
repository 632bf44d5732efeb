"""Builtins of the virtual device shell that are not about files: the registry, the call context, and
true/false/exit/echo/cd/pwd/export/unset/id/whoami/uname/getprop/sleep/test/kill/ps/pidof.

File builtins live in :mod:`pipeline.virtual.fs_builtins` (they register into the same :data:`BUILTINS`).
Messages name device paths only: an ``OSError`` is reported by its ``strerror``, never ``str(exc)`` (which can
hold host paths).
"""

from __future__ import annotations

import platform
import posixpath
import re
import signal
import stat as statmod

from pipeline.virtual.procs import VProc, host_status, kill_group
from pipeline.virtual.props import HOST_ARCH, current_props
from pipeline.virtual.sandbox import Sandbox
from pipeline.virtual.shell_api import Builtin, Ctx, Session, ShellExit, report_error, split_flags, to_bytes
from pipeline.virtual.shell_parse import _NAME

_SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15, "CONT": 18, "STOP": 19}


def b_true(sh: Session, args: list[str], ctx: Ctx) -> int:
    return 0


def b_false(sh: Session, args: list[str], ctx: Ctx) -> int:
    return 1


def b_exit(sh: Session, args: list[str], ctx: Ctx) -> int:
    try:
        code = int(args[0]) & 0xFF if args else sh.status
    except ValueError:
        ctx.err(to_bytes(f"sh: exit: {args[0]}: bad number\n"))
        code = 2
    raise ShellExit(code)


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
    ctx.out(to_bytes(text + ("\n" if newline else "")))
    return 0


def b_cd(sh: Session, args: list[str], ctx: Ctx) -> int:
    target = args[0] if args else sh.vars.get("HOME", "/")
    try:
        if not statmod.S_ISDIR(sh.fs.stat(target, sh.cwd).st_mode):
            raise NotADirectoryError(20, "Not a directory")
    except OSError as e:
        report_error(ctx, "sh: cd", target, e)
        return 1
    sh.cwd = Sandbox.normalize(target, sh.cwd)
    sh.vars["PWD"] = sh.cwd
    return 0


def b_pwd(sh: Session, args: list[str], ctx: Ctx) -> int:
    ctx.out(to_bytes(sh.cwd + "\n"))
    return 0


def b_export(sh: Session, args: list[str], ctx: Ctx) -> int:
    for a in args:
        name, sep, value = a.partition("=")
        if not _NAME.fullmatch(name):
            ctx.err(to_bytes(f"sh: export: {name}: bad variable name\n"))
            return 1
        if sep:
            sh.vars[name] = value
        sh.exported.add(name)
    return 0


def b_unset(sh: Session, args: list[str], ctx: Ctx) -> int:
    for a in args:
        sh.vars.pop(a, None)
        sh.exported.discard(a)
    return 0


def b_id(sh: Session, args: list[str], ctx: Ctx) -> int:
    ctx.out(b"uid=2000(shell) gid=2000(shell) groups=2000(shell) context=u:r:shell:s0\n")
    return 0


def b_whoami(sh: Session, args: list[str], ctx: Ctx) -> int:
    ctx.out(b"shell\n")
    return 0


def b_uname(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, _ = split_flags(args, "amnrsv")
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
    ctx.out(to_bytes(" ".join(parts) + "\n"))
    return 0


def b_getprop(sh: Session, args: list[str], ctx: Ctx) -> int:
    props = current_props(sh.d.faults.get().props_override, sh.d.confinement)
    if not args:
        ctx.out(to_bytes("".join(f"[{k}]: [{v}]\n" for k, v in sorted(props.items()))))
    else:
        ctx.out(to_bytes(props.get(args[0], args[1] if len(args) > 1 else "") + "\n"))
    return 0


def b_sleep(sh: Session, args: list[str], ctx: Ctx) -> int:
    try:
        seconds = sum(float(a.rstrip("s")) for a in args) if args else None
    except ValueError:
        seconds = None
    if seconds is None:
        ctx.err(to_bytes(f"sleep: invalid number '{' '.join(args)}'\n"))
        return 1
    return 0 if sh.sleep(seconds) else 137

def proc_file(sh: Session, dev: str) -> bytes | None:
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
        if m.group(2) == "cmdline":  # the device argv: the host one names host paths (python, repo, storage)
            return b"".join(a.encode("utf-8", "surrogateescape") + b"\0" for a in proc.argv or [proc.name])
        raw = sh.d.broker.call(host_status, popen)
        if raw is None:
            return None
        text = raw.decode("utf-8", "replace")
        text = re.sub(r"(?m)^Name:\t.*$", f"Name:\t{proc.name}", text)
        text = re.sub(r"(?m)^(Pid|Tgid):\t\d+$", lambda mm: f"{mm.group(1)}:\t{vpid}", text)
        text = re.sub(r"(?m)^PPid:\t\d+$", f"PPid:\t{proc.ppid}", text)
        return text.encode()
    if m.group(2) == "cmdline":
        return b"sh\0"
    return (f"Name:\t{proc.name}\nState:\tS (sleeping)\nTgid:\t{vpid}\nPid:\t{vpid}\nPPid:\t{proc.ppid}\n"
            "Uid:\t2000\t2000\t2000\t2000\nGid:\t2000\t2000\t2000\t2000\n").encode()




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
                st = sh.fs.stat(operand, sh.cwd, follow=op != "-L")
            except OSError:
                return False
            mode = st.st_mode
            checks = {"-e": True, "-f": statmod.S_ISREG(mode), "-d": statmod.S_ISDIR(mode),
                      "-s": statmod.S_ISREG(mode) and st.st_size > 0, "-x": bool(mode & 0o111), "-r": True,
                      "-w": True, "-L": statmod.S_ISLNK(mode)}
            return bool(checks.get(op, False))
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
        ctx.err(to_bytes(f"test: bad expression: {' '.join(args)}\n"))
        return 2
    return 0 if result != negate else 1


def _parse_signal(spec: str) -> int | None:
    spec = spec.upper().removeprefix("SIG")
    if spec.isdigit():
        return int(spec)
    return _SIGNALS.get(spec)


def b_kill(sh: Session, args: list[str], ctx: Ctx) -> int:
    sig = signal.SIGTERM
    rest = list(args)
    if rest and rest[0] == "-s" and len(rest) > 1:
        s = _parse_signal(rest[1])
        rest = rest[2:]
        if s is None:
            ctx.err(to_bytes(f"kill: unknown signal '{args[1]}'\n"))
            return 1
        sig = s
    elif rest and rest[0].startswith("-") and len(rest[0]) > 1:
        s = _parse_signal(rest[0][1:])
        if s is None:
            ctx.err(to_bytes(f"kill: unknown signal '{rest[0][1:]}'\n"))
            return 1
        sig, rest = s, rest[1:]
    if not rest:
        ctx.err(b"usage: kill [-s SIG | -SIG] PID...\n")
        return 1
    status = 0
    for p in rest:
        proc = sh.d.procs.get(int(p)) if p.isdigit() else None
        if proc is None:
            ctx.err(to_bytes(f"kill: {p}: No such process\n"))
            status = 1
            continue
        if sig == 0:
            continue
        # through the host broker: each stream has its own Landlock domain, which may signal only what it started
        if proc.popen is not None:
            sh.d.broker.call(kill_group, proc.popen, sig)
        elif proc.session is not None and sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            sh.d.broker.call(proc.session.abort, sig)
    return status


def _rss_kb(sh: Session, proc: VProc) -> int:
    if proc.popen is None:
        return 0
    raw = sh.d.broker.call(host_status, proc.popen)
    m = re.search(rb"VmRSS:\s+(\d+)", raw or b"")
    return int(m.group(1)) if m else 0


def b_ps(sh: Session, args: list[str], ctx: Ctx) -> int:
    lines = ["USER            PID   PPID        VSZ    RSS WCHAN            ADDR S NAME"]
    for p in sh.d.procs.all():
        lines.append(f"shell      {p.vpid:>8} {p.ppid:>6} {0:>10} {_rss_kb(sh, p):>6} 0                   0 S {p.name}")
    ctx.out(to_bytes("\n".join(lines) + "\n"))
    return 0


def b_pidof(sh: Session, args: list[str], ctx: Ctx) -> int:
    pids = [str(p.vpid) for p in reversed(sh.d.procs.all()) if p.name in args or posixpath.basename(p.name) in args]
    if not pids:
        return 1
    ctx.out(to_bytes(" ".join(pids) + "\n"))
    return 0


# the builtins this module implements, by the name the shell dispatches on (composed in pipeline.virtual.shell)
BUILTINS: dict[str, Builtin] = {
    "true": b_true, ":": b_true, "false": b_false, "exit": b_exit, "echo": b_echo, "cd": b_cd, "pwd": b_pwd,
    "export": b_export, "unset": b_unset, "id": b_id, "whoami": b_whoami, "uname": b_uname, "getprop": b_getprop,
    "sleep": b_sleep, "test": b_test, "[": b_test, "kill": b_kill, "ps": b_ps, "pidof": b_pidof,
}
