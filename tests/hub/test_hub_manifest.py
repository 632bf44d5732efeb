"""The manifest format: hashing, scanning (symlink policy), the hash cache, diffing, (de)serialisation."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from pipeline.fetch.manifest import (
    MANIFEST_NAME,
    FileEntry,
    HashCache,
    ManifestError,
    diff,
    git_blob_sha1,
    hash_file,
    manifest_dumps,
    manifest_loads,
    manifest_sha256,
    scan_dir,
)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "b.bin").write_bytes(b"\x00\x01" * 1000)
    (root / "a.json").write_text('{"x": 1}')
    (root / "sub" / "deep" / "c.txt").write_text("deep")
    (root / MANIFEST_NAME).write_text("{}")
    return root


def test_hash_file_and_git_sha1(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"hello\n")
    assert hash_file(f) == _sha(b"hello\n")
    # `git hash-object` of "hello\n" is a well-known constant; recompute it from its definition here
    assert git_blob_sha1(f) == hashlib.sha1(b"blob 6\0hello\n").hexdigest()


def test_scan_dir_sorted_relative_excludes_manifest(tree: Path) -> None:
    entries = scan_dir(tree)
    assert [e.path for e in entries] == ["a.json", "b.bin", "sub/deep/c.txt"]
    by = {e.path: e for e in entries}
    assert by["b.bin"] == FileEntry("b.bin", 2000, _sha(b"\x00\x01" * 1000))
    assert by["sub/deep/c.txt"].sha256 == _sha(b"deep")


def test_scan_dir_exclude_prunes_directories(tree: Path) -> None:
    assert [e.path for e in scan_dir(tree, exclude=(MANIFEST_NAME, "sub"))] == ["a.json", "b.bin"]


def test_symlink_policy(tree: Path, tmp_path: Path) -> None:
    outside = tmp_path / "blob"
    outside.write_bytes(b"blob content")
    (tree / "linked.bin").symlink_to(outside)  # file link leaving the root: followed (HF cache layout)
    (tree / "alias").symlink_to(tree / "sub")  # dir link inside the root: followed
    entries = {e.path: e for e in scan_dir(tree)}
    assert entries["linked.bin"] == FileEntry("linked.bin", len(b"blob content"), _sha(b"blob content"))
    assert entries["alias/deep/c.txt"].sha256 == entries["sub/deep/c.txt"].sha256

    (tree / "outdir").symlink_to(tmp_path)  # dir link leaving the root: refused
    with pytest.raises(ManifestError, match="leaves"):
        scan_dir(tree)
    (tree / "outdir").unlink()
    (tree / "dangling").symlink_to(tmp_path / "nope")
    with pytest.raises(ManifestError, match="dangling"):
        scan_dir(tree)


def test_scan_dir_missing_root(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not a directory"):
        scan_dir(tmp_path / "absent")


def test_manifest_sha256_is_the_documented_formula() -> None:
    entries = [FileEntry("b", 1, "1" * 64), FileEntry("a/x", 2, "2" * 64)]
    expected = hashlib.sha256(("a/x\0" + "2" * 64 + "\n" + "b\0" + "1" * 64 + "\n").encode()).hexdigest()
    assert manifest_sha256(entries) == expected
    assert manifest_sha256(reversed(entries)) == expected  # order-independent
    assert manifest_sha256([FileEntry("b", 1, "3" * 64), entries[1]]) != expected


def test_hash_cache_hits_persist_and_invalidate(tree: Path, tmp_path: Path) -> None:
    cache_path = tmp_path / "cache" / "hashes.json"
    first = HashCache(cache_path)
    before = scan_dir(tree, cache=first)
    first.save()
    assert first.misses == 3 and first.hits == 0

    second = HashCache(cache_path)  # a new process: loaded from disk
    assert scan_dir(tree, cache=second) == before
    assert (second.hits, second.misses) == (3, 0)

    # content change (mtime moves): re-hashed
    (tree / "a.json").write_text('{"x": 2}')
    changed = {e.path: e for e in scan_dir(tree, cache=second)}
    assert changed["a.json"].sha256 == _sha(b'{"x": 2}')
    assert second.misses == 1

    # same size and mtime but a new inode (cp -p style replacement): still caught
    target = tree / "b.bin"
    st = target.stat()
    replacement = tree / "b.tmp"
    replacement.write_bytes(b"\x02\x03" * 1000)
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, target)
    assert {e.path: e for e in scan_dir(tree, cache=second)}["b.bin"].sha256 == _sha(b"\x02\x03" * 1000)


def test_hash_cache_ignores_corrupt_file(tree: Path, tmp_path: Path) -> None:
    cache_path = tmp_path / "hashes.json"
    cache_path.write_text("not json")
    cache = HashCache(cache_path)
    assert len(scan_dir(tree, cache=cache)) == 3
    cache.save()
    assert json.loads(cache_path.read_text())["version"] == HashCache.VERSION


def test_diff_splits_send_and_unchanged() -> None:
    host = [FileEntry("same", 1, "a" * 64), FileEntry("changed", 2, "b" * 64), FileEntry("new", 3, "c" * 64)]
    remote = [FileEntry("same", 1, "a" * 64), FileEntry("changed", 2, "d" * 64), FileEntry("remote-only", 1, "e" * 64)]
    to_send, unchanged = diff(host, remote)
    assert [e.path for e in to_send] == ["changed", "new"]
    assert [e.path for e in unchanged] == ["same"]
    assert diff(host, []) == (sorted(host), [])


def test_manifest_roundtrip_and_validation(tree: Path) -> None:
    entries = scan_dir(tree)
    text = manifest_dumps(entries)
    assert manifest_loads(text) == entries
    assert manifest_dumps(manifest_loads(text)) == text  # canonical bytes

    doc = json.loads(text)
    doc["files"][0]["sha256"] = "f" * 64
    with pytest.raises(ManifestError, match="does not match"):
        manifest_loads(json.dumps(doc))
    for bad in ("../etc/passwd", "/abs", "a//b", "a\\b", "./a"):
        with pytest.raises(ManifestError, match="clean relative"):
            FileEntry.from_dict({"path": bad, "size": 1, "sha256": "0" * 64})
    with pytest.raises(ManifestError, match="invalid JSON"):
        manifest_loads("{")
