"""Executing ``simple_app`` on the virtual device: which host program runs, with which environment and argv.

Threat model: any local user can be an ADB client of the daemon (loopback, no AUTH), so everything addressable over
adb — pushed files, the shell's variables, the command line, what is typed into the app — is attacker input.  None
of it may choose the host program, its environment or which host files it reads:

- the program is the reference app, started as ``python -I`` (no ``PYTHON*`` variables, no user site, no cwd on
  ``sys.path``: a pushed ``sitecustomize.py``/``numpy.py``/``pipeline/`` in the app dir is never imported), or the
  test hook ``app_cmd`` fixed when the daemon started (``--app-cmd``); never anything read from the device storage;
- the environment is built from allowlists (:data:`HOST_PASS` from the daemon's own environment,
  :data:`DEVICE_KNOBS` from the device, validated; the device's ``LD_LIBRARY_PATH``/``ADSP_LIBRARY_PATH`` only as
  ``ODEVAL_DEVICE_*`` strings), then the launcher's own variables; every other device variable is refused and
  logged;
- argv carries *device* paths; the app is told the storage root (``ODEVAL_SANDBOX_ROOT``) and confines every model
  dir to it (after symlinks); the model dir argument is checked here too;
- the app's stderr is scrubbed of host paths (tracebacks, loader messages) before it reaches the device; refusals
  the app makes (e.g. ``!reload /etc``) come back on a private pipe (``ODEVAL_AUDIT_FD``) into the daemon log.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.virtual.layout import state_dir
from pipeline.virtual.procs import kill_group
from pipeline.virtual.sandbox import Sandbox, SandboxError

if TYPE_CHECKING:
    from pipeline.virtual.shell import Session
    from pipeline.virtual.shell_builtins import Ctx

APP_BASENAME = "simple_app"
APP_MODULE = "pipeline.apps.reference_app"
REPO_ROOT = Path(__file__).resolve().parents[2]
# -I: isolated (ignores PYTHON* env, user site, and puts neither cwd nor a script dir on sys.path); -u: unbuffered.
_BOOT = ("import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); "
         f"runpy.run_module({APP_MODULE!r}, run_name='__main__', alter_sys=True)")
_KNOB = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
DEVICE_KNOBS: dict[str, re.Pattern[str]] = {  # the reference app's behaviour knobs the run stage sets remotely
    "ODEVAL_TEMPLATE": _KNOB, "ODEVAL_ENGINE": _KNOB,
    "ODEVAL_QUIRK_PAST_END_TOKEN": re.compile(r"-?[0-9]{1,9}|faithful:-?[0-9]{1,9}")}  # an id | faithful:<unwritten id>
DEVICE_INFO = ("LD_LIBRARY_PATH", "ADSP_LIBRARY_PATH")  # passed as ODEVAL_DEVICE_<name>, information only
HOST_PASS = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
             "MKL_NUM_THREADS", "ODEVAL_THREADS", "ODEVAL_ENGINE", "ODEVAL_APP_DEBUG", "HF_HUB_OFFLINE",
             "TRANSFORMERS_OFFLINE")
LEGACY_CONTROL = "/.odeval/faults.json"  # where the control file used to be (inside the device storage)
log = logging.getLogger("odeval.virtual.security")


def app_command(sh: Session, argv: list[str]) -> list[str] | str:
    """Host argv for ``simple_app <model_dir> ...`` (device paths), or an error message for the device."""
    args = list(argv[1:])
    if args:  # argv[1] is the model dir (§4): absolute device path, confined to the storage (after symlinks)
        try:
            sh.sb.host(args[0], sh.cwd)
        except SandboxError:
            log.warning("refused: simple_app model dir %r resolves outside the device storage (vpid %d)", args[0],
                        sh.vpid)
            return f"{args[0]}: Permission denied"
        args[0] = Sandbox.normalize(args[0], sh.cwd)
    if sh.d.app_cmd is not None:
        return [*sh.d.app_cmd, *args]
    return [sys.executable, "-I", "-u", "-c", _BOOT, str(REPO_ROOT), *args]


def app_env(sh: Session, assigns: dict[str, str], vpid: int) -> dict[str, str]:
    """The app's whole environment, from allowlists only (see module docstring); refusals are logged."""
    env = {k: os.environ[k] for k in HOST_PASS if k in os.environ}
    device_env = {k: sh.vars[k] for k in sh.exported if k in sh.vars}
    device_env.update(assigns)
    refused = []
    for key, value in sorted(device_env.items()):
        if key in DEVICE_INFO:
            env[f"ODEVAL_DEVICE_{key}"] = value
        elif key in DEVICE_KNOBS and DEVICE_KNOBS[key].fullmatch(value):
            env[key] = value
        else:
            refused.append(f"{key}={value[:120]!r}")
    if refused:
        log.warning("refused device env for simple_app (vpid %d; not in the allowlist or bad value): %s", vpid,
                    ", ".join(refused))
    env.update(sh.d.faults.get().app_env())  # host-side control file: ODEVAL_FAULT_*, ODEVAL_STANDIN_MODEL
    env["ODEVAL_SANDBOX_ROOT"] = str(sh.sb.root)
    env["ODEVAL_VIRTUAL_PID"] = str(vpid)
    return env


def _note_legacy_control(sh: Session) -> None:
    """A control file at the old device-side location is inert; say so in the log (it is an attack or a leftover)."""
    try:
        legacy = sh.sb.host(LEGACY_CONTROL)
    except SandboxError:
        return
    if legacy.exists():
        log.warning("refused: device-side control file %s is ignored (control files live host-side in %s)",
                    LEGACY_CONTROL, state_dir(sh.d.root))


def run_app(sh: Session, host: Path, argv: list[str], assigns: dict[str, str], ctx: Ctx, exec_mode: bool) -> int:
    """Start the app as a child in its own process group wired to ``ctx``; wait; return the shell status."""
    from pipeline.virtual.shell_builtins import _b

    _note_legacy_control(sh)
    command = app_command(sh, argv)
    if isinstance(command, str):
        ctx.err(_b(f"{argv[0]}: {command}\n"))
        return 127
    if sh.aborted:
        return 137
    proc = sh.proc if exec_mode else sh.d.procs.add(APP_BASENAME, sh.vpid, None)
    audit_r, audit_w = os.pipe()
    env = app_env(sh, assigns, proc.vpid)
    env["ODEVAL_AUDIT_FD"] = str(audit_w)
    try:
        child = subprocess.Popen(  # noqa: S603 - argv list, no shell; only the reference app or the start-time hook
            command, cwd=host.parent, env=env, bufsize=0, start_new_session=True, pass_fds=(audit_w,),
            stdin=ctx.in_file if ctx.in_file is not None else subprocess.PIPE,
            stdout=ctx.out_file if ctx.out_file is not None else subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        os.close(audit_r)
        if not exec_mode:
            sh.d.procs.remove(proc.vpid, proc)
        ctx.err(_b(f"{argv[0]}: cannot start the reference app: {e.strerror or 'exec failed'}\n"))
        return 126
    finally:
        os.close(audit_w)
    proc.popen, proc.name, proc.argv = child, APP_BASENAME, list(argv)
    sh.adopt(child)
    scrub = HostPathScrubber(sh, proc.vpid)
    threads = [_audit_reader(audit_r, proc.vpid)]
    if child.stdout is not None:
        threads.append(_pump(child.stdout, ctx.out))
    threads.append(_pump(child.stderr, ctx.err, scrub))
    if child.stdin is not None:
        threads.append(threading.Thread(target=_feed_child, args=(sh, child), daemon=True, name="app-stdin"))
        threads[-1].start()
    try:
        code = child.wait()
    finally:
        kill_group(child, signal.SIGKILL)  # nothing the app started may outlive it
        for t in threads:
            t.join(timeout=5)
        sh.release(child)
        if exec_mode:
            proc.popen = None
        else:
            sh.d.procs.remove(proc.vpid, proc)
    return 128 - code if code < 0 else code


def _feed_child(sh: Session, child: subprocess.Popen) -> None:
    """Forward session stdin to the app until it exits; on stdin EOF close the app's stdin."""
    assert child.stdin is not None
    try:
        while child.poll() is None:
            data = sh.io.read_in(timeout=0.1)
            if data is None:
                continue
            if data == b"":
                break
            try:
                child.stdin.write(data)
            except (BrokenPipeError, OSError):
                sh.io.unread(data)
                break
    finally:
        try:
            child.stdin.close()
        except OSError:
            pass


class HostPathScrubber:
    """Replaces host paths in complete lines of app stderr: storage paths become device paths, the rest a
    placeholder.  Line-buffered (stderr carries messages, not the token stream)."""

    def __init__(self, sh: Session, vpid: int) -> None:
        self.vpid = vpid
        storage = str(sh.sb.root)
        pairs: dict[str, str] = {}
        standin = sh.d.faults.get().standin_model
        for path, repl in ((storage, ""), (str(sh.d.root), "<host>"), (standin, "<standin_model>"),
                           (str(REPO_ROOT), "<host>"), (sys.prefix, "<host>"), (sys.base_prefix, "<host>"),
                           (sys.exec_prefix, "<host>"), (os.path.expanduser("~"), "<host>")):
            if path and len(path) > 1:
                for variant in {path, os.path.realpath(path)}:
                    pairs.setdefault(variant, repl)
        self._pairs = sorted(pairs.items(), key=lambda kv: -len(kv[0]))
        self._pending = b""
        self._logged = False

    def __call__(self, data: bytes, final: bool = False) -> bytes:
        buf = self._pending + data
        cut = len(buf) if final or len(buf) > 65536 else buf.rfind(b"\n") + 1
        text, self._pending = buf[:cut].decode("utf-8", "surrogateescape"), buf[cut:]
        out = text
        for path, repl in self._pairs:
            if path in out:  # storage paths keep their device part ("" + "/data/..."); the root alone is "/"
                out = re.sub(re.escape(path) + r"(/|(?![\w.-]))", lambda m, r=repl: r + m.group(1) if r or m.group(1)
                             else "/", out)
        if out != text and not self._logged:
            self._logged = True
            log.warning("refused: host path(s) scrubbed from simple_app stderr (vpid %d)", self.vpid)
        return out.encode("utf-8", "surrogateescape")


def _pump(pipe: Any, write: Callable[[bytes], None],
          scrub: Callable[..., bytes] | None = None) -> threading.Thread:
    """Stream child output as it comes (no line buffering unless ``scrub`` needs whole lines)."""

    def run() -> None:
        fd = pipe.fileno()
        try:
            while data := os.read(fd, 65536):
                if scrub is not None:
                    data = scrub(data)
                if data:
                    write(data)
        except OSError:
            pass
        finally:
            if scrub is not None and (rest := scrub(b"", final=True)):
                write(rest)
            pipe.close()

    t = threading.Thread(target=run, daemon=True, name="app-out")
    t.start()
    return t


def _audit_reader(fd: int, vpid: int) -> threading.Thread:
    """Log what the app refused (one line per refusal on its ODEVAL_AUDIT_FD)."""

    def run() -> None:
        with os.fdopen(fd, "rb") as fh:
            for line in fh:
                log.warning("refused by simple_app (vpid %d): %s", vpid,
                            line.decode("utf-8", "replace").strip()[:500])

    t = threading.Thread(target=run, daemon=True, name="app-audit")
    t.start()
    return t
