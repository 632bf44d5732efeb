"""The capacity ledger (pipeline/virtual/space.py) on its own: who gets ENOSPC, and when used bytes are re-walked."""

from __future__ import annotations

import threading

import pytest

from pipeline.virtual.space import NoSpace, SpaceLedger


class Disk:
    """What a walk of the storage would find: the bytes writers really put on disk."""

    def __init__(self, capacity: int, full: bool = False) -> None:
        self.on_disk = 0
        self.capacity = capacity
        self.full = full
        self.walks = 0

    def walk(self) -> int:
        self.walks += 1
        return self.on_disk

    def ledger(self) -> SpaceLedger:
        return SpaceLedger(self.walk, lambda: self.capacity, lambda: self.full)


def test_charges_until_the_capacity_then_enospc() -> None:
    disk = Disk(100)
    ledger = disk.ledger()
    with ledger.writer() as w:
        w.charge(60)
        disk.on_disk += 60
        w.charge(40)
        with pytest.raises(NoSpace) as e:
            w.charge(1)
    assert e.value.strerror == "No space left on device"


def test_the_younger_writer_yields_to_the_older() -> None:
    """Two writes that do not both fit: the one that started later fails, even when the older one hits the wall."""
    disk = Disk(100)
    ledger = disk.ledger()
    older, younger = ledger.writer(), ledger.writer()
    older.charge(50)
    younger.charge(40)
    disk.on_disk = 90
    result: dict[str, object] = {}

    def older_continues() -> None:  # needs 30 more: only possible once the younger one gives its bytes back
        try:
            older.charge(30)
            result["older"] = "ok"
        except NoSpace:
            result["older"] = "enospc"

    t = threading.Thread(target=older_continues)
    t.start()
    t.join(0.5)
    assert t.is_alive() and younger.doomed  # the older waits; the younger is told to give way
    with pytest.raises(NoSpace):
        younger.charge(1)
    disk.on_disk = 50  # the younger discarded its partial file
    younger.close(kept=False)
    t.join(10)
    assert result == {"older": "ok"}


def test_disk_full_fault_and_host_bound() -> None:
    disk = Disk(1 << 40, full=True)
    with pytest.raises(NoSpace), disk.ledger().writer() as w:
        w.charge(1)
    disk.full = False
    ledger = disk.ledger()
    ledger.host_available = lambda: 10  # the host's filesystem is nearly full: its reserve wins over the capacity
    with pytest.raises(NoSpace), ledger.writer() as w:
        w.charge(11)
    assert ledger.available() == 10


def test_deletions_are_seen_after_a_rewalk() -> None:
    disk = Disk(100)
    ledger = disk.ledger()
    with ledger.writer() as w:
        w.charge(100)
    disk.on_disk = 100
    disk.on_disk = 0  # `rm` of the file
    ledger.freed()
    with ledger.writer() as w:
        w.charge(100)  # refused only after a fresh walk: the count is never stale when it says no
