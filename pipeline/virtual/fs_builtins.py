"""File builtins of the virtual device shell (cat, ls, mkdir, rm, mv, cp, touch, chmod, stat, df, *sum).

Every path is resolved by the kernel inside the device storage (:class:`pipeline.rootfs.DeviceRoot`), every
byte written is charged to the device's capacity (:meth:`pipeline.virtual.sandbox.Sandbox.create`); no builtin
ever builds a host path."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat as statmod
import time
from typing import Any

from pipeline.virtual.sandbox import Sandbox
from pipeline.virtual.shell_api import Builtin, Ctx, Session, each_path, report_error, split_flags, to_bytes
from pipeline.virtual.shell_builtins import proc_file


def b_cat(sh: Session, args: list[str], ctx: Ctx) -> int:
    status = 0
    for path in args or ["-"]:
        if path == "-":
            while data := ctx.read_in():
                ctx.out(data)
            continue
        dev = Sandbox.normalize(path, sh.cwd)
        if dev.startswith("/proc/"):
            data = proc_file(sh, dev)
            if data is None:
                ctx.err(to_bytes(f"cat: {path}: No such file or directory\n"))
                status = 1
            else:
                ctx.out(data)
            continue
        if dev.startswith("/sys/"):
            sh.sb.refresh_sys(sh.d.faults.get())
        try:
            with os.fdopen(sh.fs.open(path, cwd=sh.cwd), "rb") as fh:
                while chunk := fh.read(1 << 20):
                    ctx.out(chunk)
        except OSError as e:
            report_error(ctx, "cat", path, e)
            status = 1
    return status


def _mode_str(mode: int) -> str:
    return statmod.filemode(mode)


def b_ls(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, paths = split_flags(args, "alA1dhR")
    status = 0
    files: list[tuple[str, os.stat_result]] = []
    dirs: list[str] = []
    for path in paths or ["."]:
        if Sandbox.normalize(path, sh.cwd).startswith("/sys"):  # simulated sysfs appears before it is listed
            sh.sb.refresh_sys(sh.d.faults.get())
        try:
            st = sh.fs.stat(path, sh.cwd)
        except OSError as e:
            report_error(ctx, "ls", path, e)
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
                line = f"{_mode_str(st.st_mode)} {st.st_nlink:>2} shell shell {st.st_size:>10} {when} {name}\n"
                ctx.out(to_bytes(line))
            else:
                ctx.out(to_bytes(name + "\n"))

    emit(files)
    for i, d in enumerate(dirs):
        if len(dirs) + len(files) > 1:
            ctx.out(to_bytes(("\n" if i or files else "") + f"{d}:\n"))
        try:
            entries = list(sh.fs.entries(d, sh.cwd))
        except OSError as e:
            report_error(ctx, "ls", d, e)
            status = 1
            continue
        if "a" in flags:
            entries = [(".", sh.fs.stat(d, sh.cwd)), ("..", sh.fs.stat(d + "/..", sh.cwd)), *entries]
        elif "A" not in flags:
            entries = [x for x in entries if not x[0].startswith(".")]
        emit(entries)
    return status


def b_mkdir(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, paths = split_flags(args, "pm")
    mode = 0o777
    if "m" in flags and paths:
        mode = int(paths.pop(0), 8)
    return each_path(ctx, "mkdir", paths, lambda p: sh.fs.mkdir(p, mode, sh.cwd, parents="p" in flags),
                     tolerated=FileExistsError if "p" in flags else None)


def b_rm(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, paths = split_flags(args, "rRfvd")

    def remove(p: str) -> None:
        if Sandbox.normalize(p, sh.cwd) == "/":
            raise PermissionError(13, "Permission denied")
        sh.fs.remove(p, sh.cwd, recursive=bool(flags & {"r", "R"}))
        sh.sb.space.freed()

    return each_path(ctx, "rm", paths, remove, tolerated=FileNotFoundError if "f" in flags else None)


def b_mv(sh: Session, args: list[str], ctx: Ctx) -> int:
    _flags_, paths = split_flags(args, "fin")
    if len(paths) < 2:
        ctx.err(b"mv: needs 2 arguments\n")
        return 1
    status = 0
    for src in paths[:-1]:
        try:
            sh.fs.rename(src, paths[-1], sh.cwd)  # a rename on one filesystem: no bytes move, none are charged
            sh.sb.space.freed()  # it may have replaced a file
        except OSError as e:
            report_error(ctx, "mv", src, e)
            status = 1
    return status


def _copy_file(sh: Session, src: str, dst: str) -> None:
    """Copy one file in-root, charging every byte (``cp`` on a full device fails like a phone's)."""
    st = sh.fs.stat(src, sh.cwd)
    with os.fdopen(sh.fs.open(src, cwd=sh.cwd), "rb") as fin, sh.sb.create(dst, "w", sh.cwd) as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
        os.fchmod(fout.fileno(), statmod.S_IMODE(st.st_mode))


def _copy_tree(sh: Session, src: str, dst: str) -> None:
    """``cp -r``: directories re-created, files copied, symlinks copied as links (never followed)."""
    sh.fs.mkdir(dst, 0o777, sh.cwd, parents=True)
    for name, st in sh.fs.entries(src, sh.cwd):
        s, d = posixpath.join(Sandbox.normalize(src, sh.cwd), name), posixpath.join(Sandbox.normalize(dst, sh.cwd),
                                                                                  name)
        if statmod.S_ISDIR(st.st_mode):
            _copy_tree(sh, s, d)
        elif statmod.S_ISLNK(st.st_mode):
            pfd, leaf = sh.fs.parent(s)
            try:
                target = os.readlink(leaf, dir_fd=pfd)
            finally:
                os.close(pfd)
            sh.fs.symlink(target, d)
        elif statmod.S_ISREG(st.st_mode):
            _copy_file(sh, s, d)


def b_cp(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, paths = split_flags(args, "rRpaf")
    if len(paths) < 2:
        ctx.err(b"cp: needs 2 arguments\n")
        return 1
    status = 0
    dest = paths[-1]
    into = sh.fs.is_dir(dest, sh.cwd)
    for src in paths[:-1]:
        target = posixpath.join(dest, posixpath.basename(src.rstrip("/"))) if into else dest
        try:
            if sh.fs.is_dir(src, sh.cwd):
                if not flags & {"r", "R", "a"}:
                    raise IsADirectoryError(21, "Is a directory")
                _copy_tree(sh, src, target)
            else:
                _copy_file(sh, src, target)
        except OSError as e:
            report_error(ctx, "cp", src, e)
            status = 1
    return status


def b_touch(sh: Session, args: list[str], ctx: Ctx) -> int:
    def touch(p: str) -> None:
        fd = sh.fs.open(p, os.O_WRONLY | os.O_CREAT, 0o666, cwd=sh.cwd)
        try:
            os.utime(fd)
        finally:
            os.close(fd)

    return each_path(ctx, "touch", args, touch)


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


def b_chmod(sh: Session, args: list[str], ctx: Ctx) -> int:
    flags, rest = split_flags(args, "R")
    if len(rest) < 2:
        ctx.err(b"chmod: needs MODE FILE...\n")
        return 1
    spec, paths = rest[0], rest[1:]
    status = 0
    for p in paths:
        try:
            sh.fs.chmod(p, _chmod_mode(spec, statmod.S_IMODE(sh.fs.stat(p, sh.cwd).st_mode)), sh.cwd)
        except ValueError:
            ctx.err(to_bytes(f"chmod: invalid mode '{spec}'\n"))
            return 1
        except OSError as e:
            report_error(ctx, "chmod", p, e)
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
            st = sh.fs.stat(p, sh.cwd, follow=follow)
        except OSError as e:
            ctx.err(to_bytes(f"stat: '{p}': {e.strerror}\n"))
            status = 1
            continue
        if fmt is None:
            ctx.out(to_bytes(_stat_format("  File: %n\n  Size: %s\tBlocks: %b\t%F\nAccess: (0%a/%A)\tUid: (2000/shell)"
                                    "\nModify: %y\n", p, st)))
        else:
            ctx.out(to_bytes(_stat_format(fmt, p, st) + "\n"))
    return status


def b_df(sh: Session, args: list[str], ctx: Ctx) -> int:
    """POSIX-ish ``df``: one filesystem (/data) whose size is the configured capacity."""
    flags, paths = split_flags(args, "khPa")
    faults = sh.d.faults.get()
    used = sh.sb.used_bytes()  # what the capacity ledger counts (pipeline/virtual/space.py)
    total = faults.capacity_bytes
    avail = 0 if faults.disk_full else sh.sb.space.available()
    for p in paths:
        try:
            sh.fs.stat(p, sh.cwd)
        except OSError as e:
            report_error(ctx, "df", p, e)
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
    ctx.out(to_bytes(head + f"/dev/block/odeval-virtual {row[0]:>9} {row[1]:>8} {row[2]:>9} {pct:>3}% /data\n"))
    return 0


def _hash_file(h: Any, fd: int) -> None:
    """Feed a file to ``h`` through one reused 1 MiB buffer.

    Why not ``fh.read(1 << 20)``: a fresh 1 MiB bytes per chunk is an mmap/munmap + page faults each time, CPU
    that the virtual device takes from the sender it shares the host's cores with (push verifies every file)."""
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with os.fdopen(fd, "rb", buffering=0) as fh:
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
                    _hash_file(h, sh.fs.open(p, cwd=sh.cwd))
            except OSError as e:
                report_error(ctx, f"{algo}sum", p, e)
                status = 1
                continue
            ctx.out(to_bytes(f"{h.hexdigest()}  {p}\n"))
        return status
    return run


# the builtins this module implements, by the name the shell dispatches on (composed in pipeline.virtual.shell)
BUILTINS: dict[str, Builtin] = {
    "cat": b_cat, "ls": b_ls, "mkdir": b_mkdir, "rm": b_rm, "mv": b_mv, "cp": b_cp, "touch": b_touch, "chmod":
    b_chmod, "stat": b_stat, "df": b_df, "sha256sum": _hashsum("sha256"), "md5sum": _hashsum("md5"), "sha1sum":
    _hashsum("sha1"),
}
