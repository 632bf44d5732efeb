"""Executing ``simple_app`` on the virtual device: which host program runs, with which environment and argv.

Threat model: any local user can be an ADB client of the daemon (loopback, no AUTH), so everything addressable over
adb — pushed files, the shell's variables, the command line, what is typed into the app — is attacker input.  None
of it may choose the host program, its environment or which host files it reads:

- the program is the reference app, started as ``python -I`` (no ``PYTHON*`` variables, no user site, no cwd on
  ``sys.path``: a pushed ``sitecustomize.py``/``numpy.py``/``pipeline/`` in the app dir is never imported), or the
  test hook ``app_cmd`` fixed when the daemon started (``--app-cmd``); never anything read from the device storage;
- the environment is built from allowlists (:data:`pipeline.context.FORWARDED` from the daemon's own environment,
  :data:`DEVICE_KNOBS` from the device, validated; the device's ``LD_LIBRARY_PATH``/``ADSP_LIBRARY_PATH`` only as
  ``ODEVAL_DEVICE_*`` strings), then the launcher's own variables; every other device variable is refused and
  logged;
- argv carries *device* paths; the app inherits the device's ``/`` as a directory fd (``ODEVAL_ROOT_FD``) and
  resolves every model dir inside it by the kernel (pipeline/guest/device_view.py); its cwd is the shell's, resolved
  the same way;
- the app runs in its own Landlock domain (:func:`pipeline.virtual.confine.app_ruleset`: storage read-only, its
  scratch dir, the runtime), with its private memory capped (``RLIMIT_DATA``: a phone's low-memory killer) and the
  number of apps and device processes capped (fork's "Try again");
- the app's stderr is scrubbed of host paths (tracebacks, loader messages) before it reaches the device; refusals
  the app makes (e.g. ``!reload /etc``) come back on a private pipe (``ODEVAL_AUDIT_FD``) into the daemon log.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.context import forwarded_env
from pipeline.native_kernel import ENV_LIB
from pipeline.virtual import confine
from pipeline.virtual.layout import state_dir
from pipeline.virtual.native_apps import native_argv
from pipeline.virtual.procs import kill_group
from pipeline.virtual.sandbox import Sandbox
from pipeline.virtual.shell_api import Ctx, Session, to_bytes
from pipeline.virtual.space import NoSpace

APP_BASENAME = "simple_app"
APP_MODULE = "pipeline.guest.reference_app"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../pipeline: the app imports it from here, nothing else
REPO_ROOT = PACKAGE_DIR.parent
# -I: isolated (ignores PYTHON* env, user site, and puts neither cwd nor a script dir on sys.path); -u: unbuffered.
# The package is loaded from its own dir (argv[1]): the app's domain may read .../pipeline, not the repo around it.
_BOOT = ("import importlib.util as u, runpy, sys; p = sys.argv.pop(1); "
         "s = u.spec_from_file_location('pipeline', p + '/__init__.py', submodule_search_locations=[p]); "
         "m = u.module_from_spec(s); sys.modules['pipeline'] = m; s.loader.exec_module(m); "
         f"runpy.run_module({APP_MODULE!r}, run_name='__main__', alter_sys=True)")
_KNOB = re.compile(r"[a-z0-9][a-z0-9_.-]{0,31}")
DEVICE_KNOBS: dict[str, re.Pattern[str]] = {  # the reference app's behaviour knobs the run stage sets remotely
    "ODEVAL_TEMPLATE": _KNOB, "ODEVAL_ENGINE": _KNOB, "ODEVAL_THREADS": re.compile(r"[1-9][0-9]?"),
    "ODEVAL_QUIRK_PAST_END_TOKEN": re.compile(r"-?[0-9]{1,9}|faithful:-?[0-9]{1,9}")}  # an id | faithful:<unwritten id>
DEVICE_INFO = ("LD_LIBRARY_PATH", "ADSP_LIBRARY_PATH")  # passed as ODEVAL_DEVICE_<name>, information only
LEGACY_CONTROL = "/.odeval/faults.json"  # where the control file used to be (inside the device storage)
log = logging.getLogger("odeval.virtual.security")


class ForkRefused(Exception):
    """The device's process or app cap is reached (what fork's EAGAIN is on a phone)."""


def guest_argv(sh: Session, argv: list[str]) -> list[str]:
    """Host argv for ``simple_app <model_dir> ...``: the model dir as an absolute *device* path, which the app
    resolves in-root itself (pipeline/guest/device_view.py); never a host path."""
    args = list(argv[1:])
    if args:
        args[0] = Sandbox.normalize(args[0], sh.cwd)
    if sh.d.app_cmd is not None:
        return [*sh.d.app_cmd, *args]
    return [sys.executable, "-I", "-u", "-c", _BOOT, str(PACKAGE_DIR), *args]


def guest_env(sh: Session, assigns: dict[str, str], vpid: int, native: bool = False) -> dict[str, str]:
    """The app's whole environment, from allowlists only (see module docstring); refusals are logged. A native
    program (``native``: a registered llama.cpp build) takes no device variable at all."""
    env = forwarded_env()
    device_env = {k: sh.vars[k] for k in sh.exported if k in sh.vars}
    device_env.update(assigns)
    refused = []
    for key, value in sorted(device_env.items()):
        if key in DEVICE_INFO:
            env[f"ODEVAL_DEVICE_{key}"] = value
        elif key in DEVICE_KNOBS and DEVICE_KNOBS[key].fullmatch(value) and not native:
            env[key] = value
        else:
            refused.append(f"{key}={value[:120]!r}")
    if refused:
        log.warning("refused device env for the app (vpid %d; not in the allowlist or bad value): %s", vpid,
                    ", ".join(refused))
    if native:
        return env | {"HOME": "/data/local/tmp", "ODEVAL_VIRTUAL_PID": str(vpid)}
    env.update(sh.d.faults.get().guest_env())  # host-side control file: ODEVAL_FAULT_*, ODEVAL_STANDIN_MODEL
    lib, why = sh.d.qkernel()  # the native kernel the confined app may map (its dir is in the app's read rules)
    env[ENV_LIB] = str(lib) if lib else f"unavailable: {why}"
    env["ODEVAL_VIRTUAL_PID"] = str(vpid)
    env["ODEVAL_DEVICE_CWD"] = sh.cwd
    env["HOME"] = "/data/local/tmp"  # a device path: nothing of the host user's home
    return env


def _note_legacy_control(sh: Session) -> None:
    """A control file at the old device-side location is inert; say so in the log (it is an attack or a leftover)."""
    if sh.fs.exists(LEGACY_CONTROL):
        log.warning("refused: device-side control file %s is ignored (control files live host-side in %s)",
                    LEGACY_CONTROL, state_dir(sh.d.root))


def _check_caps(sh: Session) -> None:
    f = sh.d.faults.get()
    procs = sh.d.procs.all()
    apps = sum(1 for p in procs if p.popen is not None)
    if apps >= f.max_apps or len(procs) >= f.max_processes:
        log.warning("refused: simple_app start (vpid %d): %d apps / %d device processes running (caps %d / %d)",
                    sh.vpid, apps, len(procs), f.max_apps, f.max_processes)
        raise ForkRefused


class _Launch:
    """What one app start holds on the host: the fds it inherits, its scratch dir (model views), its domain."""

    def __init__(self, sh: Session, vpid: int) -> None:
        self.sh = sh
        self.root_fd = os.dup(sh.fs.fd)  # the device's / for the app's own in-root resolution
        os.set_inheritable(self.root_fd, True)
        try:
            self.cwd_fd = sh.fs.open(sh.cwd, os.O_PATH | os.O_DIRECTORY)
        except OSError:
            self.cwd_fd = sh.fs.open("/", os.O_PATH | os.O_DIRECTORY)
        os.set_inheritable(self.cwd_fd, True)
        self.scratch = Path(tempfile.mkdtemp(prefix=f"{vpid}-", dir=sh.d.scratch))

    def popen(self, command: list[str], env: dict[str, str], audit_w: int, program: Path | None = None,
              **kw: Any) -> subprocess.Popen:
        """Start the app in its own nested Landlock domain (entered by a short-lived thread, so the session's own
        thread keeps its domain), its cwd the shell's cwd resolved in-root, its memory capped. ``program``: a
        registered native build runs in the narrower :func:`~pipeline.virtual.confine.native_ruleset`."""
        env = env | {"ODEVAL_ROOT_FD": str(self.root_fd), "ODEVAL_APP_SCRATCH": str(self.scratch),
                     "ODEVAL_AUDIT_FD": str(audit_w)}
        result: dict[str, Any] = {}

        def spawn() -> None:
            try:
                if self.sh.d.confinement != "off":
                    rules = (confine.native_ruleset(self.sh.sb.root, self.scratch, program.parent) if program
                             else confine.app_ruleset(self.sh.sb.root, self.scratch, self.sh.d.host_reads()))
                    with rules as rs:
                        rs.enforce()
                result["proc"] = subprocess.Popen(  # noqa: S603 - argv list, no shell; the app or the start-time hook
                    command, cwd=f"/proc/self/fd/{self.cwd_fd}", env=env, bufsize=0, start_new_session=True,
                    pass_fds=(audit_w, self.root_fd, self.cwd_fd), **kw)
            except BaseException as e:  # noqa: BLE001 - re-raised in the session's thread
                result["error"] = e

        t = threading.Thread(target=spawn, name="app-spawn")
        t.start()
        t.join()
        if "error" in result:
            raise result["error"]
        proc: subprocess.Popen = result["proc"]
        faults = self.sh.d.faults.get()
        free = max(0, faults.capacity_bytes - self.sh.sb.space.used())
        try:
            # RLIMIT_DATA: private writable memory (heap, numpy/torch buffers), what an app's RAM budget is.
            # RLIMIT_FSIZE: a file the app writes itself cannot outgrow the free space it started with (its stdout,
            # even redirected to a file, goes through the daemon and is charged byte by byte).
            resource.prlimit(proc.pid, resource.RLIMIT_DATA, (faults.app_memory_bytes, faults.app_memory_bytes))
            resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (free, free))
        except (OSError, ValueError) as e:
            log.warning("simple_app limits not applied (%s)", e)
        return proc

    def close(self) -> None:
        for fd in (self.root_fd, self.cwd_fd):
            os.close(fd)
        shutil.rmtree(self.scratch, ignore_errors=True)


def run_app(sh: Session, argv: list[str], assigns: dict[str, str], ctx: Ctx, exec_mode: bool,
            program: Path | None = None) -> int:
    """Start the app as a child in its own process group wired to ``ctx``; wait; return the shell status.
    ``program``: the registered native build the device file stands for (:mod:`pipeline.virtual.native_apps`),
    else the reference app."""

    _note_legacy_control(sh)
    if sh.aborted:
        return 137
    try:
        _check_caps(sh)
    except ForkRefused:
        ctx.err(to_bytes(f"sh: {argv[0]}: can't fork: Try again\n"))
        return 1
    name = program.name if program is not None else APP_BASENAME
    proc = sh.proc if exec_mode else sh.d.procs.add(name, sh.vpid, None)
    launch = _Launch(sh, proc.vpid)
    audit_r, audit_w = os.pipe()
    env = guest_env(sh, assigns, proc.vpid, native=program is not None)
    command = native_argv(sh, program, argv) if program is not None else guest_argv(sh, argv)
    try:
        child = launch.popen(command, env, audit_w, program,
                             stdin=ctx.in_file if ctx.in_file is not None else subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        os.close(audit_r)
        launch.close()
        if not exec_mode:
            sh.d.procs.remove(proc.vpid, proc)
        ctx.err(to_bytes(f"{argv[0]}: cannot start {name}: {e.strerror or 'exec failed'}\n"))
        return 126
    finally:
        os.close(audit_w)
    proc.popen, proc.name, proc.argv = child, name, list(argv)
    sh.adopt(child)
    scrub = HostPathScrubber(sh, proc.vpid, program)
    threads = [_audit_reader(audit_r, proc.vpid), _pump(child.stdout, ctx.out), _pump(child.stderr, ctx.err, scrub)]
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
        launch.close()
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

    def __init__(self, sh: Session, vpid: int, program: Path | None = None) -> None:
        self.vpid = vpid
        storage = str(sh.sb.root)
        pairs: dict[str, str] = {}
        standin = sh.d.faults.get().standin_model
        build = str(program.parent) if program is not None else None
        for path, repl in ((storage, ""), (str(sh.d.root), "<host>"), (standin, "<standin_model>"), (build, "<build>"),
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
        full = False
        try:
            while data := os.read(fd, 65536):
                if scrub is not None:
                    data = scrub(data)
                if data and not full:
                    try:
                        write(data)
                    except NoSpace:  # stdout redirected onto a full device: the app's writes fail, it runs on
                        full = True
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
