"""The device's capacity, enforced on every write (sync pushes, shell redirects, ``cp``, app output to a file).

WHY a daemon-wide ledger: checking free space once per push let two parallel 250 MB pushes both succeed on a
300 MB device.  Every write path charges its bytes here *before* writing them; when they do not fit, the writer
gets ENOSPC — "No space left on device", what a phone's ``adb push`` and ``sh`` print.  When two writers compete
for the last bytes, the one that started later yields (its partial file is discarded), so the earlier push
completes, as it would have had it run alone.

Used bytes = an fd-based walk of the storage (redone when something was deleted: at most every 0.5 s, and at once
before refusing a write) + the bytes charged since that walk (a discarded write gives its charge back).
The host's own disk bounds it too: a write
that would leave the host filesystem with less than :data:`HOST_RESERVE` free is refused the same way, so a device
configured larger than the host's free space cannot fill the host's disk.
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import time
from collections.abc import Callable

_REWALK_S = 0.5
_YIELD_WAIT_S = 5.0
HOST_RESERVE = 1 << 30  # bytes the host filesystem keeps free (or 5 % of it, if smaller)


class NoSpace(OSError):
    def __init__(self) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Writer:
    """One open write (a SEND, a redirect, a copy): what it charged, and whether an older writer needs its room."""

    def __init__(self, ledger: SpaceLedger, seq: int) -> None:
        self.ledger = ledger
        self.seq = seq
        self.charged = 0
        self.since_walk = 0  # of ``charged``, what the last walk of the storage could not have seen yet
        self.doomed = False

    def charge(self, n: int) -> None:
        self.ledger.charge(self, n)

    def close(self, kept: bool = True) -> None:
        """Done: ``kept`` if its bytes stay on the device, False if its partial file was deleted."""
        self.ledger.release(self, kept)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpaceLedger:
    """Capacity accounting for one device; ``capacity()``/``disk_full()`` are re-read per check (faults change)."""

    def __init__(self, walk: Callable[[], int], capacity: Callable[[], int], disk_full: Callable[[], bool],
                 host_fd: int | None = None) -> None:
        self._walk, self._capacity, self._disk_full = walk, capacity, disk_full
        self._host_fd = host_fd
        self._cond = threading.Condition()
        self._base: int | None = None
        self._since = 0
        self._walked_at = 0.0
        self._dirty = False
        self._writers: dict[int, Writer] = {}
        self._seq = itertools.count()

    def writer(self) -> Writer:
        with self._cond:
            w = Writer(self, next(self._seq))
            self._writers[w.seq] = w
            return w

    def release(self, w: Writer, kept: bool = True) -> None:
        """The writer is done; a discarded one gives its bytes back (and the next refusal re-walks)."""
        with self._cond:
            if self._writers.pop(w.seq, None) is not None and not kept:
                self._since -= w.since_walk
                self._dirty = True
                self._cond.notify_all()

    def freed(self) -> None:
        """Something was deleted or replaced (rm, mv over a file, O_TRUNC): used bytes must be re-walked."""
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def host_available(self) -> int:
        """Bytes the device may still write before the host filesystem gets below its reserve."""
        if self._host_fd is None:
            return 1 << 62
        st = os.fstatvfs(self._host_fd)
        reserve = min(HOST_RESERVE, st.f_blocks * st.f_frsize // 20)
        return max(0, st.f_bavail * st.f_frsize - reserve)

    def available(self) -> int:
        """What ``df`` shows as available: the device's capacity left, bounded by the host's disk."""
        return max(0, min(self._capacity() - self.used(), self.host_available()))

    def used(self, fresh: bool = False) -> int:
        with self._cond:
            self._refresh(force=fresh)
            assert self._base is not None
            return self._base + self._since

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or self._base is None or (self._dirty and now - self._walked_at >= _REWALK_S):
            self._base, self._since, self._walked_at, self._dirty = self._walk(), 0, now, False
            for w in self._writers.values():
                w.since_walk = 0

    def charge(self, w: Writer, n: int) -> None:
        """Account ``n`` more bytes for ``w`` or raise :class:`NoSpace` (after giving an older writer room)."""
        if self._disk_full():
            raise NoSpace
        deadline = time.monotonic() + _YIELD_WAIT_S
        with self._cond:
            while True:
                if w.doomed:
                    raise NoSpace
                if n > self.host_available():
                    raise NoSpace  # the host's disk, not the device's capacity: no writer can make room
                self._refresh()
                if self._base + self._since + n <= self._capacity():
                    break
                if self._dirty:  # never refuse on a count that predates a deletion
                    self._refresh(force=True)
                    if self._base + self._since + n <= self._capacity():
                        break
                younger = [x for x in self._writers.values() if x.seq > w.seq]
                if not younger or time.monotonic() >= deadline:
                    raise NoSpace
                alive = [x for x in younger if not x.doomed]
                if alive:
                    alive[-1].doomed = True  # the newest write gives way; wait until it has given its bytes back
                self._cond.wait(0.2)
            self._since += n
            w.charged += n
            w.since_walk += n
