"""A minimal, independent ADB *host* transport client (pure sockets) for protocol tests of the virtual device.

Why not the adb binary: the adb server always announces 0x01000001 (no checksums) and maxdata 1 MiB, so it never
exercises the older protocol a device must still speak. This client talks straight to the daemon's TCP port as an
old host would: any version (default 0x01000000 → checksummed packets), any maxdata (default 4096), one WRTE in
flight per stream, and it *verifies* every checksum it receives while the negotiated version requires them.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable

A_CNXN, A_OPEN, A_OKAY, A_WRTE, A_CLSE, A_AUTH = (
    0x4E584E43, 0x4E45504F, 0x59414B4F, 0x45545257, 0x45534C43, 0x48545541)
NAMES = {A_CNXN: "CNXN", A_OPEN: "OPEN", A_OKAY: "OKAY", A_WRTE: "WRTE", A_CLSE: "CLSE", A_AUTH: "AUTH"}
HEADER = struct.Struct("<6I")
SKIP_CHECKSUM = 0x01000001


class ProtocolError(AssertionError):
    """The device broke the protocol (bad magic/checksum, oversized WRTE, unexpected packet)."""


def checksum(data: bytes) -> int:
    return sum(data) & 0xFFFFFFFF


class MiniAdb:
    """One transport. ``version``/``maxdata`` are what we announce in CNXN."""

    def __init__(self, host: str, port: int, *, version: int = 0x01000000, maxdata: int = 4096,
                 timeout: float = 20.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.version = version
        self.maxdata = maxdata
        self.negotiated = 0x01000000  # until the device's CNXN arrives (adb's A_VERSION_MIN)
        self.device_maxdata = 0
        self.checked = 0  # packets whose non-zero-length payload checksum we verified
        self.max_wrte = 0
        self._next_local = 1
        self._buf = b""
        self._pending: dict[int, bytearray] = {}  # WRTE payloads received per local stream id, not yet consumed

    # ------------------------------------------------------------------ packets
    def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"", *, bad_checksum: bool = False) -> None:
        check = checksum(data) if self.negotiated < SKIP_CHECKSUM else 0
        if bad_checksum:
            check = (checksum(data) + 1) & 0xFFFFFFFF
        self.sock.sendall(HEADER.pack(cmd, arg0, arg1, len(data), check, cmd ^ 0xFFFFFFFF) + data)

    def _read(self, n: int) -> bytes:
        while len(self._buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("device closed the connection")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def recv(self) -> tuple[int, int, int, bytes]:
        cmd, arg0, arg1, length, check, magic = HEADER.unpack(self._read(24))
        if magic != cmd ^ 0xFFFFFFFF:
            raise ProtocolError(f"bad magic on {cmd:#x}")
        data = self._read(length) if length else b""
        if cmd == A_CNXN:  # the device sends its CNXN under the version it just negotiated (adbd's send_connect)
            self.negotiated = min(self.version, arg0)
        if self.negotiated < SKIP_CHECKSUM:
            if check != checksum(data):
                raise ProtocolError(f"{NAMES.get(cmd, hex(cmd))}: data_check {check:#x} != sum {checksum(data):#x}")
            if data:
                self.checked += 1
        if cmd == A_WRTE:
            self.max_wrte = max(self.max_wrte, len(data))
            if self.device_maxdata and len(data) > min(self.maxdata, self.device_maxdata):
                raise ProtocolError(f"WRTE of {len(data)} bytes exceeds maxdata {self.maxdata}")
        return cmd, arg0, arg1, data

    # ------------------------------------------------------------------ handshake
    def connect(self, sign: Callable[[bytes], bytes] | None = None, max_tries: int = 3) -> bytes:
        """CNXN, answering AUTH tokens with ``sign`` (up to max_tries) → the device banner."""
        self.send(A_CNXN, self.version, self.maxdata, b"host::\0")
        tries = 0
        while True:
            cmd, arg0, arg1, data = self.recv()
            if cmd == A_CNXN:
                self.negotiated = min(self.version, arg0)
                self.device_maxdata = arg1
                return data
            if cmd != A_AUTH or arg0 != 1:
                raise ProtocolError(f"expected CNXN or AUTH TOKEN, got {NAMES.get(cmd, hex(cmd))} {arg0}")
            if sign is None or tries >= max_tries:
                raise PermissionError("device asks for AUTH and we have no (more) signatures")
            tries += 1
            self.send(A_AUTH, 2, 0, sign(data))

    # ------------------------------------------------------------------ streams
    def open(self, service: str) -> tuple[int, int]:
        local = self._next_local
        self._next_local += 1
        self.send(A_OPEN, local, 0, service.encode() + b"\0")
        cmd, arg0, arg1, _ = self.recv()
        if cmd != A_OKAY or arg1 != local:
            raise ProtocolError(f"OPEN {service!r}: got {NAMES.get(cmd, hex(cmd))}")
        return local, arg0

    def write(self, local: int, remote: int, data: bytes) -> None:
        """WRTEs of at most the smaller maxdata, each waiting for the device's OKAY."""
        step = min(self.maxdata, self.device_maxdata)
        for off in range(0, len(data), step):
            self.send(A_WRTE, local, remote, data[off:off + step])
            while True:
                cmd, _a0, a1, payload = self.recv()
                if cmd == A_OKAY and a1 == local:
                    break
                if cmd == A_WRTE and a1 == local:  # the reply may overtake nothing, but be liberal in what we take
                    self._pending.setdefault(local, bytearray()).extend(payload)
                    self.send(A_OKAY, local, remote)
                    continue
                raise ProtocolError(f"expected OKAY, got {NAMES.get(cmd, hex(cmd))}")

    def read_until_close(self, local: int, remote: int, timeout: float = 20.0) -> bytes:
        out = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            cmd, _a0, a1, data = self.recv()
            if a1 != local:
                continue
            if cmd == A_WRTE:
                out += data
                self.send(A_OKAY, local, remote)
            elif cmd == A_CLSE:
                self.send(A_CLSE, local, remote)
                return bytes(out)
        raise TimeoutError("stream not closed")

    def shell(self, command: str) -> bytes:
        local, remote = self.open(f"shell:{command}")
        return self.read_until_close(local, remote)

    # ------------------------------------------------------------------ sync
    def _sync_read(self, local: int, remote: int, n: int) -> bytes:
        pending = self._pending.setdefault(local, bytearray())
        while len(pending) < n:
            cmd, _a0, a1, data = self.recv()
            if a1 == local and cmd == A_WRTE:
                pending += data
                self.send(A_OKAY, local, remote)
            elif a1 == local and cmd == A_CLSE:
                raise EOFError("sync stream closed")
        out = bytes(pending[:n])
        del pending[:n]
        return out

    def push(self, path: str, data: bytes, mode: int = 0o100644, mtime: int = 1_700_000_000) -> None:
        local, remote = self.open("sync:")
        spec = f"{path},{mode}".encode()
        msg = b"SEND" + struct.pack("<I", len(spec)) + spec
        for off in range(0, len(data), 65536):
            chunk = data[off:off + 65536]
            msg += b"DATA" + struct.pack("<I", len(chunk)) + chunk
        msg += b"DONE" + struct.pack("<I", mtime)
        self.write(local, remote, msg)
        head = self._sync_read(local, remote, 8)
        if head[:4] != b"OKAY":
            n = struct.unpack("<I", head[4:])[0]
            raise OSError(f"push failed: {head[:4]!r} {self._sync_read(local, remote, n)!r}")
        self.write(local, remote, b"QUIT" + struct.pack("<I", 0))
        self.read_until_close(local, remote)

    def pull(self, path: str) -> bytes:
        local, remote = self.open("sync:")
        raw = path.encode()
        self.write(local, remote, b"RECV" + struct.pack("<I", len(raw)) + raw)
        out = bytearray()
        while True:
            head = self._sync_read(local, remote, 8)
            kind, n = head[:4], struct.unpack("<I", head[4:])[0]
            if kind == b"DONE":
                break
            if kind != b"DATA":
                raise OSError(f"pull failed: {kind!r} {self._sync_read(local, remote, n)!r}")
            out += self._sync_read(local, remote, n)
        self.write(local, remote, b"QUIT" + struct.pack("<I", 0))
        self.read_until_close(local, remote)
        return bytes(out)

    def close(self) -> None:
        self.sock.close()
