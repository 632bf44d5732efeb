"""Runner robustness: every transport loss and an outside SIGKILL end in DeviceLost after the finished rows (never
a traceback, never a row blamed on the model), and shared sessions restart before the KV ring could wrap.

The app is the stub started through a real /bin/sh (tests/run/conftest.py); the transport faults wrap its real
SubprocessChannel the way a dropped adb stream behaves (stdin write fails / the read side errors or ends with no
exit status)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from pipeline.device.shellv2 import ShellClosed
from pipeline.run.runner import DeviceLost, RunItem, RunnerError, RunOptions, run_prompts
from tests.run.conftest import count_prompt, count_tokens, pid_alive

ITEMS = [RunItem(f"p{i}", f"x{i} y", f"x{i} y") for i in range(5)]


def run(stub, rows, items=ITEMS, **opts) -> None:
    opts.setdefault("prompt_timeout_s", 20)
    opts.setdefault("load_timeout_s", 20)
    run_prompts(items, stub, RunOptions(**opts), count_tokens=count_tokens, count_prompt=count_prompt,
                on_row=rows.append, progress=False)


class DroppingChannel:
    """The real channel until `drop()`; then what a pulled cable looks like through adb."""

    def __init__(self, inner, how: str) -> None:
        self.inner, self.how, self.dropped = inner, how, False

    @property
    def exit_code(self):
        return None if self.dropped else self.inner.exit_code

    def drop(self) -> None:
        self.dropped = True
        self.inner.close()  # the device side is gone with it

    def write(self, data: bytes) -> None:
        if self.dropped:
            raise ShellClosed("shell stream closed: [Errno 32] Broken pipe")
        self.inner.write(data)

    def close_stdin(self) -> None:
        if self.dropped:
            raise ShellClosed("shell stream closed")
        self.inner.close_stdin()

    def read(self, timeout: float):
        if self.dropped:
            if self.how == "reset":
                raise ConnectionResetError(104, "Connection reset by peer")
            raise EOFError("shell ended (exit code None)")
        return self.inner.read(timeout)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize("how", ["eof", "reset"])
def test_a_transport_drop_between_answers_is_device_lost(stub, how):
    channels: list[DroppingChannel] = []

    def start(n_prompt_tokens: int = 0):
        proc = stub()
        proc.channel = DroppingChannel(proc.channel, how)
        channels.append(proc.channel)
        return proc

    rows: list[dict] = []

    def on_row(row):
        rows.append(row)
        if len(rows) == 2:
            channels[-1].drop()

    with pytest.raises(DeviceLost, match="re-run to resume") as e:
        run_prompts(ITEMS, start, RunOptions(session="shared", prompt_timeout_s=20, load_timeout_s=20),
                    count_tokens=count_tokens, count_prompt=count_prompt, on_row=on_row, progress=False)
    assert "\n" not in str(e.value) and "p2" in str(e.value)
    assert [r["prompt_id"] for r in rows] == ["p0", "p1"] and not any(r["crashed"] for r in rows)


def test_an_app_killed_between_answers_is_device_lost_not_a_crashed_row(stub):
    rows: list[dict] = []

    def on_row(row):
        rows.append(row)
        if len(rows) == 2:  # like `adb shell kill -9 <pid>` from a second shell while the app waits at `>>> `
            os.kill(stub.pids()[-1], signal.SIGKILL)

    with pytest.raises(DeviceLost, match="SIGKILL") as e:
        run_prompts(ITEMS, stub, RunOptions(session="shared", prompt_timeout_s=20, load_timeout_s=20),
                    count_tokens=count_tokens, count_prompt=count_prompt, on_row=on_row, progress=False)
    assert "\n" not in str(e.value) and "re-run" in str(e.value)
    assert [r["prompt_id"] for r in rows] == ["p0", "p1"]


def test_an_app_killed_mid_answer_is_device_lost(stub):
    stub.env.update(STUB_DELAY="0.05", STUB_TOKENS="60")
    rows: list[dict] = []

    def kill_running():
        for pid in stub.pids():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)

    timer = threading.Timer(1.5, kill_running)  # the first answer takes ~4 s
    timer.start()
    try:
        with pytest.raises(DeviceLost, match="SIGKILL"):
            run(stub, rows, session="fresh")
    finally:
        timer.cancel()
    assert rows == []


def test_a_crash_of_the_app_itself_stays_a_row(stub):
    """Only SIGKILL from outside interrupts; the app's own crash (exit 3 here, SIGABRT 134 on a phone) is a row."""
    stub.env.update(STUB_CRASH_AFTER="2", STUB_FAULT_ON="x1")
    rows: list[dict] = []
    run(stub, rows, session="fresh")
    assert [r["crashed"] for r in rows] == [False, True, False, False, False]
    assert rows[1]["exit_code"] == 3


def test_shared_session_restarts_before_the_ring_could_wrap(stub):
    rows: list[dict] = []
    run(stub, rows, session="shared", max_new_tokens=16, context_positions=50)
    # per turn: prompt 1+2+1+1 = 5, answer 12 (+1 stop) = 18 positions; worst case for the next prompt 5+16+1 = 22
    assert [r["positions_before"] for r in rows] == [0, 18, 0, 18, 0]
    assert [r["context_reset"] for r in rows] == [False, False, True, False, True]
    assert [r["load_s"] is not None for r in rows] == [True, False, True, False, True]
    assert [r["response"].split(":")[0] for r in rows] == ["turn 1", "turn 2", "turn 1", "turn 2", "turn 1"]
    assert stub.starts == 3 and stub.killed == []  # the old process left by `!exit`, not by a kill
    for r in rows:
        assert r["positions_before"] + r["n_prompt_tokens"] + 16 + 1 <= 50


def test_fresh_sessions_never_reset(stub):
    rows: list[dict] = []
    run(stub, rows, items=ITEMS[:2], session="fresh", max_new_tokens=16, context_positions=30)
    assert [(r["positions_before"], r["context_reset"]) for r in rows] == [(0, False), (0, False)]


def test_context_positions_must_be_positive():
    with pytest.raises(RunnerError, match="context_positions"):
        RunOptions(context_positions=0)


def test_shell_open_times_out_when_the_device_never_answers():
    """A phone that stops answering after the adb server selected it: open() fails within its timeout with a
    ConnectionError (the runner's DeviceLost path) instead of blocking the run forever."""
    import socket

    import adbutils

    from pipeline.device.shellv2 import ShellV2, ShellV2Error

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    conns: list[socket.socket] = []

    def read_request(c: socket.socket) -> str:
        head = c.recv(4, socket.MSG_WAITALL)
        return c.recv(int(head, 16), socket.MSG_WAITALL).decode() if len(head) == 4 else ""

    def answer(c: socket.socket) -> None:
        req = read_request(c)
        if req == "host:version":
            c.sendall(b"OKAY00040029")
        elif req.startswith("host:tport:serial:"):
            c.sendall(b"OKAY" + b"\x01" + b"\x00" * 7)
            read_request(c)  # shell,v2,raw:... — the device never answers

    def serve() -> None:  # a fake adb server: version, transport selection, then silence for the shell
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            conns.append(c)
            threading.Thread(target=answer, args=(c,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        dev = adbutils.AdbClient("127.0.0.1", srv.getsockname()[1]).device(serial="phone")
        with pytest.raises(ShellV2Error, match="cannot open a v2 shell on phone") as e:
            ShellV2.open(dev, "true", timeout=0.5)
        assert isinstance(e.value, ConnectionError)
    finally:
        srv.close()
        for c in conns:
            c.close()
