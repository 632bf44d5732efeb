"""The kernel keeps the device side off the host (issue: "the OS, not path checks").

Each attack that worked against the path-checking sandbox is replayed through the real adb binary against a real
daemon: symlink swaps raced from parallel shells (host file read/write, the daemon's /proc environ, a .pth into the
venv), symlinks inside a model dir, parallel pushes past the capacity, too many apps, too much memory.  The races
run for ``ODEVAL_RACE_S`` seconds (3 by default; the acceptance run uses 30: ``ODEVAL_RACE_S=30 pytest -m slow -k
race``).  Plus: device-side code that opens host paths itself (no odeval check in between) gets EACCES from the
kernel, and the opt-out is loud and recorded.
"""

from __future__ import annotations

import errno
import json
import os
import posixpath
import shlex
import site
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import adbutils
import pytest

from pipeline.device.shellv2 import ShellV2
from tests.helpers.device import VirtualDevice

PROBE = Path(__file__).with_name("probe_app.py")
RACE_S = float(os.environ.get("ODEVAL_RACE_S", "3"))
SECRET = "odeval-host-secret-7f3a"


def _probe_device(make_virtual_device, **options) -> VirtualDevice:
    vd = make_virtual_device(app_cmd=[sys.executable, str(PROBE)], **options)
    vd.device.sync.push(b"\x7fELF fake arm binary", "/data/local/tmp/probe/simple_app", mode=0o755)
    return vd


def probe(vd: VirtualDevice, reads: list[str], writes: list[str] = ()) -> dict[str, str]:
    argv = " ".join(shlex.quote(p) for p in [*reads, "--write", *writes])
    r = vd.adb("shell", f"cd /data/local/tmp/probe && ./simple_app /m {argv}", input=b"!exit\n")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.split(b"\n")[0])


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    secret.chmod(0o600)
    return secret


def test_the_kernel_denies_host_paths_to_device_side_code(make_virtual_device, host_secret: Path,
                                                          tmp_path: Path) -> None:
    """Plain open() from the device side: EACCES from Landlock for host files, writes outside the storage and the
    daemon's /proc; the device's own files stay readable.  No odeval code checks these paths."""
    vd = _probe_device(make_virtual_device)
    assert vd.device.shell("getprop ro.odeval.sandbox").strip().startswith("landlock-abi")
    daemon_pid = json.loads((vd.root / "state/adbd.json").read_text())["pid"]
    vd.device.sync.push(b"device data", "/data/local/tmp/probe/own.txt")
    own = str(vd.storage / "data/local/tmp/probe/own.txt")
    state = str(vd.root / "state/adbd.json")
    out = probe(vd, [str(host_secret), "/etc/hostname", f"/proc/{daemon_pid}/environ", state, own],
                 [str(tmp_path / "written.txt"), site.getsitepackages()[0] + "/odeval-probe.pth"])
    for path in (str(host_secret), "/etc/hostname", f"/proc/{daemon_pid}/environ", state):
        assert out[path] == f"errno:{errno.EACCES}", (path, out[path])
    assert out[own] == "read:device data"
    assert out[str(tmp_path / "written.txt")] == f"errno:{errno.EACCES}"
    assert not (tmp_path / "written.txt").exists()
    assert not Path(site.getsitepackages()[0], "odeval-probe.pth").exists()


def test_opt_out_is_loud_and_recorded(make_virtual_device, host_secret: Path, capfd) -> None:
    vd = _probe_device(make_virtual_device, sandbox="off")
    assert "virtual device sandbox OFF" in capfd.readouterr().err
    assert vd.device.shell("getprop ro.odeval.sandbox").strip() == "off"
    assert "sandbox OFF" in vd.log_path.read_text()
    assert probe(vd, [str(host_secret)])[str(host_secret)] == f"read:{SECRET}"  # what the opt-out costs


def test_daemon_environment_is_an_allowlist(make_virtual_device, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_canary_token_for_the_test")
    monkeypatch.setenv("MY_PRIVATE_VAR", "private")
    vd = make_virtual_device()
    pid = json.loads((vd.root / "state/adbd.json").read_text())["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"hf_canary" not in environ and b"MY_PRIVATE_VAR" not in environ and b"HF_TOKEN" not in environ


def _race(vd: VirtualDevice, link: str, target: str, readme: str, commands: list[str]) -> list[str]:
    """Swap ``link`` between a symlink to ``target`` and a real dir (as the attack did, with `mv`) while other
    shells run ``commands`` through it, for RACE_S seconds; returns everything the attacking shells printed.

    The real dir holds ``readme`` = "in the real dir"; where ``target`` leads *inside the device* there is a
    ``readme`` = "where the link leads on the device": the caller checks both were read, so the race really ran
    both ways and the link was followed — to the device's file, never the host's.  (Swapping by `mv` alone, as the
    attack did, wedges within seconds here: `mv` into a path that is a link to a dir moves *into* that dir.)"""
    dev = vd.device
    base = link.rsplit("/", 1)[0]
    inside = posixpath.normpath(posixpath.join(base, target))  # `..` stops at the device's /
    dev.sync.push(b"where the link leads on the device", f"{inside}/{readme}")
    stop_at = time.monotonic() + RACE_S
    outputs: list[str] = []

    def swapper() -> None:  # `link`: a symlink pushed over sync, then a real dir (rm + mkdir), and again
        while time.monotonic() < stop_at:
            dev.shell(f"rm -rf {link}")
            try:
                dev.sync.push(target.encode(), link, mode=0o120777)
            except adbutils.AdbError:  # an attacker wrote into the dir while rm ran: go round again
                continue
            dev.shell(f"rm {link}; mkdir {link} && echo 'in the real dir' > {link}/{readme}")

    def attacker(cmd: str) -> Callable[[], None]:
        def run() -> None:
            while time.monotonic() < stop_at:
                outputs.append(dev.shell(cmd, timeout=10))
        return run

    threads = [threading.Thread(target=swapper)] + [threading.Thread(target=attacker(c)) for c in commands]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RACE_S + 60)
    return outputs


def _relative_escape(vd: VirtualDevice, host_dir: Path, link: str) -> str:
    """A relative symlink target that, resolved on the host from ``link``'s dir, reaches ``host_dir``."""
    depth = len(Path((vd.storage / link.lstrip("/")).parent).relative_to("/").parts)
    return "../" * depth + str(host_dir).lstrip("/")


@pytest.mark.parametrize("what", ["host-file", "daemon-proc", "site-packages"])
def test_symlink_swap_race_reaches_nothing_on_the_host(make_virtual_device, host_secret: Path, tmp_path: Path,
                                                       what: str) -> None:
    vd = make_virtual_device()
    link = "/data/local/tmp/race/r"
    pid = json.loads((vd.root / "state/adbd.json").read_text())["pid"]
    target_dir = {"host-file": tmp_path, "daemon-proc": Path(f"/proc/{pid}"),
                  "site-packages": Path(site.getsitepackages()[0])}[what]
    before = set(os.listdir(target_dir)) if what != "daemon-proc" else set()
    readme = {"host-file": host_secret.name, "daemon-proc": "environ", "site-packages": "README.txt"}[what]
    outputs = _race(vd, link, _relative_escape(vd, target_dir, link), readme,
                    [f"cat {link}/{readme}", f"echo 'import os' > {link}/odeval-race.pth",
                     f"echo PWNED > {link}/owned.txt"])
    text = "\n".join(outputs)
    print(f"race {what}: {len(outputs)} attacking commands in {RACE_S:.0f} s, "
          f"{text.count('where the link leads')} reads through the link (all inside the device)")
    assert "in the real dir" in text and "where the link leads on the device" in text, "the race did not run"
    assert SECRET not in text and "PATH=" not in text and "PWNED" not in text
    if what != "daemon-proc":
        assert set(os.listdir(target_dir)) == before  # nothing written on the host
    vd.device.shell("rm -rf /data/local/tmp/race")


@pytest.mark.slow
def test_symlink_swap_race_30s_acceptance(make_virtual_device, host_secret: Path, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The acceptance run: 30 s against a host file and the daemon's /proc environ."""
    monkeypatch.setattr(sys.modules[__name__], "RACE_S", max(RACE_S, 30.0))
    for what in ("host-file", "daemon-proc"):
        test_symlink_swap_race_reaches_nothing_on_the_host(make_virtual_device, host_secret, tmp_path, what)


def test_symlinks_in_a_model_dir_resolve_inside_the_device(virtual_device: VirtualDevice, tiny_model,
                                                           host_secret: Path) -> None:
    """A pushed config.json linking to a host file is the device's file of that name (absent: the app says so,
    printing nothing of the host file); links to device paths work, as on a phone."""
    vd, model = virtual_device, tiny_model("tiny-fp")
    dev = vd.device
    dev.sync.push(b"\x7fELF fake arm binary", "/data/local/tmp/sym/app/simple_app", mode=0o755)
    for f in sorted(model.iterdir()):
        if f.is_file():
            dev.sync.push(f, f"/data/local/tmp/sym/real/{f.name}")
            target = f"/data/local/tmp/sym/real/{f.name}"  # absolute *device* paths
            dev.sync.push(target.encode(), f"/data/local/tmp/sym/linked/{f.name}", mode=0o120777)
            dev.sync.push((b"../" * 12) + str(host_secret).lstrip("/").encode() if f.name == "config.json"
                          else target.encode(), f"/data/local/tmp/sym/evil/{f.name}", mode=0o120777)
    try:
        r = vd.adb("shell", "cd /data/local/tmp/sym/app && ./simple_app /data/local/tmp/sym/linked",
                   input=b"hello\n!exit\n")
        assert r.returncode == 0 and b"tok/s)" in r.stdout, r.stderr  # device-side links work
        r = vd.adb("shell", "cd /data/local/tmp/sym/app && ./simple_app /data/local/tmp/sym/evil",
                   input=b"hello\n!exit\n")
        assert r.returncode == 1 and b"no config.json" in r.stderr, r.stderr
        r2 = vd.adb("shell", "cat /data/local/tmp/sym/evil/config.json")
        for out in (r.stdout, r.stderr, r2.stdout, r2.stderr):
            assert SECRET.encode() not in out
    finally:
        dev.shell("rm -rf /data/local/tmp/sym")


def _push_in_thread(vd: VirtualDevice, src: Path, dest: str, results: dict[str, object]) -> threading.Thread:
    def run() -> None:
        results[dest] = vd.adb("push", str(src), dest, timeout=300)
    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.mark.parametrize("mb,cap_mb", [(25, 30), pytest.param(250, 300, marks=pytest.mark.slow)])
def test_concurrent_pushes_past_capacity(make_virtual_device, tmp_path: Path, mb: int, cap_mb: int) -> None:
    vd = make_virtual_device(capacity_bytes=cap_mb * 2**20)
    srcs = []
    for name in ("first", "second"):
        src = tmp_path / f"{name}.bin"
        with open(src, "wb") as fh:
            fh.truncate(mb * 2**20)  # sparse: the host's disk is not the device's
        srcs.append(src)
    results: dict[str, object] = {}
    t1 = _push_in_thread(vd, srcs[0], "/data/local/tmp/first.bin", results)
    time.sleep(0.3)  # the first one is under way
    t2 = _push_in_thread(vd, srcs[1], "/data/local/tmp/second.bin", results)
    t1.join(300)
    t2.join(300)
    first, second = results["/data/local/tmp/first.bin"], results["/data/local/tmp/second.bin"]
    assert first.returncode == 0, first.stderr
    assert second.returncode != 0 and b"No space left on device" in second.stderr, second.stderr
    assert (vd.storage / "data/local/tmp/first.bin").stat().st_size == mb * 2**20
    assert not (vd.storage / "data/local/tmp/second.bin").exists()
    assert [p.name for p in (vd.storage / "data/local/tmp").iterdir()] == ["first.bin"]  # no partial file left


def test_capacity_on_shell_writes(make_virtual_device, tmp_path: Path) -> None:
    """cp and redirects are charged like pushes; mv on the same filesystem is a rename (free)."""
    vd = make_virtual_device(capacity_bytes=3 * 2**20)
    src = tmp_path / "two.bin"
    src.write_bytes(os.urandom(2 * 2**20))
    assert vd.adb("push", str(src), "/data/local/tmp/a.bin").returncode == 0
    r = vd.adb("shell", "cp /data/local/tmp/a.bin /data/local/tmp/b.bin")
    assert r.returncode == 1 and b"No space left on device" in r.stderr
    r = vd.adb("shell", "cat /data/local/tmp/a.bin > /data/local/tmp/c.bin")
    assert r.returncode == 1 and b"No space left on device" in r.stderr
    assert vd.adb("shell", "mv /data/local/tmp/a.bin /data/local/tmp/d.bin").returncode == 0
    assert vd.adb("shell", "cp /data/local/tmp/d.bin /data/local/tmp/e.bin").returncode == 1
    assert vd.adb("shell", "rm /data/local/tmp/d.bin /data/local/tmp/b.bin /data/local/tmp/c.bin "
                           "/data/local/tmp/e.bin; echo small > /data/local/tmp/f.txt").returncode == 0


def test_app_and_memory_caps(make_virtual_device) -> None:
    vd = _probe_device(make_virtual_device, max_apps=2, app_memory_bytes=300 * 2**20)
    shells = [ShellV2.open(vd.device, "cd /data/local/tmp/probe && ./simple_app /m") for _ in range(2)]
    try:
        for s in shells:
            buf = b""
            while b">>> " not in buf:
                pkt = s.read(30)
                assert pkt is not None, buf
                buf += pkt[1]
        r = vd.adb("shell", "cd /data/local/tmp/probe && ./simple_app /m", input=b"!exit\n")
        assert r.returncode == 1 and b"can't fork: Try again" in r.stderr, r.stderr
        assert "refused: simple_app start" in vd.log_path.read_text()
    finally:
        for s in shells:
            s.write(b"!exit\n")
            s.close()
    deadline = time.monotonic() + 10
    while "simple_app" in vd.device.shell("ps") and time.monotonic() < deadline:
        time.sleep(0.1)
    r = vd.adb("shell", "cd /data/local/tmp/probe && ./simple_app /m",
               input=f"!alloc {100 * 2**20}\n!alloc {600 * 2**20}\n!exit\n".encode())
    assert b"allocated 104857600" in r.stdout and b"MemoryError" in r.stdout, r.stdout


def test_refuses_to_start_when_the_kernel_cannot_confine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.virtual import confine
    from pipeline.virtual.adbd import AdbdError
    from pipeline.virtual.services import make_daemon

    monkeypatch.setattr(confine.landlock, "abi_version", lambda: 0)
    with pytest.raises(AdbdError, match=r"sandbox=off"):
        make_daemon(tmp_path / "dev", 0)
    assert make_daemon(tmp_path / "dev", 0, sandbox=False).confinement == "off"  # the explicit opt-out starts


def test_shell_sessions_are_capped(make_virtual_device) -> None:
    vd = make_virtual_device(max_processes=2)
    shells = [ShellV2.open(vd.device, "sleep 20") for _ in range(2)]
    try:
        deadline = time.monotonic() + 30  # a loaded 2-core CI host once needed more than 10 s
        while (r := vd.adb("shell", "echo hi")).returncode == 0 and time.monotonic() < deadline:  # both started
            time.sleep(0.05)
        assert r.returncode == 1 and b"can't fork: Try again" in r.stderr and b"hi" not in r.stdout
    finally:
        for s in shells:
            s.close()
    deadline = time.monotonic() + 10
    while vd.adb("shell", "echo hi").returncode != 0 and time.monotonic() < deadline:  # the cap frees up again
        time.sleep(0.1)
    assert vd.adb("shell", "echo hi").stdout == b"hi\n"
