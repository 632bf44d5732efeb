"""A pushed file runs on the host only as this machine's registered llama.cpp build (pipeline/virtual/native_apps.py).

Each test goes through the real adb binary and a real daemon: a file named like the build but with other bytes is
refused and logged, and the marker its payload would have written on the host does not exist; the registered
bytes run, but only inside their own Landlock domain (a symlink in the storage to a host file meets the kernel).
"""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest

from tests.helpers.device import VirtualDevice

DIR = "/data/local/tmp/native"
pytestmark = pytest.mark.timeout(300, func_only=True)  # the first llama_build of a machine (~5.5 min) is setup


def shell(vd: VirtualDevice, cmd: str, stdin: bytes = b"", timeout: float = 120):
    return vd.adb("shell", cmd, input=stdin, timeout=timeout)


def _since(vd: VirtualDevice) -> int:
    return len(vd.log_path.read_text(errors="replace"))


def _log_after(vd: VirtualDevice, since: int, needle: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while needle not in (text := vd.log_path.read_text(errors="replace")[since:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return text


@pytest.fixture
def device_dir(virtual_device: VirtualDevice, llama_build: Path):
    yield virtual_device, llama_build
    shell(virtual_device, f"rm -rf {DIR}")


def test_the_registered_build_runs_from_its_pushed_bytes(device_dir) -> None:
    vd, build = device_dir
    vd.device.sync.push(build / "llama-completion", f"{DIR}/llama-completion", mode=0o755)
    r = shell(vd, f"cd {DIR} && ./llama-completion --version")
    assert r.returncode == 0 and b"version" in (r.stdout + r.stderr), r.stderr
    assert str(build) not in (r.stdout + r.stderr).decode(errors="replace")  # host paths are scrubbed


@pytest.mark.parametrize("payload", ["script", "patched-binary"])
def test_a_pushed_file_that_is_not_the_registered_build_does_not_run(device_dir, tmp_path: Path,
                                                                      payload: str) -> None:
    vd, build = device_dir
    marker = tmp_path / "pwned"
    if payload == "script":
        data = f"#!/bin/sh\necho pwned > {shlex.quote(str(marker))}\n".encode()
    else:  # the real build with its last byte changed: same name, same size, other bytes
        real = (build / "llama-completion").read_bytes()
        data = real[:-1] + bytes([real[-1] ^ 0xFF])
    vd.device.sync.push(data, f"{DIR}/llama-completion", mode=0o755)
    since = _since(vd)
    r = shell(vd, f"cd {DIR} && ./llama-completion --version")
    assert r.returncode == 126 and b"registered llama.cpp build" in r.stderr, (r.returncode, r.stderr)
    assert "is not this machine's registered llama-completion build" in _log_after(vd, since, "registered")
    assert not marker.exists()


def test_a_symlink_to_the_host_build_is_resolved_inside_the_device(device_dir) -> None:
    vd, build = device_dir
    shell(vd, f"mkdir -p {DIR}")
    (vd.storage / DIR.lstrip("/") / "llama-completion").symlink_to(build / "llama-completion")
    r = shell(vd, f"cd {DIR} && ./llama-completion --version")
    assert r.returncode in (126, 127) and b"version" not in r.stdout, (r.returncode, r.stderr)


def test_the_registered_build_cannot_open_a_host_file_through_a_symlink(device_dir, smollm2) -> None:
    """The build opens its own files (argv is mapped into the storage), so a link from the storage to a host file
    is followed by the host kernel — and refused by the program's Landlock domain, not by a path check. The host
    file is a valid model: pushed into the storage, the same bytes load and answer (the control)."""
    vd, build = device_dir
    host_model = smollm2("gguf") / "model.gguf"
    vd.device.sync.push(build / "llama-completion", f"{DIR}/llama-completion", mode=0o755)
    vd.device.sync.push(host_model, f"{DIR}/pushed.gguf")
    (vd.storage / DIR.lstrip("/") / "linked.gguf").symlink_to(host_model)
    cmd = f"cd {DIR} && ./llama-completion -m {DIR}/{{}} -n 2 -p hi -no-cnv -t 1 --temp 0"
    pushed, linked = shell(vd, cmd.format("pushed.gguf")), shell(vd, cmd.format("linked.gguf"))
    assert pushed.returncode == 0 and pushed.stdout.strip(), pushed.stderr[-600:]
    assert linked.returncode != 0 and not linked.stdout.strip()[len(b"hi"):], linked
    out = (linked.stdout + linked.stderr).decode(errors="replace")
    assert str(host_model.parent) not in out and str(vd.storage) not in out  # nor does a host path come back


def test_device_variables_do_not_reach_the_build(device_dir) -> None:
    vd, build = device_dir
    vd.device.sync.push(build / "llama-completion", f"{DIR}/llama-completion", mode=0o755)
    since = _since(vd)
    r = shell(vd, f"cd {DIR} && LD_PRELOAD=/data/local/tmp/evil.so ./llama-completion --version")
    assert r.returncode == 0, r.stderr
    assert "LD_PRELOAD" in _log_after(vd, since, "LD_PRELOAD")
