"""The virtual device cannot be turned against its host (any local user can be its ADB client: loopback, no AUTH).

One test per attack that used to work, each through the real adb binary and a real daemon: the attack fails, the
daemon logs a refusal, and a marker file the payload would have created on the host does not exist.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import sys
import time
from pathlib import Path

import pytest

from pipeline.virtual.faults import FaultsError, faults_path, write_faults
from tests.helpers.device import VirtualDevice

REPO = Path(__file__).resolve().parents[2]
REPL = Path(__file__).with_name("repl_app.py")
FAKE_BINARY = b"\x7fELF fake arm binary"


def _log(vd: VirtualDevice) -> str:
    return vd.log_path.read_text(errors="replace")


def _wait_log(vd: VirtualDevice, needle: str, since: int, timeout: float = 10) -> str:
    """The daemon log written after offset ``since`` (so an earlier test's line never satisfies this one)."""
    deadline = time.monotonic() + timeout
    while needle not in (text := _log(vd)[since:]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return text


def _host_paths(vd: VirtualDevice) -> list[str]:
    """Host paths that must never show on the device."""
    paths = {str(vd.root), str(vd.storage), str(REPO), sys.prefix, sys.base_prefix, os.path.realpath(vd.root)}
    return sorted(p for p in paths if len(p) > 4)


def _assert_no_host_path(vd: VirtualDevice, *texts: bytes | str) -> None:
    for text in texts:
        s = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        for p in _host_paths(vd):
            assert p not in s, f"host path {p} visible on the device: {s[:300]!r}"


def _push_app(vd: VirtualDevice, app_dir: str) -> None:
    vd.device.sync.push(FAKE_BINARY, f"{app_dir}/simple_app", mode=0o755)


def shell(vd: VirtualDevice, cmd: str, stdin: bytes = b"", timeout: float = 120):
    return vd.adb("shell", cmd, input=stdin, timeout=timeout)


# -- 1: a control file pushed into the device storage ------------------------------------------------------------
def test_pushed_control_file_at_the_old_location_is_inert(virtual_device: VirtualDevice, tmp_path: Path) -> None:
    vd, marker = virtual_device, tmp_path / "pwned-control"
    since = len(_log(vd))
    evil = tmp_path / "faults.json"
    evil.write_text(json.dumps({"app_cmd": ["/bin/sh", "-c", f"touch {shlex.quote(str(marker))}"]}))
    assert vd.adb("push", str(evil), "/.odeval/faults.json").returncode == 0
    _push_app(vd, "/data/local/tmp/sec1")
    vd.device.sync.push(b"{}", "/data/local/tmp/sec1/m/tokenizer.bin")
    try:
        r = shell(vd, "/data/local/tmp/sec1/simple_app /data/local/tmp/sec1/m")
        assert r.returncode == 1 and b"no config.json" in r.stderr  # the reference app ran, not the payload
        assert not marker.exists()
        assert "refused: device-side control file /.odeval/faults.json is ignored" in _wait_log(vd, "/.odeval/", since)
    finally:
        shell(vd, "rm -rf /.odeval /data/local/tmp/sec1")


def test_app_cmd_cannot_change_on_a_running_daemon(virtual_device: VirtualDevice, tmp_path: Path) -> None:
    vd, marker = virtual_device, tmp_path / "pwned-hostfile"
    since = len(_log(vd))
    payload = ["/bin/sh", "-c", f"touch {shlex.quote(str(marker))}"]
    with pytest.raises(FaultsError, match="cannot change on a running daemon"):
        write_faults(vd.root, app_cmd=payload)
    # even written by hand into the host-side control file, app_cmd is refused (fixed when the daemon started)
    path = faults_path(vd.root)
    assert path.parent.stat().st_mode & 0o777 == 0o700 and not path.is_relative_to(vd.storage)
    path.write_text(json.dumps({"app_cmd": payload}))
    _push_app(vd, "/data/local/tmp/sec1b")
    try:
        r = shell(vd, "/data/local/tmp/sec1b/simple_app /data/local/tmp/sec1b")
        assert r.returncode == 1 and not marker.exists()
        assert "sets 'app_cmd'" in _wait_log(vd, "sets 'app_cmd'", since)
    finally:
        vd.set_faults()
        shell(vd, "rm -rf /data/local/tmp/sec1b")


# -- 2: the device-side environment -------------------------------------------------------------------------------
HOSTILE_ENV = {"PYTHONPATH": "{evil}", "PYTHONSTARTUP": "{evil}/sitecustomize.py", "PYTHONHOME": "{evil}",
               "LD_PRELOAD": "{evil}/x.so", "LD_AUDIT": "{evil}/x.so", "ODEVAL_STANDIN_MODEL": "/etc",
               "ODEVAL_FAULT_HANG": "1", "ODEVAL_VIRTUAL_APP_CMD": '["/bin/sh","-c","id"]', "MYVAR": "x",
               "ODEVAL_SANDBOX_ROOT": "/", "ODEVAL_ROOT_FD": "0", "ODEVAL_APP_SCRATCH": "/tmp",
               "ODEVAL_TEMPLATE": "../../etc/passwd", "LD_LIBRARY_PATH": "/data/x"}


def _env_prefix(env: dict[str, str], evil: str) -> str:
    return " ".join(f"{k}={shlex.quote(v.format(evil=evil))}" for k, v in env.items())


def test_device_env_does_not_reach_the_app(make_virtual_device, tmp_path: Path) -> None:
    """With the app hook printing its whole environ: only allowlisted names arrive; the rest is refused + logged."""
    vd = make_virtual_device(app_cmd=[sys.executable, str(REPL)])
    since = len(_log(vd))
    _push_app(vd, "/data/local/tmp/sec2")
    evil = str(vd.storage / "data/local/tmp/sec2")  # the host path the old adbd.json revealed
    cmd = f"cd /data/local/tmp/sec2 && export ADSP_LIBRARY_PATH=. && {_env_prefix(HOSTILE_ENV, evil)} ./simple_app m"
    r = shell(vd, cmd, stdin=b"!environ\n!exit\n")
    assert r.returncode == 0, r.stderr
    env = json.loads(r.stdout.split(b">>> ")[1].rsplit(b"\n", 1)[0])
    for key in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "LD_PRELOAD", "LD_AUDIT", "LD_LIBRARY_PATH",
                "ODEVAL_STANDIN_MODEL", "ODEVAL_FAULT_HANG", "ODEVAL_VIRTUAL_APP_CMD", "MYVAR", "ODEVAL_TEMPLATE"):
        assert key not in env, key
    assert env["ODEVAL_DEVICE_LD_LIBRARY_PATH"] == "/data/x" and env["ODEVAL_DEVICE_ADSP_LIBRARY_PATH"] == "."
    assert env["ODEVAL_ROOT_FD"] != "0" and env["ODEVAL_APP_SCRATCH"] != "/tmp"  # set by the launcher, not the device
    assert env["ODEVAL_DEVICE_CWD"] == "/data/local/tmp/sec2"
    log = _wait_log(vd, "refused device env", since)
    line = next(x for x in log.splitlines() if "refused device env" in x)
    for key in ("PYTHONPATH", "PYTHONSTARTUP", "LD_PRELOAD", "ODEVAL_STANDIN_MODEL", "ODEVAL_VIRTUAL_APP_CMD",
                "ODEVAL_FAULT_HANG", "ODEVAL_TEMPLATE", "ODEVAL_SANDBOX_ROOT", "ODEVAL_ROOT_FD", "ODEVAL_APP_SCRATCH"):
        assert key in line, key


def test_pushed_python_files_are_never_imported_by_the_reference_app(model_on_device, tmp_path: Path) -> None:
    """sitecustomize via PYTHONPATH, a shadow ``pipeline`` package and ``numpy`` in the app's cwd: none runs, and
    the real app still answers (so the shadowed imports did happen, from the host's own packages)."""
    vd, _ = model_on_device
    marker = tmp_path / "pwned-python"
    since = len(_log(vd))
    payload = f"open({str(marker)!r}, 'a').write('pwned')\n".encode()
    app_dir = "/data/local/tmp/sec4/app"
    for name in ("evil/sitecustomize.py", "evil/usercustomize.py", "sitecustomize.py", "numpy.py", "json.py",
                 "pipeline/__init__.py", "pipeline/apps/__init__.py", "pipeline/guest/reference_app.py"):
        vd.device.sync.push(payload, f"{app_dir}/{name}")
    evil = str(vd.storage / app_dir.lstrip("/") / "evil")
    env = {k: v for k, v in HOSTILE_ENV.items() if k != "ODEVAL_TEMPLATE"}
    r = shell(vd, f"cd {app_dir} && {_env_prefix(env, evil)} ./simple_app /data/local/tmp/sec4/model",
               stdin=b"hello\n")
    assert r.returncode == 0 and b"tok/s)" in r.stdout, r.stderr  # the real app ran and answered
    assert not marker.exists()
    assert "PYTHONPATH" in _wait_log(vd, "refused device env", since)


# -- 3: host paths visible on the device ---------------------------------------------------------------------------
def _walk(vd: VirtualDevice, path: str = "/") -> list[str]:
    files = []
    for entry in vd.device.sync.list(path):
        if entry.path in (".", ".."):
            continue
        full = f"{path.rstrip('/')}/{entry.path}"
        if stat.S_ISDIR(entry.mode):
            files += _walk(vd, full)
        elif stat.S_ISREG(entry.mode) and entry.size <= 256 * 1024:  # pushed model weights are not text
            files.append(full)
    return files


def test_no_host_path_visible_on_the_device(virtual_device: VirtualDevice) -> None:
    vd = virtual_device
    r = shell(vd, "cat /.odeval/adbd.json")
    assert r.returncode == 1 and b"No such file" in r.stderr
    vd.set_faults(simulate_thermal=True)
    shell(vd, "cat /sys/class/thermal/thermal_zone0/temp")
    files = _walk(vd)
    assert "/sys/class/thermal/thermal_zone0/temp" in files
    for f in files:
        _assert_no_host_path(vd, vd.device.sync.read_bytes(f))
    _push_app(vd, "/data/local/tmp/sec3")
    vd.device.sync.push(b"x", "/data/local/tmp/sec3/dir/f")
    probes = ["pwd", "cd /data/local/tmp && pwd", "getprop", "uname -a", "id", "df", "ls -la /", "stat /",
              "echo $HOME $PWD $PATH", "cat /nonexistent", "ls /../../../etc", "cd /../../..; pwd",
              "cat /proc/self/cmdline", "cat /proc/self/status", "cat /data/local/tmp/sec3/dir",
              "cp -r /data/local/tmp/sec3/dir /data/local/tmp/sec3/simple_app/x", "ps", "sha256sum /nonexistent",
              "echo x > /proc/x/y", "/data/local/tmp/sec3/simple_app /data/local/tmp/sec3/nomodel 8gen3",
              "/data/local/tmp/sec3/dir/f", "./nosuch", "mv /nonexistent /data/x", "rm /"]
    try:
        for cmd in probes:
            r = shell(vd, cmd)
            _assert_no_host_path(vd, r.stdout, r.stderr)
        banner = vd.device.get_state(), vd.device.prop.model
        _assert_no_host_path(vd, repr(banner))
        # the reference app's own errors name the model dir: the device sees its device path, never the host one
        # (the app loads a view of the dir in a host scratch dir: pipeline/guest/device_view.py)
        r = shell(vd, "/data/local/tmp/sec3/simple_app /data/local/tmp/sec3/nomodel")
        assert r.returncode == 1 and b"/data/local/tmp/sec3/nomodel: No such file or directory" in r.stderr, r.stderr
        r = shell(vd, "/data/local/tmp/sec3/simple_app /data/local/tmp/sec3/dir")
        assert r.returncode == 1 and b"/data/local/tmp/sec3/dir: no config.json" in r.stderr, r.stderr
    finally:
        shell(vd, "rm -rf /data/local/tmp/sec3")


def test_proc_cmdline_of_a_running_app_is_its_device_argv(make_virtual_device) -> None:
    vd = make_virtual_device(app_cmd=[sys.executable, str(REPL)])
    _push_app(vd, "/data/local/tmp/sec3b")
    from pipeline.device.shellv2 import ShellV2

    with ShellV2.open(vd.device, "cd /data/local/tmp/sec3b && echo $$ && exec ./simple_app ../sec3b 8gen3") as sh:
        buf = b""
        while b">>> " not in buf:
            pkt = sh.read(20)
            assert pkt is not None, buf
            buf += pkt[1]
        vpid = int(buf.split(b"\n")[0])
        cmdline = vd.device.shell(f"cat /proc/{vpid}/cmdline", encoding=None)
        sh.write(b"!exit\n")
    assert cmdline == b"./simple_app\0../sec3b\x008gen3\0"
    _assert_no_host_path(vd, cmdline)


# -- 4: !reload outside the device storage -------------------------------------------------------------------------
@pytest.fixture
def model_on_device(virtual_device: VirtualDevice, tiny_model) -> tuple[VirtualDevice, Path]:
    host_model = tiny_model("tiny-fp")
    vd = virtual_device
    for f in sorted(host_model.iterdir()):
        if f.is_file():
            vd.device.sync.push(f, f"/data/local/tmp/sec4/model/{f.name}")
    _push_app(vd, "/data/local/tmp/sec4/app")
    yield vd, host_model
    shell(vd, "rm -rf /data/local/tmp/sec4")


@pytest.mark.parametrize("target", ["/etc", "host-model-path", "symlink-to-etc", "symlink-to-host-model"])
def test_reload_outside_the_device_storage_is_refused(model_on_device, tmp_path: Path, target: str) -> None:
    vd, host_model = model_on_device
    reload_dir = {"/etc": "/etc", "host-model-path": str(host_model)}.get(target)
    if reload_dir is None:  # a link inside the storage pointing at a host dir: the kernel resolves it in-root
        link = vd.storage / "data/local/tmp/sec4/escape"
        link.unlink(missing_ok=True)
        link.symlink_to("/etc" if target == "symlink-to-etc" else host_model)
        reload_dir = "/data/local/tmp/sec4/escape"
    since = len(_log(vd))
    r = shell(vd, "cd /data/local/tmp/sec4/app && ./simple_app /data/local/tmp/sec4/model",
               stdin=f"!reload {reload_dir}\nhello\n".encode())
    assert r.stdout.startswith(b"Hello, how can I help you today?\n>>> ")
    assert b"Models loaded and ready" not in r.stdout and b"tok/s" not in r.stdout  # nothing loaded, no answer
    assert r.returncode == 1 and b"Initialization errror:" in r.stderr, r.stderr
    assert b"No such file or directory" in r.stderr  # the host path does not exist *on the device*
    _assert_no_host_path(vd, r.stdout, r.stderr)
    log = _wait_log(vd, "refused by simple_app (vpid", since)
    assert f"!reload {reload_dir!r}" in log


def test_model_dir_argument_outside_the_storage_is_refused(model_on_device) -> None:
    vd, host_model = model_on_device
    link = vd.storage / "data/local/tmp/sec4/escape-arg"
    link.symlink_to(host_model)
    since = len(_log(vd))
    r = shell(vd, "/data/local/tmp/sec4/app/simple_app /data/local/tmp/sec4/escape-arg", stdin=b"hello\n")
    assert r.returncode == 1 and b"escape-arg: No such file or directory" in r.stderr and b"tok/s" not in r.stdout
    assert "model dir '/data/local/tmp/sec4/escape-arg' cannot be opened" in _wait_log(vd, "escape-arg", since)
    r = shell(vd, "cat /data/local/tmp/sec4/escape-arg/config.json")  # the shell's builtins resolve it in-root too
    assert r.returncode == 1 and b"No such file or directory" in r.stderr and r.stdout == b""


def test_the_confined_app_maps_the_native_kernel_and_nothing_else_of_the_cache(model_on_device, native) -> None:
    """The kernel's own dir in $ODEVAL_CACHE/native is in the app's read rules (ODEVAL_ENGINE=native fails when
    the library cannot be mapped), and the answer equals the numpy engine's; the models beside it stay unreadable."""
    vd, _ = model_on_device
    cmd = "cd /data/local/tmp/sec4/app && ODEVAL_ENGINE={} ./simple_app /data/local/tmp/sec4/model"
    native_run = shell(vd, cmd.format("native"), stdin=b"hello\n")
    numpy_run = shell(vd, cmd.format("numpy"), stdin=b"hello\n")
    assert native_run.returncode == 0 and b"tok/s)" in native_run.stdout, native_run.stderr
    assert native_run.stdout.rsplit(b"(", 1)[0] == numpy_run.stdout.rsplit(b"(", 1)[0]


def test_the_app_domain_reads_the_kernel_dir_and_not_the_rest_of_the_cache(native, tmp_path: Path) -> None:
    """The rule the daemon adds (Daemon.host_reads: the kernel's own dir) under a real Landlock domain: the library's
    dir is readable, a converted model beside it in the same cache is not."""
    import subprocess

    from pipeline.virtual import confine

    if confine.landlock.abi_version() < 1:
        pytest.skip("no Landlock on this kernel (the daemon then refuses to start unless sandbox=off)")
    secret = Path(os.environ["ODEVAL_CACHE"]) / "models" / "secret.txt"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("weights")
    storage, scratch = tmp_path / "storage", tmp_path / "scratch"
    storage.mkdir()
    scratch.mkdir()
    code = (f"from pipeline.virtual import confine\n"
            f"with confine.app_ruleset({str(storage)!r}, {str(scratch)!r}, [{str(native.parent)!r}]) as rs:\n"
            f"    rs.enforce()\n"
            f"open({str(native.parent / 'build.json')!r}).read()\n"
            f"import ctypes; ctypes.CDLL({str(native)!r})\n"
            f"try:\n    open({str(secret)!r}).read(); print('READ')\n"
            f"except PermissionError:\n    print('DENIED')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "DENIED", r.stderr
