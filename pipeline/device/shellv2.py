"""An interactive shell-protocol-v2 session with stdin, over adbutils' transport.

adbutils has no public API to write stdin to a v2 shell; the run stage needs exactly that (prompts go to the app's
stdin, never the command line) and precise timestamps of stdout chunks.  Packets: 1-byte id + u32 LE length +
payload; ids 0 stdin, 1 stdout, 2 stderr, 3 exit, 4 close-stdin, 5 window-size.
"""

from __future__ import annotations

import select
import socket
import struct
import time

import adbutils

__all__ = ["ShellV2", "ShellV2Error", "ShellClosed", "OPEN_TIMEOUT_S"]

_HDR = struct.Struct("<BI")
STDIN, STDOUT, STDERR, EXIT, CLOSE_STDIN = 0, 1, 2, 3, 4
MAX_STDIN_PACKET = 64 * 1024
OPEN_TIMEOUT_S = 30.0  # a phone that went away mid-handshake must not hang the run forever


class ShellV2Error(ConnectionError):
    """The shell could not be opened (device offline/gone, no shell_v2, refused, no answer in time).

    A ConnectionError: every caller that handles a lost transport handles this too."""


class ShellClosed(EOFError):
    """stdin cannot be written: the stream ended (the command exited, or the transport is gone).

    An EOFError, as the Channel protocol says for a gone stdin: reading on tells which of the two happened (an
    exit packet → the command exited; EOF without one → the transport was lost)."""


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux; elsewhere delayed ACKs remain (timing is coarser)


class ShellV2:
    """``shell,v2,raw:<cmd>`` with streamed stdin; read() yields (stream_id, payload) as packets arrive."""

    def __init__(self, conn: adbutils.AdbConnection, cmd: str) -> None:
        self._c = conn
        self._sock: socket.socket = conn.conn
        self._buf = bytearray()
        self._eof = False
        self.cmd = cmd
        self.exit_code: int | None = None

    @classmethod
    def open(cls, dev: adbutils.AdbDevice, cmd: str, timeout: float = OPEN_TIMEOUT_S) -> ShellV2:
        """Start ``cmd`` (already shell-quoted by the caller) on ``dev`` with the v2 protocol.

        ``timeout`` bounds reaching the adb server, selecting the device and the device's OKAY; the open stream
        then blocks without a timeout (reads use select with their own deadlines)."""
        try:
            c = dev.open_transport(timeout=timeout)
        except Exception as e:  # AdbError (offline, not found), AdbTimeout, OSError (server gone)
            raise ShellV2Error(f"cannot reach {dev.serial}: {e}") from None
        try:
            c.conn.settimeout(timeout)
            c.send_command("shell,v2,raw:" + cmd)
            c.check_okay()
        except Exception as e:
            c.close()
            raise ShellV2Error(f"cannot open a v2 shell on {dev.serial}: {e}") from None
        c.conn.settimeout(None)
        return cls(c, cmd)

    def write(self, data: bytes) -> None:
        """Send stdin bytes (split into packets of at most 64 KiB)."""
        view = memoryview(data)
        for off in range(0, len(view), MAX_STDIN_PACKET):
            part = view[off:off + MAX_STDIN_PACKET]
            self._send(_HDR.pack(STDIN, len(part)) + bytes(part))

    def close_stdin(self) -> None:
        """Tell the remote command its stdin ended."""
        self._send(_HDR.pack(CLOSE_STDIN, 0))

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise ShellClosed(f"shell stream closed: {e}") from None

    def _packet(self) -> tuple[int, bytes] | None:
        if len(self._buf) < 5:
            return None
        kind, n = _HDR.unpack_from(self._buf)
        if len(self._buf) < 5 + n:
            return None
        payload = bytes(self._buf[5:5 + n])
        del self._buf[:5 + n]
        return kind, payload

    def read(self, timeout: float) -> tuple[int, bytes] | None:
        """Next stdout(1)/stderr(2) packet, None if none within ``timeout`` s; EOFError once the session ended.

        The exit packet (3) sets :attr:`exit_code` and is not returned; the EOFError that follows ends reading.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            pkt = self._packet()
            while pkt is not None:
                kind, payload = pkt
                if kind in (STDOUT, STDERR):
                    return kind, payload
                if kind == EXIT:
                    self.exit_code = payload[0] if payload else 255
                pkt = self._packet()
            if self._eof:
                raise EOFError(f"shell ended (exit code {self.exit_code})")
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                ready, _, _ = select.select([self._sock], [], [], left)
            except (OSError, ValueError):
                self._eof = True
                continue
            if not ready:
                return None
            try:
                data = self._sock.recv(1 << 16)
                self._quickack()
            except OSError:
                data = b""
            if not data:
                self._eof = True
            else:
                self._buf += data

    def _quickack(self) -> None:
        """ACK every segment at once (Linux re-arms delayed ACK after each recv, so set it each time).

        The adb server writes to its client sockets with Nagle on: once an answer's first chunk is unacknowledged,
        the next ones wait for our (delayed, ~40 ms) ACK. Measured before this: every streamed answer's second
        chunk arrived 40 ms late, turning ~1000 tok/s into ~70. Real phones go through the same adb server."""
        if _QUICKACK is not None:
            try:
                self._sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            except OSError:
                pass

    def close(self) -> None:
        """Close the connection: the device closes the stream and kills what the command started."""
        try:
            self._c.close()
        except OSError:
            pass

    def __enter__(self) -> ShellV2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
