"""The ``sync:`` service (adb push/pull/stat/ls): STAT/STA2/LST2, LIST/LIS2, SEND (a temp file in the target's
in-root parent dir, renamed over the target on DONE), RECV, QUIT.  Every path is resolved in-root by the kernel
(:class:`pipeline.rootfs.DeviceRoot`); every byte received is charged to the device's capacity.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
import threading
import time
from typing import TYPE_CHECKING

from pipeline.virtual.adbd import SYNC_DATA_MAX, Stream, StreamClosed
from pipeline.virtual.sandbox import Sandbox
from pipeline.virtual.space import NoSpace

if TYPE_CHECKING:
    from pipeline.virtual.daemon import Daemon

log = logging.getLogger("odeval.virtual.adbd")


# --------------------------------------------------------------------------------------------------------------
# sync: service
# --------------------------------------------------------------------------------------------------------------
def _sync_id(name: bytes) -> int:
    return struct.unpack("<I", name)[0]


class _PushAborted(Exception):
    pass


class SyncService:
    """``sync:`` — STAT/STA2/LST2, LIST/LIS2, SEND (temp file + rename on DONE), RECV, QUIT."""

    def __init__(self, daemon: Daemon, stream: Stream) -> None:
        self.d = daemon
        self.s = stream
        self._out = bytearray()

    # buffered output: many small sync messages become few WRTEs
    def _emit(self, data: bytes | memoryview) -> None:
        self._out += data
        if len(self._out) >= self.s.conn.max_payload:
            self._flush()

    def _flush(self) -> None:
        if self._out:
            data, self._out = bytes(self._out), bytearray()
            self.s.write(data)

    def _fail(self, message: str) -> None:
        msg = message.encode()
        self._emit(b"FAIL" + struct.pack("<I", len(msg)) + msg)
        self._flush()

    def run(self) -> None:
        while True:
            try:
                head = self.s.read_exact(8)
            except StreamClosed:
                return
            cmd, length = bytes(head[:4]), struct.unpack("<I", head[4:])[0]
            if cmd == b"QUIT":
                return
            if length > 4096 and cmd != b"DATA":
                self._fail(f"path too long: {length}")
                return
            arg = bytes(self.s.read_exact(length)).decode("utf-8", "surrogateescape")
            faults = self.d.faults.get()
            if arg.startswith("/sys/"):
                self.d.sandbox.refresh_sys(faults)
            if cmd == b"STAT":
                self._stat_v1(arg)
            elif cmd in (b"STA2", b"LST2"):
                self._stat_v2(arg, cmd, follow=cmd == b"STA2")
            elif cmd in (b"LIST", b"LIS2"):
                self._list(arg, v2=cmd == b"LIS2")
            elif cmd == b"SEND":
                if not self._send(arg):
                    return
            elif cmd == b"RECV":
                self._recv(arg)
            else:
                self._fail(f"unknown sync command {cmd!r}")
                return
            self._flush()

    def _lstat(self, path: str, follow: bool) -> os.stat_result | None:
        try:
            return self.d.sandbox.fs.stat(path, follow=follow)
        except OSError:
            return None

    def _stat_v1(self, path: str) -> None:
        st = self._lstat(path, follow=True)
        if st is None:
            self._emit(b"STAT" + struct.pack("<III", 0, 0, 0))
        else:
            self._emit(b"STAT" + struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)))

    @staticmethod
    def _v2_fields(st: os.stat_result | None, err: int) -> bytes:
        if st is None:
            return struct.pack("<IQQIIIIQqqq", err, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        return struct.pack("<IQQIIIIQqqq", 0, st.st_dev, st.st_ino, st.st_mode, st.st_nlink, 2000, 2000,
                           st.st_size, int(st.st_atime), int(st.st_mtime), int(st.st_ctime))

    def _stat_v2(self, path: str, cmd: bytes, follow: bool) -> None:
        err = 0
        st = None
        try:
            st = self.d.sandbox.fs.stat(path, follow=follow)
        except OSError as e:
            err = e.errno or errno.ENOENT
        self._emit(cmd + self._v2_fields(st, err))

    def _list(self, path: str, v2: bool) -> None:
        fs = self.d.sandbox.fs
        try:
            entries = [(".", fs.stat(path)), ("..", fs.stat(path + "/.."))] + list(fs.entries(path))
        except OSError:
            entries = []
        for name, st in entries:
            raw = name.encode("utf-8", "surrogateescape")
            if v2:
                self._emit(b"DNT2" + self._v2_fields(st, 0) + struct.pack("<I", len(raw)) + raw)
            else:
                self._emit(b"DENT" + struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime),
                                                 len(raw)) + raw)
        if v2:
            self._emit(b"DONE" + self._v2_fields(None, 0) + struct.pack("<I", 0))
        else:
            self._emit(b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))

    def _throttle(self, start: float, nbytes: int, rate: int | None) -> None:
        if rate:
            ahead = nbytes / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    def _send(self, arg: str) -> bool:
        """Receive one file into a temp name in its (in-root) parent dir, renamed over the target on DONE, so an
        interrupted or refused push never leaves a partial file under the destination name.  Every byte is charged
        to the device's capacity as it arrives.  Returns False if the transport was dropped."""
        path, _, mode_s = arg.rpartition(",")
        if not path:
            path, mode_s = arg, "33188"
        try:
            mode = int(mode_s)
        except ValueError:
            mode = 0o100644
        push = _Upload(self.d.sandbox, path, mode)
        start = time.monotonic()
        faults = self.d.faults.get()
        try:
            while True:
                head = self.s.read_exact(8)
                kind, n = bytes(head[:4]), struct.unpack("<I", head[4:])[0]
                if kind == b"DONE":
                    mtime = n
                    break
                if kind != b"DATA" or n > SYNC_DATA_MAX:
                    self._fail(f"bad sync message {kind!r} ({n} bytes) during SEND")
                    return False
                data = self.s.read_exact(n)
                if faults.drop_push_after_bytes is not None and push.received + n >= faults.drop_push_after_bytes:
                    log.warning("fault: dropping transport after %d bytes of SEND %s", push.received + n, path)
                    push.discard()  # clean up before the host can observe the failure
                    self.s.conn.abort()
                    raise _PushAborted
                push.write(data)
                self._throttle(start, push.received, faults.bandwidth_bytes_per_s)
            error = push.finish(mtime)
            if error is None:
                self._emit(b"OKAY" + struct.pack("<I", 0))
            else:
                self._fail(error)
            return True
        except (_PushAborted, StreamClosed):
            return False
        finally:
            push.discard()

    def _recv(self, path: str) -> None:
        faults = self.d.faults.get()
        try:
            fd = self.d.sandbox.fs.open(path)
        except OSError as e:
            self._fail(e.strerror or "open failed")
            return
        start = time.monotonic()
        sent = 0
        with os.fdopen(fd, "rb", buffering=0) as fh:
            while True:
                chunk = fh.read(SYNC_DATA_MAX)
                if not chunk:
                    break
                self._emit(b"DATA" + struct.pack("<I", len(chunk)))
                self._emit(chunk)
                sent += len(chunk)
                self._throttle(start, sent, faults.bandwidth_bytes_per_s)
        self._emit(b"DONE" + struct.pack("<I", 0))


class _Upload:
    """One SEND's file on the device: a temp file (or a symlink target being collected) in the target's in-root
    parent dir, the first error met (the rest of the data is still read, as adbd does), the capacity charge."""

    def __init__(self, sandbox: Sandbox, path: str, mode: int) -> None:
        self.sb, self.path, self.mode = sandbox, path, mode
        self.received = 0
        self.error: str | None = None
        self.link_target = bytearray() if stat.S_ISLNK(mode) else None
        self.parent_fd: int | None = None
        self.tmp: str | None = None
        self.fd: int | None = None
        self.writer = sandbox.space.writer()
        self.kept = False
        try:
            if sandbox.disk_full():
                self.error = "write failed: No space left on device"
                return
            if sandbox.fs.is_dir(path):
                self.error = f"{path}: Is a directory"
                return
            head = Sandbox.normalize(path).rsplit("/", 1)[0] or "/"
            sandbox.fs.mkdir(head, parents=True)  # fixed_push_mkdir
            self.parent_fd, self.leaf = sandbox.fs.parent(path)
            self.tmp = f".{self.leaf}.odeval-partial-{os.getpid()}-{threading.get_ident()}"
            if self.link_target is None:
                self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  0o600, dir_fd=self.parent_fd)
        except OSError as e:
            self.error = f"{path}: {e.strerror}"

    def write(self, data: memoryview) -> None:
        self.received += len(data)
        if self.error is not None:
            return
        try:
            self.writer.charge(len(data))
            if self.fd is not None:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            elif self.link_target is not None:
                self.link_target += data
        except NoSpace:
            self.error = "write failed: No space left on device"
            self.discard()
        except OSError as e:
            self.error = f"write failed: {e.strerror}"
            self.discard()

    def finish(self, mtime: int) -> str | None:
        """Publish the file under its name (rename over it); the error message instead, if any."""
        if self.error is None and self.writer.doomed:
            self.error = "write failed: No space left on device"
        if self.error is not None or self.parent_fd is None or self.tmp is None:
            return self.error or f"{self.path}: cannot write"
        try:
            if self.fd is not None:
                os.fchmod(self.fd, stat.S_IMODE(self.mode))
                os.utime(self.fd, (mtime, mtime))
                os.close(self.fd)
                self.fd = None
            else:
                target = bytes(self.link_target or b"").rstrip(b"\0").decode("utf-8", "surrogateescape")
                os.symlink(target, self.tmp, dir_fd=self.parent_fd)
            replaced = _exists_at(self.parent_fd, self.leaf)
            os.rename(self.tmp, self.leaf, src_dir_fd=self.parent_fd, dst_dir_fd=self.parent_fd)
            self.tmp = None
            self.kept = True
            if replaced:
                self.sb.space.freed()
        except OSError as e:
            return f"write failed: {e.strerror}"
        return None

    def discard(self) -> None:
        """Drop the partial file and the charge: nothing half-written may survive a failed SEND."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tmp is not None and self.parent_fd is not None:
            try:
                os.unlink(self.tmp, dir_fd=self.parent_fd)
            except OSError:
                pass
            self.tmp = None
        if self.parent_fd is not None:
            os.close(self.parent_fd)
            self.parent_fd = None
        self.writer.close(kept=self.kept)


def _exists_at(dirfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError:
        return False
    return True


def serve_sync_stream(daemon: Daemon, stream: Stream, service: str) -> None:
    """The ``sync:`` service on one stream (injected into the daemon by :mod:`pipeline.virtual.services`)."""
    SyncService(daemon, stream).run()
