"""File builtins of the virtual device shell (cat, ls, mkdir, rm, mv, cp, touch, chmod, stat, df, *sum): every path
goes through the sandbox, so nothing outside the device storage is reachable."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import shutil
import stat as statmod
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.virtual.sandbox import Sandbox, SandboxError
from pipeline.virtual.shell_builtins import BUILTINS, Builtin, Ctx, _b, _err, _flags, _proc_file, builtin

if TYPE_CHECKING:
    from pipeline.virtual.shell import Session


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


def _hash_file(h: Any, path: os.PathLike[str]) -> None:
    """Feed a file to ``h`` through one reused 1 MiB buffer.

    Why not ``fh.read(1 << 20)``: a fresh 1 MiB bytes per chunk is an mmap/munmap + page faults each time, CPU
    that the virtual device takes from the sender it shares the host's cores with (push verifies every file)."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])


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
                    _hash_file(h, sh.host(p))
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

