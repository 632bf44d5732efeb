"""The listening virtual device: its storage (the sandbox), options and faults, process table, confinement, and
which service serves a stream.  The services themselves are injected (:func:`pipeline.virtual.services.make_daemon`):
the wire protocol (:mod:`pipeline.virtual.adbd`) and the device's state live here, the shell and the sync service
in modules of their own, and none of them imports another's room.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from pipeline import llama_cpp, native_kernel
from pipeline.virtual import confine
from pipeline.virtual.adbd import FEATURES, AdbdError, Connection, Stream, check_loopback
from pipeline.virtual.broker import HostBroker
from pipeline.virtual.faults import FaultSource
from pipeline.virtual.layout import state_dir, storage_dir
from pipeline.virtual.procs import ProcessTable
from pipeline.virtual.props import VIRTUAL_PROPS
from pipeline.virtual.sandbox import Sandbox

log = logging.getLogger("odeval.virtual.adbd")


Service = Callable[["Daemon", Stream, str], None]  # serves one stream: (daemon, stream, service string)


class Daemon:
    """The listening virtual device: sandbox, options/faults, process table, services.

    ``root`` is the device dir (``root/storage`` = device ``/``, ``root/state`` = host-only state).  The shell and
    sync services are injected (:func:`pipeline.virtual.services.make_daemon`): this module imports neither.
    ``app_cmd`` (test hook) is fixed here for the daemon's lifetime. ``auth``: require ADB AUTH against the
    host-side ``adb_keys`` file (like a phone's /data/misc/adb/adb_keys).  ``sandbox``: confine every device stream
    by the kernel (:mod:`pipeline.virtual.confine`); ``False`` only on the user's explicit opt-out.
    """

    def __init__(self, root: Path, port: int, host: str = "127.0.0.1", options: dict | None = None, *,
                 app_cmd: list[str] | None = None, shell_service: Service | None = None,
                 sync_service: Service | None = None, auth: bool = False, adb_keys: Path | None = None,
                 sandbox: bool = True) -> None:
        if auth and adb_keys is None:
            raise AdbdError("auth needs an adb_keys file (host side, outside the device root); pass --adb-keys")
        self.auth = auth
        self.adb_keys = Path(adb_keys) if adb_keys is not None else None
        self.host = check_loopback(host)
        self.port = port
        self.root = Path(root).resolve()
        self._app_cmd = tuple(app_cmd) if app_cmd else None
        self._shell_service = shell_service
        self._sync_service = sync_service
        self.broker = HostBroker().start()  # unconfined: started before any thread enters the device domain
        self._native: dict[str, tuple[Path, str]] = {}  # the host builds a pushed file may stand for (native_apps.py)
        self._llama_dir = self._llama_key_dir()
        self.faults = FaultSource(self.root, options, read=lambda p: self.broker.call(Path.read_text, p))
        self.faults.get()  # validate early: a bad option fails at start, not at first use
        self.sandbox = Sandbox(storage_dir(self.root), self.faults.get)
        if auth and self.adb_keys.resolve().is_relative_to(self.sandbox.root):
            log.warning("adb_keys %s is inside the device storage: anyone with adb access could add a key; keep it "
                        "outside (the daemon's host-side state dir)", self.adb_keys)
        self.scratch = state_dir(self.root, create=True) / "apps"  # host-private: the apps' model views
        self.scratch.mkdir(mode=0o700, exist_ok=True)
        self.confinement = "off"
        if sandbox:
            try:
                self.confinement = confine.check_available()
                self.enter_device_domain(probe=True)  # a ruleset the kernel accepts, checked at start
            except (confine.SandboxUnavailable, OSError) as e:
                raise AdbdError(f"the virtual device cannot confine its device side: {e}") from None
        self.procs = ProcessTable()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()

    def qkernel(self) -> tuple[Path | None, str]:
        """The reference app's native kernel for this machine (:func:`pipeline.native_kernel.find`), looked up by
        the unconfined broker (the key needs the compiler's identity) at each app start, so a kernel built after
        the daemon started is found, and a rebuilt one replaces the old."""
        return self.broker.call(native_kernel.find)

    def _llama_key_dir(self) -> Path | None:
        """Where this machine's llama.cpp build lives (its key: compilers, CPU, pinned source), computed once."""
        try:
            return self.broker.call(lambda: llama_cpp.key_dir(llama_cpp.build_key()))
        except Exception as e:  # noqa: BLE001 - no compiler, no build: nothing is registered, the device still serves
            log.info("no llama.cpp build can be registered: %s", e)
            return None

    def _register(self) -> dict[str, tuple[Path, str]]:
        """This machine's llama.cpp build, looked up host-side by the unconfined broker (never from device input):
        when each stream is confined (:meth:`host_reads`: a build made after the daemon started is readable by the
        streams opened after it — a Landlock domain cannot be widened later) and at each exec
        (:meth:`native_program`). Two stats: the key dir was computed at start."""
        if self._llama_dir is None:
            return {}
        try:
            found = self.broker.call(llama_cpp.registered, self._llama_dir)
        except Exception as e:  # noqa: BLE001 - a failed lookup registers nothing; it must never end a stream
            log.warning("llama.cpp build not registered: %s", e)
            found = {}
        if found != self._native:
            log.info("registered native programs: %s", ", ".join(f"{n} ({sha[:12]})" for n, (_p, sha) in
                                                                  sorted(found.items())) or "none")
            self._native = found
        return found

    def native_program(self, name: str, sha256: str) -> Path | None:
        """The registered host binary named ``name`` when ``sha256`` is its build's bytes, else None."""
        entry = self._register().get(name)
        return entry[0] if entry is not None and entry[1] == sha256 else None

    def host_reads(self) -> list[str]:
        """Host paths the device side may read besides the runtime: the stand-in model (host-side options only),
        the test hook's files (fixed at start), the native kernel's own directory in ``$ODEVAL_CACHE/native`` (read
        and execute: the app maps the library; the rest of the cache stays out of reach)."""
        lib = self.qkernel()[0]
        paths = [self.faults.get().standin_model or "", str(lib.parent) if lib else ""]
        paths += sorted({str(p.parent) for p, _sha in self._register().values()})  # the registered build's dir
        paths += [a for a in (self._app_cmd or ()) if os.path.isabs(a) and os.path.exists(a)]
        return [p for p in paths if p]

    def enter_device_domain(self, probe: bool = False) -> None:
        """Confine the calling thread (a stream's service) and all it starts; see :mod:`pipeline.virtual.confine`.

        Built per stream (~0.2 ms) so a stand-in model set through the host-side control file is readable by the
        streams opened after it; ``probe`` only builds it (at start: fail closed before listening)."""
        if self.confinement == "off":
            return
        with confine.device_ruleset(self.sandbox.root, self.scratch, self.host_reads()) as rs:
            if not probe:
                rs.enforce()

    @property
    def app_cmd(self) -> tuple[str, ...] | None:
        """The host argv prefix replacing the reference app (read-only: set once at start)."""
        return self._app_cmd

    def banner(self) -> str:
        return ("device::ro.product.name=odeval_virtual;ro.product.model={};ro.product.device=odeval_virtual;"
                "features={}").format(VIRTUAL_PROPS["ro.product.model"], FEATURES)

    def service_for(self, service: str) -> Callable[[Stream, str], None] | None:
        sync = self._sync_service
        if sync is not None and service.startswith("sync:"):
            return lambda s, svc: sync(self, s, svc)
        shell = self._shell_service
        if shell is not None and (service.startswith(("shell:", "shell,")) or service.startswith("exec:")):
            return lambda s, svc: shell(self, s, svc)
        return None

    def bind(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as e:
            sock.close()
            raise AdbdError(f"cannot listen on {self.host}:{self.port} ({e.strerror}); pick another --port") from None
        sock.listen(16)
        self.port = sock.getsockname()[1]
        self._listener = sock
        return sock

    def serve_forever(self) -> None:
        sock = self._listener or self.bind()
        sock.settimeout(0.5)
        while not self._stopping.is_set():
            try:
                client, _addr = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            client.settimeout(None)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                client.setsockopt(socket.SOL_SOCKET, opt, 4 << 20)
            threading.Thread(target=Connection(self, client).serve, daemon=True, name="adb-conn").start()
        sock.close()
        self.procs.kill_all()

    def stop(self) -> None:
        self._stopping.set()
