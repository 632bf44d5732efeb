"""The device's capacity, enforced on every write (sync pushes, shell redirects, ``cp``, app output to a file).

WHY a daemon-wide ledger: checking free space once per push let two parallel 250 MB pushes both succeed on a
300 MB device.  Every write path charges its bytes here *before* writing them; when they do not fit, the writer
gets ENOSPC — "No space left on device", what a phone's ``adb push`` and ``sh`` print.  When two writers compete
for the last bytes, the one that started later yields (its partial file is discarded), so the earlier push
completes, as it would have had it run alone.

Used bytes = an fd-based walk of the storage (refreshed when something was deleted, at most every 0.5 s, and
always before refusing a write) + the bytes charged since that walk.
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


class NoSpace(OSError):
    def __init__(self) -> None:
        super().__init__(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Writer:
    """One open write (a SEND, a redirect, a copy): what it charged, and whether an older writer needs its room."""

    def __init__(self, ledger: SpaceLedger, seq: int) -> None:
        self.ledger = ledger
        self.seq = seq
        self.charged = 0
        self.doomed = False

    def charge(self, n: int) -> None:
        self.ledger.charge(self, n)

    def close(self) -> None:
        self.ledger.release(self)

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SpaceLedger:
    """Capacity accounting for one device; ``capacity()``/``disk_full()`` are re-read per check (faults change)."""

    def __init__(self, walk: Callable[[], int], capacity: Callable[[], int], disk_full: Callable[[], bool]) -> None:
        self._walk, self._capacity, self._disk_full = walk, capacity, disk_full
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

    def release(self, w: Writer) -> None:
        """The writer is done (kept or discarded): a discard frees room, so the next check re-walks."""
        with self._cond:
            if self._writers.pop(w.seq, None) is not None:
                self._dirty = True
                self._cond.notify_all()

    def freed(self) -> None:
        """Something was deleted or replaced (rm, mv over a file, O_TRUNC): used bytes must be re-walked."""
        with self._cond:
            self._dirty = True
            self._cond.notify_all()

    def used(self, fresh: bool = False) -> int:
        with self._cond:
            self._refresh(force=fresh)
            assert self._base is not None
            return self._base + self._since

    def _refresh(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or self._base is None or (self._dirty and now - self._walked_at >= _REWALK_S):
            self._base, self._since, self._walked_at, self._dirty = self._walk(), 0, now, False

    def charge(self, w: Writer, n: int) -> None:
        """Account ``n`` more bytes for ``w`` or raise :class:`NoSpace` (after giving an older writer room)."""
        if self._disk_full():
            raise NoSpace
        deadline = time.monotonic() + _YIELD_WAIT_S
        with self._cond:
            while True:
                if w.doomed:
                    raise NoSpace
                self._refresh()
                if self._base + self._since + n <= self._capacity():
                    break
                self._refresh(force=True)  # never refuse on a stale count
                if self._base + self._since + n <= self._capacity():
                    break
                younger = [x for x in self._writers.values() if x.seq > w.seq and not x.doomed]
                if not younger or time.monotonic() >= deadline:
                    raise NoSpace
                younger[-1].doomed = True  # the newest write gives way; wait until it has discarded its bytes
                self._cond.wait(0.2)
            self._since += n
            w.charged += n
