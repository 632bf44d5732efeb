"""push_dir against the real virtual device through the real adb server: incremental, verified, atomic."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from pipeline.device.remote import TransferError
from pipeline.device.transfer import PART_SUFFIX, commit7, device_manifest_path, push_dir, remote_dir_for
from pipeline.fetch.manifest import MANIFEST_NAME, scan_dir
from tests.push.conftest import make_tree

pytestmark = pytest.mark.timeout(120)


def sandbox(vd, remote: str) -> Path:
    """Host path of a device path inside the virtual device's storage root."""
    return vd.storage / remote.lstrip("/")


def device_files(vd, remote_dir: str) -> dict[str, bytes]:
    base = sandbox(vd, remote_dir)
    return {p.relative_to(base).as_posix(): p.read_bytes() for p in base.rglob("*") if p.is_file()}


def assert_mirrors(vd, host: Path, remote_dir: str) -> None:
    """Every host file is on the device with identical bytes, and the manifest lists exactly them."""
    entries = scan_dir(host)
    on_dev = device_files(vd, remote_dir)
    for e in entries:
        assert hashlib.sha256(on_dev[e.path]).hexdigest() == e.sha256, e.path
    doc = json.loads(on_dev[MANIFEST_NAME])
    assert [f["path"] for f in doc["files"]] == [e.path for e in entries]
    assert set(doc["device_stat"]) == {e.path for e in entries}


@pytest.fixture
def remote(virtual_device, request) -> str:
    return f"/data/local/tmp/odeval-test/{request.node.name}/apps/x@1234567"


def test_names():
    assert commit7("0123456789abcdef0123456789abcdef01234567") == "0123456"
    assert commit7("builtin-abcdef123456") == "abcdef1"
    assert commit7("local-fedcba987654") == "fedcba9"
    assert len(commit7("v1.0")) == 7 and commit7("v1.0") != commit7("v1.1")
    assert remote_dir_for("/data/local/tmp/odeval/", "models", "gemma-2b it", "builtin-abcdef123456") == \
        "/data/local/tmp/odeval/models/gemma-2b_it@abcdef1"
    with pytest.raises(TransferError, match="remote_root"):
        remote_dir_for("relative/root", "apps", "a", "c")


@pytest.mark.parametrize("mover", ["sync", "adb"])
def test_first_push_sends_all_second_sends_nothing(virtual_device, host_tree, remote, mover):
    vd = virtual_device
    entries = scan_dir(host_tree)
    first = push_dir(vd.device, host_tree, remote, entries, executables=["simple_app"], mover=mover)
    assert first.files_sent == len(entries) == 4
    assert first.bytes_sent == sum(e.size for e in entries)
    assert first.files_skipped == 0
    assert_mirrors(vd, host_tree, remote)
    assert stat.S_IMODE(os.stat(sandbox(vd, remote) / "simple_app").st_mode) == 0o755
    manifest_before = sandbox(vd, device_manifest_path(remote)).read_bytes()

    second = push_dir(vd.device, host_tree, remote, entries, executables=["simple_app"])
    assert (second.files_sent, second.bytes_sent) == (0, 0)
    assert second.files_skipped == 4 and second.files_adopted == 0
    assert second.bytes_skipped == first.bytes_sent
    assert sandbox(vd, device_manifest_path(remote)).read_bytes() == manifest_before  # not rewritten


def test_corrupted_file_on_device_is_repushed(virtual_device, host_tree, remote):
    vd = virtual_device
    entries = scan_dir(host_tree)
    push_dir(vd.device, host_tree, remote, entries)
    with open(sandbox(vd, remote) / "lib/libllmod.so", "ab") as fh:  # changed after push, behind our back
        fh.write(b"garbage")
    again = push_dir(vd.device, host_tree, remote, entries)
    assert again.sent == ["lib/libllmod.so"]
    assert again.bytes_sent == (host_tree / "lib/libllmod.so").stat().st_size
    assert_mirrors(vd, host_tree, remote)


def test_same_size_corruption_needs_full_verify(virtual_device, host_tree, remote):
    """The documented trade-off: an in-place rewrite keeping size+mtime is trusted by `stat`, caught by `full`."""
    vd = virtual_device
    entries = scan_dir(host_tree)
    push_dir(vd.device, host_tree, remote, entries)
    victim = sandbox(vd, remote) / "zz_big.bin"
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[1000] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))

    fast = push_dir(vd.device, host_tree, remote, entries)
    assert fast.files_sent == 0  # not noticed: size and mtime unchanged
    full = push_dir(vd.device, host_tree, remote, entries, verify="full")
    assert full.sent == ["zz_big.bin"]
    assert full.files_adopted == 3  # the intact ones were re-hashed on the device and kept
    assert_mirrors(vd, host_tree, remote)


@pytest.mark.parametrize("mover", ["sync", "adb"])
def test_interrupted_push_keeps_verified_files_and_resumes(virtual_device, tmp_path, remote, mover):
    vd = virtual_device
    host = make_tree(tmp_path / "model", {"a_small.bin": 200_000, "b_small.bin": 100_000, "c_big.bin": 3_000_000})
    entries = scan_dir(host)
    vd.set_faults(drop_push_after_bytes=1_000_000)  # per SEND: the small files pass, the big one drops
    with pytest.raises(TransferError) as err:
        push_dir(vd.device, host, remote, entries, mover=mover)
    msg = str(err.value)
    assert "\n" not in msg and "re-run push" in msg and vd.serial in msg and "c_big.bin" in msg
    on_dev = device_files(vd, remote)
    assert MANIFEST_NAME not in on_dev  # written last, only after everything verified
    host_bytes = {e.path: (host / e.path).read_bytes() for e in entries}
    finals = {rel: data for rel, data in on_dev.items() if not rel.rsplit("/", 1)[-1].startswith(".")}
    for rel, data in finals.items():  # nothing half-written under a final name
        assert data == host_bytes[rel], rel
    assert "c_big.bin" not in finals
    assert "a_small.bin" in finals  # verified before c_big's send began (one verification in flight at most)

    vd.set_faults()
    dev = vd.reconnect()
    resumed = push_dir(dev, host, remote, entries)
    # kept files are re-hashed on the device, not re-sent. ">=": the drop can cut the in-flight verification's
    # shell on the host side while the device still completes its mv (as a phone would), so b_small may have
    # become final after the check above
    assert resumed.files_adopted == len(entries) - len(resumed.sent) >= len(finals)
    assert "c_big.bin" in resumed.sent and "a_small.bin" not in resumed.sent
    assert_mirrors(vd, host, remote)
    assert not [r for r in device_files(vd, remote) if r.endswith(PART_SUFFIX)]


def test_full_disk_is_a_clear_error(virtual_device, host_tree, remote):
    vd = virtual_device
    vd.set_faults(disk_full=True)
    entries = scan_dir(host_tree)
    need = sum(e.size for e in entries)
    with pytest.raises(TransferError) as err:
        push_dir(vd.device, host_tree, remote, entries)
    msg = str(err.value)
    assert f"need {need} bytes" in msg and "0 bytes available" in msg and "\n" not in msg


def test_capacity_precheck_names_bytes(virtual_device, host_tree, remote):
    vd = virtual_device
    entries = scan_dir(host_tree)
    used = sum(p.stat().st_size for p in vd.storage.rglob("*") if p.is_file() and not p.is_symlink())
    vd.set_faults(capacity_bytes=used + 100_000)  # room for ~100 kB only
    with pytest.raises(TransferError, match=rf"need {sum(e.size for e in entries)} bytes, \d+ bytes available"):
        push_dir(vd.device, host_tree, remote, entries)


def test_stale_owned_files_removed_foreign_files_kept(virtual_device, host_tree, remote):
    vd = virtual_device
    push_dir(vd.device, host_tree, remote, scan_dir(host_tree))
    foreign = sandbox(vd, remote) / "user-notes.txt"
    foreign.write_text("not ours")
    (host_tree / "lib/libllmod.so").unlink()
    res = push_dir(vd.device, host_tree, remote, scan_dir(host_tree))
    assert res.files_removed == 1 and res.files_sent == 0
    assert not (sandbox(vd, remote) / "lib/libllmod.so").exists()
    assert foreign.read_text() == "not ours"
    assert_mirrors(vd, host_tree, remote)


def test_host_file_changed_since_manifest(virtual_device, host_tree, remote):
    vd = virtual_device
    entries = scan_dir(host_tree)
    size = (host_tree / "simple_app").stat().st_size
    (host_tree / "simple_app").write_bytes(b"x" * size)  # same size, other bytes than the manifest says
    with pytest.raises(TransferError, match="re-run fetch"):
        push_dir(vd.device, host_tree, remote, entries)
    assert not (sandbox(vd, remote) / "simple_app").exists()


def test_unusable_remote_root_is_named_and_nothing_lands_outside(virtual_device, host_tree, tmp_path):
    vd = virtual_device
    outside = tmp_path / "outside-the-device"
    outside.mkdir()
    link = sandbox(vd, "/data/local/tmp/escape")
    link.symlink_to(outside)  # resolved inside the device (openat2 RESOLVE_IN_ROOT), where it dangles
    try:
        with pytest.raises(TransferError) as err:
            push_dir(vd.device, host_tree, "/data/local/tmp/escape/odeval/apps/a@1234567", scan_dir(host_tree))
    finally:
        link.unlink()
    msg = str(err.value)
    assert "device.remote_root" in msg and "/data/local/tmp/escape" in msg and "\n" not in msg
    assert not list(outside.iterdir())


@pytest.mark.parametrize("adb_says,expect", [
    ("adb: error: failed to copy 'x' to '/system/x': remote Permission denied", "permission denied writing"),
    ("remote Read-only file system", "permission denied writing"),
    ("remote No space left on device", "is full writing"),
    ("remote Is a directory", "refused"),
])
def test_send_failures_name_the_fix(adb_says: str, expect: str) -> None:
    from pipeline.device.sender import send_failed

    class Dev:
        serial = "SER"

    msg = str(send_failed(Dev(), "/system/x", adb_says))
    assert expect in msg and "device.remote_root" in msg and "\n" not in msg


def test_bytes_corrupted_between_send_and_verify_are_caught(virtual_device, host_tree, remote, monkeypatch):
    """The on-device sha256 runs beside the next file's send: a file whose bytes on the device differ from what
    was sent (flipped after arrival, before verification) must still fail the push, never reach its final name,
    and leave the files verified before it in place."""
    from pipeline.device import transfer

    vd = virtual_device
    entries = scan_dir(host_tree)
    victim = "we ird 'name' $x.bin"  # 3rd of 4 in send order: verified while zz_big.bin is being sent
    original = transfer.SyncSession.send

    def send_then_flip(self, local, remote_path, mode, mtime, on_bytes):
        original(self, local, remote_path, mode, mtime, on_bytes)
        if remote_path.endswith(f".{victim}{PART_SUFFIX}"):
            part = sandbox(vd, remote_path)
            data = bytearray(part.read_bytes())
            data[len(data) // 2] ^= 0xFF  # same size: only a real hash of the device bytes notices
            part.write_bytes(bytes(data))

    monkeypatch.setattr(transfer.SyncSession, "send", send_then_flip)
    with pytest.raises(TransferError, match=r"x\.bin failed verification after push"):
        push_dir(vd.device, host_tree, remote, entries)
    base = sandbox(vd, remote)
    assert not (base / victim).exists() and not (base / f".{victim}{PART_SUFFIX}").exists()
    for kept in ("lib/libllmod.so", "simple_app"):  # verified before the bad one: kept, byte-identical
        assert (base / kept).read_bytes() == (host_tree / kept).read_bytes()
    assert not (base / MANIFEST_NAME).exists()  # the manifest is written only after every file verified
    monkeypatch.setattr(transfer.SyncSession, "send", original)
    again = push_dir(vd.device, host_tree, remote, entries)
    assert victim in again.sent
    assert_mirrors(vd, host_tree, remote)
