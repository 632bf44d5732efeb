"""Bytes to the device: a file over the sync protocol (one socket, DATA messages batched, the device's FAIL read
back as text) or, as a fallback mover, through the adb binary's own ``push``.
"""

from __future__ import annotations

import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.device.remote import IO_TIMEOUT_S, TransferError, device_io, device_serial, explain_error

SYNC_CHUNK = 64 * 1024  # the sync protocol's maximum DATA payload
_BATCH = 16  # DATA messages per socket write (~1 MiB)


# ----------------------------------------------------------------------------------------------------------------
# sync SEND with 64 KiB chunks
# ----------------------------------------------------------------------------------------------------------------
def _sync_fail_message(conn: Any) -> str | None:
    """After a failed send, read a pending ``FAIL <msg>`` the device may have sent before closing."""
    try:
        conn.conn.settimeout(2.0)
        head = conn.read_exact(8)
        if head[:4] == b"FAIL":
            n = struct.unpack("<I", head[4:])[0]
            return conn.read_exact(n).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - best effort: the connection is already broken
        return None
    return None


def _send_data(sock: socket.socket, local: Path, on_bytes: Callable[[int], None]) -> None:
    """DATA messages of 64 KiB, ``_BATCH`` of them per ``sendall`` from one reused buffer.

    Why batch: each write to the adb server tends to become one transport packet; ~1 MiB writes mean far fewer
    packets (and syscalls) per byte on both the server and the device side than one write per 64 KiB message.
    """
    slot = 8 + SYNC_CHUNK
    buf = bytearray(slot * _BATCH)
    view = memoryview(buf)
    with open(local, "rb", buffering=0) as fh:
        while True:
            used = 0
            payload = 0
            eof = False
            for _ in range(_BATCH):
                n = fh.readinto(view[used + 8: used + slot])
                if not n:
                    eof = True
                    break
                struct.pack_into("<4sI", buf, used, b"DATA", n)
                used += 8 + n
                payload += n
                if n < SYNC_CHUNK:  # short read: keep messages contiguous, send what we have
                    break
            if used:
                sock.sendall(view[:used])
                on_bytes(payload)
            if eof:
                return


class SyncSession:
    """One ``sync:`` service connection reused for every file of a directory (SEND/DATA*/DONE → OKAY|FAIL each).

    Why one session: opening a transport + ``sync:`` per file costs round trips; adb's own directory push also
    keeps one session. After any error the session is closed and must not be reused.
    """

    def __init__(self, dev: Any) -> None:
        self.dev = dev
        self.conn: Any = None

    def _open(self) -> Any:
        if self.conn is None:
            c = self.dev.open_transport(timeout=IO_TIMEOUT_S)
            try:
                c.send_command("sync:")
                c.check_okay()
                c.conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)  # keep the server's reads full
            except BaseException:
                c.close()
                raise
            self.conn = c
        return self.conn

    def send(self, local: Path, remote: str, mode: int, mtime: int, on_bytes: Callable[[int], None]) -> None:
        """Send one file; raises :class:`TransferError` (device FAIL or connection lost)."""
        try:
            with device_io(self.dev, f"pushing {local.name} to {remote}"):
                self._send(self._open(), local, remote, mode, mtime, on_bytes)
        except BaseException:
            self.close(quit_first=False)
            raise

    def _send(self, c: Any, local: Path, remote: str, mode: int, mtime: int,
              on_bytes: Callable[[int], None]) -> None:
        sock: socket.socket = c.conn
        target = f"{remote},{stat.S_IFREG | mode}".encode()
        failed: OSError | None = None
        try:
            sock.sendall(b"SEND" + struct.pack("<I", len(target)) + target)
            _send_data(sock, local, on_bytes)
            sock.sendall(b"DONE" + struct.pack("<I", mtime))
        except OSError as e:  # the device may have refused the file and closed: look for its FAIL first
            failed = e
        if failed is not None:
            msg = _sync_fail_message(c)
            if msg is None:
                raise failed
            raise send_failed(self.dev, remote, msg)
        head = c.read_exact(8)
        if head[:4] == b"FAIL":
            msg = c.read_exact(struct.unpack("<I", head[4:])[0]).decode("utf-8", "replace")
            raise send_failed(self.dev, remote, msg)
        if head[:4] != b"OKAY":
            raise TransferError(f"device {device_serial(self.dev)}: unexpected sync reply {bytes(head)!r} pushing "
                                f"{remote}: re-run push; if it repeats, restart the adb server (`adb kill-server`)")

    def close(self, quit_first: bool = True) -> None:
        if self.conn is None:
            return
        try:
            if quit_first:
                self.conn.conn.sendall(b"QUIT" + struct.pack("<I", 0))
        except OSError:
            pass
        finally:
            self.conn.close()
            self.conn = None


def sync_send(dev: Any, local: Path, remote: str, mode: int, mtime: int,
               on_bytes: Callable[[int], None]) -> None:
    """Send one file in a session of its own."""
    session = SyncSession(dev)
    session.send(local, remote, mode, mtime, on_bytes)
    session.close()


def adb_push_file(dev: Any, local: Path, remote: str, on_bytes: Callable[[int], None]) -> None:
    """The alternative mover: the adb binary's own ``push`` (same server, same device) for one file."""
    from pipeline.device.adb import AdbToolError, run_adb

    client = getattr(dev, "_client", None)
    try:
        proc = run_adb(["-s", device_serial(dev), "push", str(local), remote], port=getattr(client, "port", None),
                       host=getattr(client, "host", None), timeout=max(IO_TIMEOUT_S, local.stat().st_size / 1e6))
    except AdbToolError as e:
        raise TransferError(f"pushing {local.name} to {remote}: {e}") from None
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip().splitlines()
        text = msg[-1] if msg else f"adb push exit {proc.returncode}"
        low = text.lower()
        if "no space" in low or "permission denied" in low or "read-only" in low:
            raise send_failed(dev, remote, text)
        raise explain_error(dev, ConnectionError(text), f"pushing {local.name} to {remote}")
    on_bytes(local.stat().st_size)


def send_failed(dev: Any, remote: str, msg: str) -> TransferError:
    low = msg.lower()
    if "no space" in low or "enospc" in low:
        return TransferError(f"device {device_serial(dev)} is full writing {remote} ({msg}): free space on the device "
                             "(e.g. remove old dirs under device.remote_root) and re-run push")
    if "permission denied" in low or "read-only" in low or "eacces" in low:
        return TransferError(f"device {device_serial(dev)}: permission denied writing {remote} ({msg}): set "
                             "device.remote_root to a writable dir such as /data/local/tmp/odeval")
    return TransferError(f"device {device_serial(dev)} refused {remote}: {msg}: check device.remote_root and re-run "
                         "push")
