"""The ADB wire protocol of the virtual device (device side), threads + blocking sockets.

One reader thread per TCP connection parses 24-byte headers and dispatches; each opened stream runs its service
(shell, exec, sync) in its own thread.  Pitfalls measured against the real adb server (adb 29 and 36) shape this file:
- a WRTE is never larger than the smaller announced maxdata (adb pull hangs silently otherwise);
- one WRTE in flight per stream until the host's OKAY (``Stream.write`` blocks on it);
- an incoming WRTE is OKAYed only when the service takes it from the stream (backpressure: at most one queued);
- shell-v2 packets and sync messages may span WRTEs, so services read through ``Stream.read_exact``;
- on CLSE the service is told (``Stream.closed``) and the shell kills its child process groups;
- every stream ends with exactly one CLSE from us, also when the host closed first (hosts such as the adb-shell
  package wait for that answer): the life cycle follows AOSP adbd, see ``Stream`` and
  ``Connection._stream_packet``.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import queue
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pipeline.virtual import adbauth, confine
from pipeline.virtual.broker import HostBroker
from pipeline.virtual.faults import FaultSource
from pipeline.virtual.layout import state_dir, storage_dir
from pipeline.virtual.procs import ProcessTable
from pipeline.virtual.props import VIRTUAL_PROPS
from pipeline.virtual.sandbox import Sandbox
from pipeline.virtual.space import NoSpace

log = logging.getLogger("odeval.virtual.adbd")

A_CNXN, A_OPEN, A_OKAY, A_WRTE, A_CLSE, A_AUTH, A_STLS = (
    0x4E584E43, 0x4E45504F, 0x59414B4F, 0x45545257, 0x45534C43, 0x48545541, 0x534C5453)
VERSION = 0x01000001  # our protocol version; a negotiated version >= VERSION_SKIP_CHECKSUM drops data checksums
VERSION_MIN = 0x01000000  # what a connection speaks until the host's CNXN says otherwise (adb's A_VERSION_MIN)
VERSION_SKIP_CHECKSUM = 0x01000001
MAX_PAYLOAD = 1 << 20
SYNC_DATA_MAX = 64 * 1024
HEADER = struct.Struct("<6I")
FEATURES = "shell_v2,cmd,stat_v2,ls_v2,fixed_push_mkdir"


def checksum(data: bytes | memoryview) -> int:
    """adb's data_check: the plain byte sum of the payload, as uint32."""
    return sum(data) & 0xFFFFFFFF


class AdbdError(Exception):
    """The daemon cannot start or serve (bad bind address, port in use)."""


def check_loopback(host: str) -> str:
    """Refuse any bind address that is not loopback: the daemon executes commands, it must not face a network."""
    name = "127.0.0.1" if host == "localhost" else host
    try:
        ok = ipaddress.ip_address(name).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise AdbdError(f"refusing to listen on {host!r}: the virtual device binds loopback only; use --host 127.0.0.1")
    return name


class StreamClosed(Exception):
    """The stream (or its whole transport) is gone."""


class CloseCallbacks(list):
    """A stream's close callbacks, each run exactly once. One appended after the close runs at once: the host's CLSE
    can arrive before the service thread has registered its cleanup (``shell:sleep 30`` opened and closed at once
    kept running), and services register with a plain ``stream.on_close.append``."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._fired = False

    def append(self, cb: Callable[[], None]) -> None:
        with self._lock:
            if not self._fired:
                super().append(cb)
                return
        _run_callback(cb)

    def fire(self) -> None:
        with self._lock:
            if self._fired:
                return
            self._fired = True
            cbs = list(self)
        for cb in cbs:
            _run_callback(cb)


def _run_callback(cb: Callable[[], None]) -> None:
    try:
        cb()
    except Exception:  # noqa: BLE001 - a cleanup callback must not kill the reader thread
        log.exception("on_close callback failed")


class Stream:
    """One ADB stream: blocking reads (with reassembly) and flow-controlled writes for a service thread.

    Life cycle (adbd's local socket, sockets.cpp): the stream is *closed* exactly once, in one of three ways, and
    after that no WRTE, OKAY or CLSE for it goes out:
    - the host's CLSE (:meth:`_closed_by_host`, reader thread): we answer CLSE at once, as adbd's
      ``local_socket_close`` does through ``remote_socket_shutdown``; WRTEs already queued stay readable;
    - the service ends (:meth:`close`): CLSE once the last WRTE is OKAYed (adbd only reads its service's EOF after
      that OKAY), no answer awaited; a late CLSE from the host finds no stream and is dropped;
    - the transport dies (:meth:`_transport_lost`): nothing can be sent.
    ``_cond`` orders the WRTE/OKAY/CLSE this stream sends against its state, so no packet follows the CLSE.
    """

    def __init__(self, conn: Connection, local_id: int, remote_id: int) -> None:
        self.conn = conn
        self.local_id = local_id
        self.remote_id = remote_id
        self._inbox: queue.Queue[bytes | None] = queue.Queue()
        self._buf = memoryview(b"")
        self._cond = threading.Condition()  # guards _in_flight and closed; held while sending this stream's packets
        self._in_flight = False  # a WRTE is out and its OKAY has not come back
        self._wlock = threading.Lock()  # one writer at a time: a write's WRTEs are never interleaved with another's
        self.closed = threading.Event()  # set once: host CLSE, service done (our CLSE sent) or transport gone
        self.on_close = CloseCallbacks()

    # called by the reader thread ------------------------------------------------------------------------------
    def _deliver(self, data: bytes) -> None:
        self._inbox.put(data)

    def _okay(self) -> None:
        with self._cond:
            self._in_flight = False
            self._cond.notify_all()

    def _closed_by_host(self) -> None:
        """The host's CLSE: answer with ours (adbd does, and clients such as adb-shell wait for it), then stop."""
        if self._mark_closed(send_clse=True):
            self._wake_service()

    def _transport_lost(self) -> None:
        if self._mark_closed(send_clse=False):
            self._wake_service()

    def _mark_closed(self, send_clse: bool) -> bool:
        """Close once (False if already closed); the CLSE goes out under the same lock that WRTE/OKAY take."""
        with self._cond:
            if self.closed.is_set():
                return False
            self.closed.set()
            self._cond.notify_all()
            if send_clse:
                self._send_clse()
            return True

    def _wake_service(self) -> None:
        """End of stream for readers, and the service's cleanup (the shell kills its process groups)."""
        self._inbox.put(None)
        self.on_close.fire()

    def _send_clse(self) -> None:
        try:
            self.conn.send_packet(A_CLSE, self.local_id, self.remote_id)
        except OSError:
            pass  # the transport is going away: the host drops the stream with it

    # service side ---------------------------------------------------------------------------------------------
    def read_chunk(self, timeout: float | None = None) -> bytes:
        """Next received bytes (b"" at end of stream); OKAYs the WRTE as it is taken (one queued at most).
        Data the host sent before its CLSE is still returned, but no longer OKAYed (the stream is gone there)."""
        if len(self._buf):
            out = bytes(self._buf)
            self._buf = memoryview(b"")
            return out
        try:
            data = self._inbox.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None
        if data is None:
            self._inbox.put(None)
            return b""
        with self._cond:
            if not self.closed.is_set():
                self.conn.send_packet(A_OKAY, self.local_id, self.remote_id)
        return data

    def read_exact(self, n: int) -> memoryview:
        """Exactly n bytes across WRTE boundaries; raises StreamClosed if the stream ends first."""
        if len(self._buf) >= n:
            out, self._buf = self._buf[:n], self._buf[n:]
            return out
        parts = [bytes(self._buf)]
        have = len(self._buf)
        self._buf = memoryview(b"")
        while have < n:
            chunk = self.read_chunk()
            if not chunk:
                raise StreamClosed("stream closed while reading")
            parts.append(chunk)
            have += len(chunk)
        data = memoryview(b"".join(parts))
        self._buf = data[n:]
        return data[:n]

    def write(self, data: bytes | memoryview) -> None:
        """Send data as WRTEs no larger than the negotiated maxdata, each waiting for the host's OKAY."""
        view = memoryview(data)
        step = self.conn.max_payload
        with self._wlock:
            for off in range(0, len(view), step):
                with self._cond:
                    while self._in_flight and not self.closed.is_set():
                        self._cond.wait()
                    if self.closed.is_set():
                        raise StreamClosed("stream closed")
                    self._in_flight = True
                    self.conn.send_packet(A_WRTE, self.local_id, self.remote_id, view[off:off + step])

    def close(self) -> None:
        """Close from the device side once the service is done: CLSE after the last WRTE's OKAY; no reply awaited."""
        with self._wlock, self._cond:
            while self._in_flight and not self.closed.is_set():
                self._cond.wait()
            ours = self._mark_closed(send_clse=True)  # False: the host closed first and was answered already
        self.conn.forget(self.local_id)
        if ours:
            self._wake_service()


class Connection:
    """One TCP connection from the adb server: CNXN handshake, stream table, packet dispatch."""

    def __init__(self, daemon: Daemon, sock: socket.socket) -> None:
        self.daemon = daemon
        self.sock = sock
        self.max_payload = MAX_PAYLOAD
        self._send_lock = threading.Lock()
        self._streams: dict[int, Stream] = {}
        self._next_id = 1
        self._lock = threading.Lock()
        self._rfile = sock.makefile("rb", buffering=1 << 20)
        # per connection, like adbd's atransport: checksums until the CNXN negotiates a version that drops them
        self.version = VERSION_MIN
        self.authorized = not daemon.auth
        self._token = b""

    def send_packet(self, cmd: int, arg0: int, arg1: int, data: bytes | memoryview = b"") -> None:
        check = checksum(data) if self.version < VERSION_SKIP_CHECKSUM else 0
        header = HEADER.pack(cmd, arg0, arg1, len(data), check, cmd ^ 0xFFFFFFFF)
        with self._send_lock:
            if len(data) < 4096:
                self.sock.sendall(header + bytes(data))
            else:
                self.sock.sendall(header)
                self.sock.sendall(data)

    def forget(self, local_id: int) -> None:
        with self._lock:
            self._streams.pop(local_id, None)

    def abort(self) -> None:
        """Drop the whole transport (used by the drop-push fault): the host sees the device go offline."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _read_exact(self, n: int) -> bytes:
        data = self._rfile.read(n)
        if data is None or len(data) < n:
            raise EOFError
        return data

    def serve(self) -> None:
        try:
            while True:
                cmd, arg0, arg1, length, check, magic = HEADER.unpack(self._read_exact(24))
                if magic != cmd ^ 0xFFFFFFFF:
                    log.warning("bad magic, dropping connection")
                    return
                if length > MAX_PAYLOAD:
                    log.warning("packet of %d bytes exceeds maxdata, dropping connection", length)
                    return
                data = self._read_exact(length) if length else b""
                if self.version < VERSION_SKIP_CHECKSUM and checksum(data) != check:
                    # adbd's check_data(): a bad sum under an old protocol version ends the transport
                    log.warning("bad data checksum (version %#x), dropping connection", self.version)
                    return
                self._dispatch(cmd, arg0, arg1, data)
        except (EOFError, OSError, ValueError):
            pass
        finally:
            with self._lock:
                streams = list(self._streams.values())
                self._streams.clear()
            for s in streams:
                s._transport_lost()
            try:
                self.sock.close()
            except OSError:
                pass

    def _dispatch(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        if cmd == A_CNXN:
            self.version = min(VERSION, arg0)
            self.max_payload = max(4096, min(MAX_PAYLOAD, arg1))
            if self.authorized:
                self._send_cnxn()
            else:
                self._send_token()
        elif cmd == A_AUTH:
            self._auth(arg0, data)
        elif not self.authorized:
            return  # adbd ignores streams on a transport that is not online (unauthorized)
        elif cmd == A_OPEN:
            self._open(arg0, arg1, data)
        elif cmd in (A_OKAY, A_WRTE, A_CLSE):
            self._stream_packet(cmd, arg0, arg1, data)
        # STLS is never offered (no TLS feature in the banner).

    def _open(self, remote_id: int, send_bytes: int, data: bytes) -> None:
        """OPEN(remote-id, 0, service) as adbd's handle_packet takes it: remote-id 0 is ignored; a non-zero arg1
        (a delayed-ack window, which we never negotiate) or a service we do not have is refused with
        CLSE(0, remote-id); otherwise OKAY(local-id, remote-id) and the service starts."""
        if remote_id == 0:
            return
        service = data.rstrip(b"\0").decode("utf-8", "replace")
        handler = self.daemon.service_for(service) if send_bytes == 0 else None
        if handler is None:
            self.send_packet(A_CLSE, 0, remote_id)
            return
        with self._lock:
            local_id = self._new_local_id()
            stream = Stream(self, local_id, remote_id)
            self._streams[local_id] = stream
        self.send_packet(A_OKAY, local_id, remote_id)
        threading.Thread(target=self._run_service, args=(handler, stream, service), daemon=True,
                         name=f"svc-{local_id}").start()

    def _new_local_id(self) -> int:
        """Next free non-zero id (caller holds _lock); wraps at 2**32 like adbd's local_socket_next_id."""
        while True:
            local_id = self._next_id
            self._next_id = self._next_id % 0xFFFFFFFF + 1
            if local_id not in self._streams:
                return local_id

    def _stream_packet(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        """OKAY/WRTE/CLSE(remote-id, local-id) as adbd's handle_packet (adb.cpp) and sockets.cpp treat them.

        A stream is found by our local-id (arg1) *and* the host's id (arg0), like ``find_local_socket(arg1, arg0)``;
        CLSE also accepts arg0 = 0 (old hosts closed that way), OKAY looks up arg1 alone and then ignores a foreign
        arg0. Per case:
        - WRTE, known: queued; OKAYed when the service takes it. Unknown (closed, never opened, wrong arg0) or a
          zero id: dropped without a reply.
        - OKAY, known: the in-flight WRTE is acknowledged. With a payload (a delayed-ack count, never negotiated
          here) adbd logs a mismatch and ignores it. Unknown local-id: CLSE(arg1, arg0), so a host that still holds
          the stream closes it ("the host server may have closed the local socket" in adbd's words).
        - CLSE, known: answered with CLSE(local-id, remote-id) at once (``local_socket_close`` ->
          ``remote_socket_shutdown``) and the service is told. Unknown: ignored — e.g. the host's answer to our
          own CLSE, since a device-side close forgets the stream as it sends.
        """
        if arg1 == 0 or (arg0 == 0 and cmd != A_CLSE):
            return
        with self._lock:
            stream = self._streams.get(arg1)
        if cmd == A_OKAY:
            if stream is None:
                self.send_packet(A_CLSE, arg1, arg0)
            elif stream.remote_id == arg0 and not data:
                stream._okay()
            return
        if stream is None or (stream.remote_id != arg0 and not (cmd == A_CLSE and arg0 == 0)):
            return
        if cmd == A_WRTE:
            stream._deliver(data)
        else:
            self.forget(arg1)
            stream._closed_by_host()

    def _send_cnxn(self) -> None:
        self.send_packet(A_CNXN, VERSION, MAX_PAYLOAD, self.daemon.banner().encode())

    def _send_token(self) -> None:
        self._token = adbauth.new_token()
        self.send_packet(A_AUTH, adbauth.AUTH_TOKEN, 0, self._token)

    def _auth(self, kind: int, data: bytes) -> None:
        """Host's answer to our TOKEN: a signature checked against adb_keys (CNXN if good, a new TOKEN if not),
        or its public key — where a phone would ask "Allow USB debugging?", we refuse and log the key."""
        if self.authorized or not self.daemon.auth or not self._token:
            return
        if kind == adbauth.AUTH_SIGNATURE:
            key = adbauth.verify(self._token, data, adbauth.load_keys(self.daemon.adb_keys))
            if key is None:
                self._send_token()
                return
            log.info("AUTH: host key %s accepted", key.comment or "(no comment)")
            self.authorized = True
            self._token = b""
            self._send_cnxn()
        elif kind == adbauth.AUTH_RSAPUBLICKEY:
            offered = data.rstrip(b"\0").decode("ascii", "replace").strip()
            log.warning("AUTH: unknown host key refused (no 'Allow USB debugging?' prompt here); to authorize it,"
                        " append this line to %s: %s", self.daemon.adb_keys, offered)

    def _run_service(self, handler: Callable[[Stream, str], None], stream: Stream, service: str) -> None:
        try:
            self.daemon.enter_device_domain()  # before anything the stream asks for: the kernel bounds it
        except OSError as e:
            log.error("refused: stream %r not served, its thread could not be confined (%s)", service, e)
            stream.close()
            return
        try:
            handler(stream, service)
        except (StreamClosed, OSError):
            pass
        except Exception:  # noqa: BLE001 - log and close the stream; never take the daemon down
            log.exception("service %r failed", service)
        finally:
            stream.close()


ShellService = Callable[["Daemon", Stream, str], None]


class Daemon:
    """The listening virtual device: sandbox, options/faults, process table, services.

    ``root`` is the device dir (``root/storage`` = device ``/``, ``root/state`` = host-only state).  The shell
    service is injected (:func:`pipeline.virtual.services.make_daemon`) so this module never imports the shell.
    ``app_cmd`` (test hook) is fixed here for the daemon's lifetime. ``auth``: require ADB AUTH against the
    host-side ``adb_keys`` file (like a phone's /data/misc/adb/adb_keys).  ``sandbox``: confine every device stream
    by the kernel (:mod:`pipeline.virtual.confine`); ``False`` only on the user's explicit opt-out.
    """

    def __init__(self, root: Path, port: int, host: str = "127.0.0.1", options: dict | None = None, *,
                 app_cmd: list[str] | None = None, shell_service: ShellService | None = None, auth: bool = False,
                 adb_keys: Path | None = None, sandbox: bool = True) -> None:
        if auth and adb_keys is None:
            raise AdbdError("auth needs an adb_keys file (host side, outside the device root); pass --adb-keys")
        self.auth = auth
        self.adb_keys = Path(adb_keys) if adb_keys is not None else None
        self.host = check_loopback(host)
        self.port = port
        self.root = Path(root).resolve()
        self._app_cmd = tuple(app_cmd) if app_cmd else None
        self._shell_service = shell_service
        self.broker = HostBroker().start()  # unconfined: started before any thread enters the device domain
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

    def host_reads(self) -> list[str]:
        """Host paths the device side may read besides the runtime: the stand-in model (host-side options only),
        the test hook's files (fixed at start)."""
        paths = [self.faults.get().standin_model or ""]
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
        if service.startswith("sync:"):
            return lambda s, _svc: SyncService(self, s).run()
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


# --------------------------------------------------------------------------------------------------------------
# sync: service
# --------------------------------------------------------------------------------------------------------------
def _sync_id(name: bytes) -> int:
    return struct.unpack("<I", name)[0]


class _PushAborted(Exception):
    pass


class SyncService:
    """``sync:`` — STAT/STA2/LST2, LIST/LIS2, SEND (temp file + rename on DONE), RECV, QUIT."""

    def __init__(self, daemon: Daemon, stream: Stream) -> None:
        self.d = daemon
        self.s = stream
        self._out = bytearray()

    # buffered output: many small sync messages become few WRTEs
    def _emit(self, data: bytes | memoryview) -> None:
        self._out += data
        if len(self._out) >= self.s.conn.max_payload:
            self._flush()

    def _flush(self) -> None:
        if self._out:
            data, self._out = bytes(self._out), bytearray()
            self.s.write(data)

    def _fail(self, message: str) -> None:
        msg = message.encode()
        self._emit(b"FAIL" + struct.pack("<I", len(msg)) + msg)
        self._flush()

    def run(self) -> None:
        while True:
            try:
                head = self.s.read_exact(8)
            except StreamClosed:
                return
            cmd, length = bytes(head[:4]), struct.unpack("<I", head[4:])[0]
            if cmd == b"QUIT":
                return
            if length > 4096 and cmd != b"DATA":
                self._fail(f"path too long: {length}")
                return
            arg = bytes(self.s.read_exact(length)).decode("utf-8", "surrogateescape")
            faults = self.d.faults.get()
            if arg.startswith("/sys/"):
                self.d.sandbox.refresh_sys(faults)
            if cmd == b"STAT":
                self._stat_v1(arg)
            elif cmd in (b"STA2", b"LST2"):
                self._stat_v2(arg, cmd, follow=cmd == b"STA2")
            elif cmd in (b"LIST", b"LIS2"):
                self._list(arg, v2=cmd == b"LIS2")
            elif cmd == b"SEND":
                if not self._send(arg):
                    return
            elif cmd == b"RECV":
                self._recv(arg)
            else:
                self._fail(f"unknown sync command {cmd!r}")
                return
            self._flush()

    def _lstat(self, path: str, follow: bool) -> os.stat_result | None:
        try:
            return self.d.sandbox.fs.stat(path, follow=follow)
        except OSError:
            return None

    def _stat_v1(self, path: str) -> None:
        st = self._lstat(path, follow=True)
        if st is None:
            self._emit(b"STAT" + struct.pack("<III", 0, 0, 0))
        else:
            self._emit(b"STAT" + struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime)))

    @staticmethod
    def _v2_fields(st: os.stat_result | None, err: int) -> bytes:
        if st is None:
            return struct.pack("<IQQIIIIQqqq", err, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        return struct.pack("<IQQIIIIQqqq", 0, st.st_dev, st.st_ino, st.st_mode, st.st_nlink, 2000, 2000,
                           st.st_size, int(st.st_atime), int(st.st_mtime), int(st.st_ctime))

    def _stat_v2(self, path: str, cmd: bytes, follow: bool) -> None:
        err = 0
        st = None
        try:
            st = self.d.sandbox.fs.stat(path, follow=follow)
        except OSError as e:
            err = e.errno or errno.ENOENT
        self._emit(cmd + self._v2_fields(st, err))

    def _list(self, path: str, v2: bool) -> None:
        fs = self.d.sandbox.fs
        try:
            entries = [(".", fs.stat(path)), ("..", fs.stat(path + "/.."))] + list(fs.entries(path))
        except OSError:
            entries = []
        for name, st in entries:
            raw = name.encode("utf-8", "surrogateescape")
            if v2:
                self._emit(b"DNT2" + self._v2_fields(st, 0) + struct.pack("<I", len(raw)) + raw)
            else:
                self._emit(b"DENT" + struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime),
                                                 len(raw)) + raw)
        if v2:
            self._emit(b"DONE" + self._v2_fields(None, 0) + struct.pack("<I", 0))
        else:
            self._emit(b"DONE" + struct.pack("<IIII", 0, 0, 0, 0))

    def _throttle(self, start: float, nbytes: int, rate: int | None) -> None:
        if rate:
            ahead = nbytes / rate - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)

    def _send(self, arg: str) -> bool:
        """Receive one file into a temp name in its (in-root) parent dir, renamed over the target on DONE, so an
        interrupted or refused push never leaves a partial file under the destination name.  Every byte is charged
        to the device's capacity as it arrives.  Returns False if the transport was dropped."""
        path, _, mode_s = arg.rpartition(",")
        if not path:
            path, mode_s = arg, "33188"
        try:
            mode = int(mode_s)
        except ValueError:
            mode = 0o100644
        push = _Upload(self.d.sandbox, path, mode)
        start = time.monotonic()
        faults = self.d.faults.get()
        try:
            while True:
                head = self.s.read_exact(8)
                kind, n = bytes(head[:4]), struct.unpack("<I", head[4:])[0]
                if kind == b"DONE":
                    mtime = n
                    break
                if kind != b"DATA" or n > SYNC_DATA_MAX:
                    self._fail(f"bad sync message {kind!r} ({n} bytes) during SEND")
                    return False
                data = self.s.read_exact(n)
                if faults.drop_push_after_bytes is not None and push.received + n >= faults.drop_push_after_bytes:
                    log.warning("fault: dropping transport after %d bytes of SEND %s", push.received + n, path)
                    push.discard()  # clean up before the host can observe the failure
                    self.s.conn.abort()
                    raise _PushAborted
                push.write(data)
                self._throttle(start, push.received, faults.bandwidth_bytes_per_s)
            error = push.finish(mtime)
            if error is None:
                self._emit(b"OKAY" + struct.pack("<I", 0))
            else:
                self._fail(error)
            return True
        except (_PushAborted, StreamClosed):
            return False
        finally:
            push.discard()

    def _recv(self, path: str) -> None:
        faults = self.d.faults.get()
        try:
            fd = self.d.sandbox.fs.open(path)
        except OSError as e:
            self._fail(e.strerror or "open failed")
            return
        start = time.monotonic()
        sent = 0
        with os.fdopen(fd, "rb", buffering=0) as fh:
            while True:
                chunk = fh.read(SYNC_DATA_MAX)
                if not chunk:
                    break
                self._emit(b"DATA" + struct.pack("<I", len(chunk)))
                self._emit(chunk)
                sent += len(chunk)
                self._throttle(start, sent, faults.bandwidth_bytes_per_s)
        self._emit(b"DONE" + struct.pack("<I", 0))


class _Upload:
    """One SEND's file on the device: a temp file (or a symlink target being collected) in the target's in-root
    parent dir, the first error met (the rest of the data is still read, as adbd does), the capacity charge."""

    def __init__(self, sandbox: Sandbox, path: str, mode: int) -> None:
        self.sb, self.path, self.mode = sandbox, path, mode
        self.received = 0
        self.error: str | None = None
        self.link_target = bytearray() if stat.S_ISLNK(mode) else None
        self.parent_fd: int | None = None
        self.tmp: str | None = None
        self.fd: int | None = None
        self.writer = sandbox.space.writer()
        self.kept = False
        try:
            if sandbox.disk_full():
                self.error = "write failed: No space left on device"
                return
            if sandbox.fs.is_dir(path):
                self.error = f"{path}: Is a directory"
                return
            head = Sandbox.normalize(path).rsplit("/", 1)[0] or "/"
            sandbox.fs.mkdir(head, parents=True)  # fixed_push_mkdir
            self.parent_fd, self.leaf = sandbox.fs.parent(path)
            self.tmp = f".{self.leaf}.odeval-partial-{os.getpid()}-{threading.get_ident()}"
            if self.link_target is None:
                self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  0o600, dir_fd=self.parent_fd)
        except OSError as e:
            self.error = f"{path}: {e.strerror}"

    def write(self, data: memoryview) -> None:
        self.received += len(data)
        if self.error is not None:
            return
        try:
            self.writer.charge(len(data))
            if self.fd is not None:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view):]
            elif self.link_target is not None:
                self.link_target += data
        except NoSpace:
            self.error = "write failed: No space left on device"
            self.discard()
        except OSError as e:
            self.error = f"write failed: {e.strerror}"
            self.discard()

    def finish(self, mtime: int) -> str | None:
        """Publish the file under its name (rename over it); the error message instead, if any."""
        if self.error is None and self.writer.doomed:
            self.error = "write failed: No space left on device"
        if self.error is not None or self.parent_fd is None or self.tmp is None:
            return self.error or f"{self.path}: cannot write"
        try:
            if self.fd is not None:
                os.fchmod(self.fd, stat.S_IMODE(self.mode))
                os.utime(self.fd, (mtime, mtime))
                os.close(self.fd)
                self.fd = None
            else:
                target = bytes(self.link_target or b"").rstrip(b"\0").decode("utf-8", "surrogateescape")
                os.symlink(target, self.tmp, dir_fd=self.parent_fd)
            replaced = _exists_at(self.parent_fd, self.leaf)
            os.rename(self.tmp, self.leaf, src_dir_fd=self.parent_fd, dst_dir_fd=self.parent_fd)
            self.tmp = None
            self.kept = True
            if replaced:
                self.sb.space.freed()
        except OSError as e:
            return f"write failed: {e.strerror}"
        return None

    def discard(self) -> None:
        """Drop the partial file and the charge: nothing half-written may survive a failed SEND."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.tmp is not None and self.parent_fd is not None:
            try:
                os.unlink(self.tmp, dir_fd=self.parent_fd)
            except OSError:
                pass
            self.tmp = None
        if self.parent_fd is not None:
            os.close(self.parent_fd)
            self.parent_fd = None
        self.writer.close(kept=self.kept)


def _exists_at(dirfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except OSError:
        return False
    return True
