"""The virtual device as an ADB peer for hosts other than the bundled adb: protocol 0x01000000 (checksummed
packets, maxdata 4096) and 0x01000001 from an independent pure-socket client (tests/helpers/miniadb.py), the PyPI
adb-shell package (0x01000000 only), the stream life cycle of AOSP adbd, and AUTH verified against keys made by a
crypto library, not by our own code."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import random
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from pipeline.virtual import adbauth
from pipeline.virtual.adbd import Stream
from pipeline.virtual.daemon import Daemon
from pipeline.virtual.services import make_daemon
from tests.helpers.miniadb import A_CLSE, A_OKAY, A_OPEN, A_WRTE, MiniAdb


def adb_pubkey_line(key: rsa.RSAPrivateKey, comment: str = "tester@host") -> str:
    """adb's public key format (android_pubkey_encode): len, n0inv, n and rr as LE words, exponent."""
    pub = key.public_key().public_numbers()
    words = key.key_size // 32
    n0inv = (-pow(pub.n, -1, 1 << 32)) % (1 << 32)
    rr = pow(2, 2 * key.key_size, pub.n)
    raw = (struct.pack("<II", words, n0inv) + pub.n.to_bytes(4 * words, "little") + rr.to_bytes(4 * words, "little")
           + struct.pack("<I", pub.e))
    return base64.b64encode(raw).decode() + " " + comment


def signer(key: rsa.RSAPrivateKey):
    """What adb does with its private key: RSA_sign(NID_sha1, token) = PKCS#1 v1.5 over a pre-hashed 'SHA-1'."""
    return lambda token: key.sign(token, padding.PKCS1v15(), utils.Prehashed(hashes.SHA1()))


@pytest.fixture(scope="module")
def keys() -> tuple[rsa.RSAPrivateKey, rsa.RSAPrivateKey]:
    return tuple(rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(2))


@contextlib.contextmanager
def _serve(tmp_path: Path, **kw) -> Iterator[Daemon]:
    d = make_daemon(tmp_path / "root", 0, **kw)
    d.bind()
    t = threading.Thread(target=d.serve_forever, daemon=True)
    t.start()
    try:
        yield d
    finally:
        d.stop()
        t.join(timeout=5)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    with _serve(tmp_path) as d:
        yield d


def test_v1_0_host_shell_push_pull_with_checksums(daemon: Daemon) -> None:
    c = MiniAdb("127.0.0.1", daemon.port, version=0x01000000, maxdata=4096)
    try:
        banner = c.connect()
        assert banner.startswith(b"device::") and b"features=" in banner
        assert c.negotiated == 0x01000000
        assert c.shell("echo hi") == b"hi\n"
        payload = bytes(range(256)) * 40 + b"tail"  # 10 244 bytes: spans several 4096-byte WRTEs both ways
        c.push("/data/local/tmp/mini.bin", payload)
        assert (daemon.sandbox.root / "data/local/tmp/mini.bin").read_bytes() == payload
        assert c.pull("/data/local/tmp/mini.bin") == payload
        assert 0 < c.max_wrte <= 4096  # the device honoured our maxdata
        assert c.checked > 5  # every device packet with data carried a correct sum (recv() raises otherwise)
    finally:
        c.close()


def test_v1_0_bad_checksum_drops_transport(daemon: Daemon) -> None:
    c = MiniAdb("127.0.0.1", daemon.port, version=0x01000000)
    try:
        c.connect()
        c.send(0x4E45504F, 1, 0, b"shell:echo hi\0", bad_checksum=True)  # OPEN
        with pytest.raises(EOFError):
            c.recv()
    finally:
        c.close()


def test_v1_0_1_skips_checksums(daemon: Daemon) -> None:
    c = MiniAdb("127.0.0.1", daemon.port, version=0x01000001, maxdata=1 << 20)
    try:
        c.connect()
        assert c.negotiated == 0x01000001
        c.send(0x4E45504F, 1, 0, b"shell:echo ok\0", bad_checksum=True)  # ignored at this version, as adbd does
        cmd, _a0, a1, _ = c.recv()
        assert (cmd, a1) == (0x59414B4F, 1)
        local, remote = 1, _a0
        assert c.read_until_close(local, remote) == b"ok\n"
    finally:
        c.close()


def test_device_sends_zero_checksum_at_v1_0_1(daemon: Daemon) -> None:
    import socket

    from tests.helpers.miniadb import HEADER, checksum

    with socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as s:
        body = b"host::\0"
        s.sendall(HEADER.pack(0x4E584E43, 0x01000001, 4096, len(body), checksum(body), 0x4E584E43 ^ 0xFFFFFFFF) + body)
        head = s.recv(24, socket.MSG_WAITALL)
        _cmd, version, _maxdata, length, check, _magic = HEADER.unpack(head)
        assert version == 0x01000001 and length > 0 and check == 0


def test_auth_signature_checked_against_adb_keys(tmp_path: Path, keys) -> None:
    good, other = keys
    keys_file = tmp_path / "state" / "adb_keys"
    keys_file.parent.mkdir()
    keys_file.write_text("# comment\nnot-a-key\n" + adb_pubkey_line(good) + "\n")
    with _serve(tmp_path, auth=True, adb_keys=keys_file) as d:
        c = MiniAdb("127.0.0.1", d.port)
        try:
            with pytest.raises(PermissionError):  # unsigned: the device keeps asking
                c.connect()
        finally:
            c.close()
        tokens: list[bytes] = []

        def wrong_then_right(token: bytes) -> bytes:
            tokens.append(token)
            return signer(other if len(tokens) == 1 else good)(token)

        c = MiniAdb("127.0.0.1", d.port)
        try:
            assert c.connect(sign=wrong_then_right).startswith(b"device::")
            assert len(tokens) == 2 and tokens[0] != tokens[1] and all(len(t) == 20 for t in tokens)  # new token
            assert c.shell("echo authorized") == b"authorized\n"
        finally:
            c.close()


def test_auth_publickey_refused_and_logged(tmp_path: Path, keys, caplog) -> None:
    good, _ = keys
    keys_file = tmp_path / "adb_keys"  # absent file = no authorized key
    with _serve(tmp_path, auth=True, adb_keys=keys_file) as d:
        c = MiniAdb("127.0.0.1", d.port)
        try:
            c.send(0x4E584E43, 0x01000000, 4096, b"host::\0")
            cmd, kind, _, token = c.recv()
            assert (cmd, kind, len(token)) == (0x48545541, 1, 20)
            line = adb_pubkey_line(good, "me@box")
            with caplog.at_level("WARNING", logger="odeval.virtual.adbd"):
                c.send(0x48545541, 3, 0, line.encode() + b"\0")
                c.send(0x4E45504F, 1, 0, b"shell:echo nope\0")  # streams are ignored while unauthorized
                c.sock.settimeout(0.5)
                with pytest.raises(TimeoutError):
                    c.recv()
            assert line in caplog.text and str(keys_file) in caplog.text
        finally:
            c.close()


def test_parse_and_verify_units(keys) -> None:
    good, other = keys
    k = adbauth.parse_public_key(adb_pubkey_line(good))
    assert (k.n, k.e, k.comment) == (good.public_key().public_numbers().n, 65537, "tester@host")
    token = b"\x01" * 20
    assert adbauth.verify(token, signer(good)(token), [k]) == k
    assert adbauth.verify(b"\x02" * 20, signer(good)(token), [k]) is None
    assert adbauth.verify(token, signer(other)(token), [k]) is None
    with pytest.raises(ValueError, match="length"):
        adbauth.parse_public_key(base64.b64encode(b"\x40\0\0\0" + b"\0" * 20).decode())


def test_checksums_are_per_connection(daemon: Daemon) -> None:
    """Checksums are per connection: an old host and a new one on the same daemon at once."""
    old = MiniAdb("127.0.0.1", daemon.port, version=0x01000000)
    new = MiniAdb("127.0.0.1", daemon.port, version=0x01000001, maxdata=1 << 20)
    try:
        old.connect()
        new.connect()
        assert new.shell("echo new") == b"new\n"
        assert old.shell("echo old") == b"old\n"
        assert old.checked > 0
    finally:
        old.close()
        new.close()


# ------------------------------------------------------------------------------------------------------------------
# Independent clients (issue 26): the PyPI adb-shell package and miniadb at both protocol versions, and the stream
# life cycle of AOSP adbd (adb.cpp handle_packet, sockets.cpp local_socket_close / remote_socket_shutdown).
# ------------------------------------------------------------------------------------------------------------------
GUARD_S = 15.0  # per-read guard: a stream end the device never answers fails here instead of hanging the suite
BIG = random.Random(26).randbytes(3 * 1024 * 1024 + 17)  # 3 MB, not a multiple of any chunk or WRTE size
VERSIONS = [pytest.param(0x01000000, 4096, id="v1.0-checksums-4k"),
            pytest.param(0x01000001, 1 << 20, id="v1.0.1-nochecksum-1M")]


def test_adb_shell_package_shell_push_pull_stat(daemon: Daemon) -> None:
    """adb-shell ends every sync stream with CLSE and waits for the device's; without that answer each push, pull,
    stat and list used to raise TcpTimeoutException although the file had arrived."""
    from adb_shell.adb_device import AdbDeviceTcp

    dev = AdbDeviceTcp("127.0.0.1", daemon.port, default_transport_timeout_s=GUARD_S)
    assert dev.connect(read_timeout_s=GUARD_S)
    try:
        assert dev.shell("echo hi", read_timeout_s=GUARD_S) == "hi\n"
        path = "/data/local/tmp/adbshell.bin"
        dev.push(io.BytesIO(BIG), path, st_mode=0o100640, mtime=1_700_000_123, read_timeout_s=GUARD_S)
        assert (daemon.sandbox.root / path.lstrip("/")).read_bytes() == BIG
        mode, size, mtime = dev.stat(path, read_timeout_s=GUARD_S)
        assert (stat.S_IMODE(mode), size, mtime) == (0o640, len(BIG), 1_700_000_123)
        got = io.BytesIO()
        dev.pull(path, got, read_timeout_s=GUARD_S)
        assert got.getvalue() == BIG
        assert "adbshell.bin" in [f.filename.decode() for f in dev.list("/data/local/tmp", read_timeout_s=GUARD_S)]
        assert dev.shell("sha256sum " + path, read_timeout_s=GUARD_S).split()[0] == hashlib.sha256(BIG).hexdigest()
    finally:
        dev.close()


@pytest.mark.parametrize("end", ["clse", "quit"])
@pytest.mark.parametrize(("version", "maxdata"), VERSIONS)
def test_independent_client_both_versions(daemon: Daemon, version: int, maxdata: int, end: str) -> None:
    """Shell output and exit status, a 3 MB push and pull, stat — each sync stream ended by the host's CLSE
    (answered) or by QUIT (the device closes) — and afterwards not one stray packet."""
    c = MiniAdb("127.0.0.1", daemon.port, version=version, maxdata=maxdata, timeout=GUARD_S)
    try:
        c.connect()
        assert c.negotiated == version
        assert c.shell("echo hi") == b"hi\n"
        assert c.shell_v2("echo out; echo err >&2; exit 3") == (b"out\n", b"err\n", 3)
        assert c.shell_v2("true") == (b"", b"", 0)
        out, err, code = c.shell_v2("no-such-tool")
        assert (out, code) == (b"", 127) and b"not found" in err
        path = "/data/local/tmp/mini-big.bin"
        c.push(path, BIG, mode=0o100600, mtime=1_700_000_456, end=end)
        assert (daemon.sandbox.root / path.lstrip("/")).read_bytes() == BIG
        mode, size, mtime = c.stat(path, end=end)
        assert (stat.S_ISREG(mode), stat.S_IMODE(mode), size, mtime) == (True, 0o600, len(BIG), 1_700_000_456)
        assert c.stat("/data/local/tmp/absent", end=end) == (0, 0, 0)
        assert c.pull(path, end=end) == BIG
        assert 0 < c.max_wrte <= maxdata
        if version < 0x01000001:
            assert c.checked > 700  # 3 MB in 4 KiB WRTEs, every one's sum verified by recv()
        assert c.barrier() == []  # no second CLSE, no OKAY/WRTE for a stream that is gone
    finally:
        c.close()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[MiniAdb]:
    """A connected host at 0x01000001 with 4 KiB WRTEs (the life cycle does not depend on the version)."""
    c = MiniAdb("127.0.0.1", daemon.port, version=0x01000001, maxdata=4096, timeout=GUARD_S)
    try:
        c.connect()
        yield c
    finally:
        c.close()


def test_open_refusals_as_adbd(client: MiniAdb) -> None:
    """OPEN: unknown service -> CLSE(0, id); remote-id 0 -> ignored; a delayed-ack window in arg1, which this
    device never negotiates -> CLSE(0, id)."""
    client.send(A_OPEN, 9, 0, b"no-such-service:\0")
    assert client.recv() == (A_CLSE, 0, 9, b"")
    client.send(A_OPEN, 0, 0, b"shell:echo ignored\0")
    assert client.barrier() == []
    client.send(A_OPEN, 10, 4096, b"shell:echo refused\0")
    assert client.recv() == (A_CLSE, 0, 10, b"")


def test_host_close_is_answered_once_and_the_id_forgotten(client: MiniAdb) -> None:
    """The host's CLSE gets one CLSE(local, remote) back; afterwards WRTE and CLSE for that id are dropped and an
    OKAY is answered with CLSE(its arg1, its arg0) — the same as for ids never opened."""
    local, remote = client.open("sync:")
    client.close_stream(local, remote)
    assert client.barrier() == []
    client.send(A_WRTE, local, remote, b"QUIT\0\0\0\0")
    client.send(A_CLSE, local, remote)
    assert client.barrier() == []
    client.send(A_OKAY, local, remote)
    assert client.barrier() == [(A_CLSE, remote, local, b"")]
    client.send(A_WRTE, 4242, 777, b"x")
    client.send(A_CLSE, 4242, 777)
    client.send(A_OKAY, 4242, 777)
    assert client.barrier() == [(A_CLSE, 777, 4242, b"")]


def test_device_close_needs_no_answer(client: MiniAdb) -> None:
    """A finished command closes from the device side; the host's CLSE in reply finds no stream and is ignored."""
    local, remote = client.open("shell:echo bye")
    assert client.read_until_close(local, remote) == b"bye\n"  # answers the device's CLSE, as adb's host does
    assert client.barrier() == []


def test_wrte_with_foreign_remote_id_is_dropped(client: MiniAdb) -> None:
    """find_local_socket(local, remote) matches both ids: a WRTE with our local-id but another remote-id is not
    delivered (had it been, the first STAT answer would be the directory's, not the missing file's)."""
    local, remote = client.open("sync:")
    bogus, missing = b"/data/local/tmp", b"/data/local/tmp/absent"
    client.send(A_WRTE, local + 1000, remote, b"STAT" + struct.pack("<I", len(bogus)) + bogus)
    client.write(local, remote, b"STAT" + struct.pack("<I", len(missing)) + missing)
    assert client._sync_read(local, remote, 16) == b"STAT" + bytes(12)
    client.close_stream(local, remote)
    assert client.barrier() == []


def test_host_close_while_device_waits_for_okay(daemon: Daemon, client: MiniAdb) -> None:
    """A pull in 4 KiB WRTEs, the first not OKAYed: the host's CLSE is still answered, and no WRTE follows it."""
    (daemon.sandbox.root / "data/local/tmp/big.bin").write_bytes(BIG)
    local, remote = client.open("sync:")
    path = b"/data/local/tmp/big.bin"
    client.write(local, remote, b"RECV" + struct.pack("<I", len(path)) + path)
    cmd, _a0, a1, data = client.recv()
    assert (cmd, a1, len(data)) == (A_WRTE, local, 4096)
    client.close_stream(local, remote)
    assert client.barrier() == []


def test_host_close_stops_a_running_command(daemon: Daemon, client: MiniAdb,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """CLSE right after OPEN of ``sleep 30``: answered at once, and the command ends — also when the CLSE beats the
    service's registration of its cleanup (it used to sleep on). The real shell service runs; a probe only notes
    when its handler returns."""
    returned = threading.Event()
    real_service_for = daemon.service_for

    def probed(service: str) -> Callable[[Stream, str], None] | None:
        handler = real_service_for(service)
        if handler is None or not service.startswith("shell:sleep"):
            return handler

        def run(stream: Stream, svc: str) -> None:
            try:
                handler(stream, svc)
            finally:
                returned.set()
        return run

    monkeypatch.setattr(daemon, "service_for", probed)
    local, remote = client.open("shell:sleep 30")
    client.close_stream(local, remote)
    assert returned.wait(GUARD_S), "the command kept running after the host closed its stream"
    assert client.barrier() == []
    assert client.shell("echo still-serving") == b"still-serving\n"
