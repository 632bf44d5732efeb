"""The daemon's host broker: one thread outside the device's Landlock domain, for the few host reads the device
side needs — the faults control file and the memory lines of the apps the daemon itself started.

WHY a thread and not a rule: the device domain may not read the daemon's state dir (it holds host paths) nor
``/proc`` (as root, ``/proc/<pid>/environ`` of any process stays readable under Landlock).  The broker runs only
the functions the daemon's code hands it; device input can reach it only as their arguments, and each function
checks those (a pid must be one the daemon started).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class HostBroker:
    """Runs host-side reads in its own (unconfined) thread; start it before any thread is confined."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> HostBroker:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, daemon=True, name="host-broker")
            self._thread.start()
        return self

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, fut = job
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: BLE001 - handed back to the caller
                fut.set_exception(e)

    def call(self, fn: Callable[..., T], *args: Any, timeout: float = 30.0) -> T:
        """``fn(*args)`` in the broker thread (inline when the broker is not started, e.g. unit tests)."""
        if self._thread is None or threading.current_thread() is self._thread:
            return fn(*args)
        fut: Future[T] = Future()
        self._jobs.put((fn, args, fut))
        return fut.result(timeout)

    def stop(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
