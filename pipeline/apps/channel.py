"""Byte channels: the minimal duplex pipe an app session runs over.

Why a protocol: the same REPL client must drive simple_app over adb shell protocol v2 on a phone
(`pipeline.device.shellv2.ShellV2`) and the host reference app / test stubs in a local subprocess
(`SubprocessChannel`). Both expose stdin writes, stdout/stderr reads with a timeout, an exit code and close().
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

STDOUT = 1
STDERR = 2


class ChannelError(RuntimeError):
    """A channel could not be opened (bad argv, missing executable, unusable cwd)."""


@runtime_checkable
class Channel(Protocol):
    """A running process reached through byte streams.

    `read` returns `(1, stdout bytes)` or `(2, stderr bytes)` as they arrive, `None` when nothing arrived within
    `timeout` seconds, and raises `EOFError` once both output streams have ended (then `exit_code` is set when the
    transport knows it; `None` means the transport itself was lost). `write` raises `EOFError` when stdin is
    gone.
    """

    exit_code: int | None

    def write(self, data: bytes) -> None: ...

    def close_stdin(self) -> None: ...

    def read(self, timeout: float) -> tuple[int, bytes] | None: ...

    def close(self) -> None: ...


class SubprocessChannel:
    """A host process in its own process group, its stdout/stderr drained by reader threads into one queue.

    Why threads + queue: `read(timeout)` must return whichever stream produced bytes first, with no line
    buffering, so every chunk can be timestamped on arrival. Why a process group: `close()` must leave nothing
    running (the app may have children; a shell wrapper `exec`s the app), so it SIGKILLs the whole group.
    Exit codes follow the shell convention: death by signal N is reported as 128+N (like adb shell v2 on a phone).
    """

    _EOF = object()

    def __init__(self, argv: Sequence[str], cwd: str | os.PathLike[str] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        if not argv:
            raise ChannelError("SubprocessChannel: empty argv; pass the command to run as a list of strings")
        try:
            self._proc = subprocess.Popen(
                list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, bufsize=0,
            )
        except OSError as exc:
            raise ChannelError(f"cannot start {argv[0]!r} (cwd={cwd}): {exc}; check the path and permissions") from exc
        self.pid: int = self._proc.pid
        self.exit_code: int | None = None
        self._queue: queue.Queue[tuple[int, object]] = queue.Queue()
        self._open_streams = 2
        self._threads = [
            threading.Thread(target=self._drain, args=(STDOUT, self._proc.stdout), daemon=True),
            threading.Thread(target=self._drain, args=(STDERR, self._proc.stderr), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _drain(self, stream_id: int, pipe: object) -> None:
        fd = pipe.fileno()  # type: ignore[attr-defined]
        try:
            while True:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                self._queue.put((stream_id, data))
        finally:
            self._queue.put((stream_id, self._EOF))

    def write(self, data: bytes) -> None:
        stdin = self._proc.stdin
        if stdin is None or stdin.closed:
            raise EOFError(f"stdin of pid {self.pid} is closed")
        try:
            stdin.write(data)
            stdin.flush()
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise EOFError(f"stdin of pid {self.pid} is gone: {exc}") from exc

    def close_stdin(self) -> None:
        stdin = self._proc.stdin
        if stdin is not None and not stdin.closed:
            try:
                stdin.close()
            except OSError:
                pass

    def read(self, timeout: float) -> tuple[int, bytes] | None:
        while True:
            if self._open_streams == 0:
                self._reap()
                raise EOFError(f"pid {self.pid} ended (exit code {self.exit_code})")
            try:
                stream_id, item = self._queue.get(timeout=max(timeout, 0.0))
            except queue.Empty:
                return None
            if item is self._EOF:
                self._open_streams -= 1
                continue
            return stream_id, item  # type: ignore[return-value]

    def _reap(self) -> None:
        if self.exit_code is None:
            rc = self._proc.wait()
            self.exit_code = 128 - rc if rc < 0 else rc

    def kill(self) -> None:
        """SIGKILL the whole process group (the launched process and anything it started)."""
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        self.close_stdin()
        self.kill()
        self._reap()
        for thread in self._threads:
            thread.join(timeout=5)
        for pipe in (self._proc.stdout, self._proc.stderr):
            if pipe is not None:
                pipe.close()

    def __enter__(self) -> SubprocessChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
