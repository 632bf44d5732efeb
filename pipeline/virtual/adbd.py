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

import ipaddress
import logging
import queue
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pipeline.virtual import adbauth

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



class Device(Protocol):
    """What a connection needs of the device it serves (``pipeline.virtual.daemon.Daemon`` is one)."""

    auth: bool
    adb_keys: Path | None

    def banner(self) -> str: ...

    def service_for(self, service: str) -> Callable[[Stream, str], None] | None: ...

    def enter_device_domain(self, probe: bool = False) -> None: ...

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

    def __init__(self, daemon: Device, sock: socket.socket) -> None:
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
        except Exception as e:  # noqa: BLE001 - whatever failed, the stream is not served unconfined
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
