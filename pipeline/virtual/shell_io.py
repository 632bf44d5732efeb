"""I/O of one virtual shell session: stdin queue and stdout/stderr writers over an ADB stream (shell protocol v2
packets, or raw bytes for ``shell:``/``exec:``) or in memory (unit tests of the interpreter)."""

from __future__ import annotations

import queue
import struct
import threading
from typing import TYPE_CHECKING

from pipeline.virtual.adbd import StreamClosed

if TYPE_CHECKING:
    from pipeline.virtual.adbd import Stream


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
        self._tap = stream.conn.daemon.faults.tap()
        threading.Thread(target=self._pump_input, daemon=True, name="shell-stdin").start()

    def _pump_input(self) -> None:
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
        try:
            if self.v2:
                self.stream.write(struct.pack("<BI", kind, len(data)) + data)
            else:
                self.stream.write(data)
        except (StreamClosed, OSError):
            pass

    def write_out(self, data: bytes) -> None:
        if not data:
            return
        cut = self._tap.cut(data)  # the transport-drop faults (pipeline/virtual/faults.py)
        if cut is None:
            self._packet(1, data)
            return
        if cut:
            self._packet(1, data[:cut])
        self.stream.conn.abort()

    def write_err(self, data: bytes) -> None:
        if data:
            self._packet(2, data)

    def send_exit(self, code: int) -> None:
        if self.v2:
            self._packet(3, bytes([code & 0xFF]))

