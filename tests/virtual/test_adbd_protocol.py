"""The virtual device as an ADB peer for hosts other than the bundled adb: protocol 0x01000000 (checksummed
packets, maxdata 4096) from an independent pure-socket client (tests/helpers/miniadb.py), and AUTH verified against
keys made by a crypto library, not by our own code."""

from __future__ import annotations

import base64
import contextlib
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from pipeline.virtual import adbauth
from pipeline.virtual.adbd import Daemon
from pipeline.virtual.services import make_daemon
from tests.helpers.miniadb import MiniAdb


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
