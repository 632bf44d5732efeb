"""A minimal, independent ADB *host* transport client (pure sockets) for protocol tests of the virtual device.

Why not the adb binary: the adb server always announces 0x01000001 (no checksums) and maxdata 1 MiB, so it never
exercises the older protocol a device must still speak. This client talks straight to the daemon's TCP port as an
old host would: any version (default 0x01000000 → checksummed packets), any maxdata (default 4096), one WRTE in
flight per stream, and it *verifies* every checksum it receives while the negotiated version requires them.

It is also the independent client that speaks 0x01000001 (the PyPI ``adb-shell`` package, the other one, announces
0x01000000 only and verifies checksums unconditionally): shell v1/v2 with exit status, sync push/pull/stat, and both
ways of ending a stream — the host's CLSE, answered by the device (what adb-shell does after every sync), or the
device's own CLSE after QUIT or the end of a command. Stream-ending waits are bounded by the socket timeout, so a
device that never answers fails a test instead of hanging it.
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

    def shell_v2(self, command: str) -> tuple[bytes, bytes, int]:
        """``shell,v2,raw:`` as adb ≥ 29 opens it → (stdout, stderr, exit status from the id-3 packet)."""
        local, remote = self.open(f"shell,v2,raw:{command}")
        raw = self.read_until_close(local, remote)
        out, err, code = bytearray(), bytearray(), None
        off = 0
        while off < len(raw):
            kind, n = struct.unpack_from("<BI", raw, off)
            payload = raw[off + 5:off + 5 + n]
            off += 5 + n
            if kind == 1:
                out += payload
            elif kind == 2:
                err += payload
            elif kind == 3:
                code = payload[0]
        if code is None:
            raise ProtocolError("shell v2 stream closed without an exit packet")
        return bytes(out), bytes(err), code

    def close_stream(self, local: int, remote: int) -> None:
        """Host-initiated close: CLSE, then wait for the device's CLSE(remote, local), as adb-shell's ``_clse``
        does. WRTEs still arriving for the stream are dropped un-OKAYed (adb's host finds no socket for them)."""
        self.send(A_CLSE, local, remote)
        while True:
            cmd, a0, a1, _ = self.recv()
            if a1 != local:
                continue
            if cmd == A_CLSE:
                if a0 != remote:
                    raise ProtocolError(f"CLSE answer names stream {a0}, expected {remote}")
                return

    def barrier(self, marker_id: int = 0x7FFF0000) -> list[tuple[int, int, int, bytes]]:
        """Every packet the device sends before it answers an OPEN of an unknown service (CLSE(0, marker_id)).

        The device handles packets in order on one reader thread, so the list holds everything it answered to what
        we sent before (e.g. empty = an unknown-id WRTE got no reply). Packets sent by service threads on their
        own may race the marker; use it when no stream is active."""
        self.send(A_OPEN, marker_id, 0, b"odeval-no-such-service:\0")
        seen = []
        while True:
            pkt = self.recv()
            if pkt[0] == A_CLSE and pkt[1:3] == (0, marker_id):
                return seen
            seen.append(pkt)

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

    def push(self, path: str, data: bytes, mode: int = 0o100644, mtime: int = 1_700_000_000, *,
             end: str = "quit") -> None:
        local, remote = self.open("sync:")
        spec = f"{path},{mode}".encode()
        msg = bytearray(b"SEND" + struct.pack("<I", len(spec)) + spec)
        for off in range(0, len(data), 65536):
            chunk = data[off:off + 65536]
            msg += b"DATA" + struct.pack("<I", len(chunk)) + chunk
        msg += b"DONE" + struct.pack("<I", mtime)
        self.write(local, remote, bytes(msg))
        head = self._sync_read(local, remote, 8)
        if head[:4] != b"OKAY":
            n = struct.unpack("<I", head[4:])[0]
            raise OSError(f"push failed: {head[:4]!r} {self._sync_read(local, remote, n)!r}")
        self._end_sync(local, remote, end)

    def _end_sync(self, local: int, remote: int, end: str) -> None:
        """``quit``: QUIT, the device closes (adb's way); ``clse``: we close and wait for the answer (adb-shell's)."""
        if end == "quit":
            self.write(local, remote, b"QUIT" + struct.pack("<I", 0))
            self.read_until_close(local, remote)
        elif end == "clse":
            self.close_stream(local, remote)
        else:
            raise ValueError(end)

    def stat(self, path: str, *, end: str = "quit") -> tuple[int, int, int]:
        """sync STAT (v1) → (mode, size, mtime); all zero for a missing file."""
        local, remote = self.open("sync:")
        raw = path.encode()
        self.write(local, remote, b"STAT" + struct.pack("<I", len(raw)) + raw)
        reply = self._sync_read(local, remote, 16)
        if reply[:4] != b"STAT":
            raise ProtocolError(f"STAT answered with {reply[:4]!r}")
        self._end_sync(local, remote, end)
        return struct.unpack("<III", reply[4:])

    def pull(self, path: str, *, end: str = "quit") -> bytes:
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
        self._end_sync(local, remote, end)
        return bytes(out)

    def close(self) -> None:
        self.sock.close()
