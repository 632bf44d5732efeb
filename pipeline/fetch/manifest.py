"""The one manifest format shared by fetch (host dirs) and push (device dirs).

A manifest is a sorted list of ``FileEntry(path, size, sha256)``: ``path`` is POSIX and relative to the
directory it describes. Fetch records it in ``artifacts/fetch.json``; push writes it on the device as
``.odeval-manifest.json`` and diffs the host manifest against it so only changed files travel.

Hashing a ~1 GB model dir costs seconds, and every ``dvc repro`` re-scans it, so :class:`HashCache` remembers
sha256 per (absolute path, size, mtime_ns, inode) in a JSON file: a re-scan of an unchanged dir only ``stat``s.

Symlink policy of :func:`scan_dir` (chosen, documented):

- a symlink to a *file* is followed wherever it points and recorded under the link's own path (the Hugging Face
  cache lays snapshots out as ``snapshots/<sha>/f -> ../../blobs/<etag>``, so refusing links that leave the root
  would make every cached snapshot unscannable); the content hashed is the target's;
- a symlink to a *directory* is followed only when it resolves inside ``root`` (no cycles, no walking into
  unrelated trees); one that leaves ``root`` is an error;
- a dangling symlink is an error (a manifest must describe bytes that exist).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST_NAME = ".odeval-manifest.json"
MANIFEST_VERSION = 1
_CHUNK = 1 << 20


class ManifestError(Exception):
    """A manifest or a scanned directory is unusable; the message names the file and the fix."""


@dataclass(frozen=True, order=True)
class FileEntry:
    """One file of a manifest. ``path`` is POSIX, relative, without ``..`` (it becomes a device path in push)."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the fetch.json order (``path``, ``size``, ``sha256``) for JSON artifacts."""
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "manifest") -> FileEntry:
        """Validate one entry read from JSON: a bad path here could later escape the device dir in push."""
        try:
            path, size, sha = data["path"], data["size"], data["sha256"]
        except (KeyError, TypeError):
            raise ManifestError(f"{source}: entry {data!r} lacks path/size/sha256: regenerate the manifest") from None
        check_relpath(path, source=source)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ManifestError(f"{source}: entry {path!r} has invalid size {size!r}: regenerate the manifest")
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise ManifestError(f"{source}: entry {path!r} has invalid sha256 {sha!r}: regenerate the manifest")
        return cls(path=path, size=size, sha256=sha)


def check_relpath(path: str, *, source: str = "manifest") -> str:
    """Reject absolute, empty, backslash or ``..`` paths: manifests drive file writes on host and device."""
    if (
        not isinstance(path, str)
        or not path
        or "\\" in path
        or "\0" in path
        or "\n" in path
        or PurePosixPath(path).is_absolute()
        or any(part in ("..", ".", "") for part in path.split("/"))
    ):
        raise ManifestError(f"{source}: path {path!r} is not a clean relative POSIX path: regenerate the manifest")
    return path


def hash_file(path: Path | str) -> str:
    """sha256 hex digest of a file's bytes (follows symlinks), read in 1 MiB chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def git_blob_sha1(path: Path | str) -> str:
    """Git blob id (``sha1("blob <size>\\0" + bytes)``): the Hub's id for non-LFS files, used to verify them."""
    size = os.stat(path).st_size
    digest = hashlib.sha1(f"blob {size}\0".encode(), usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_sha256(entries: Iterable[FileEntry]) -> str:
    """Identity of a whole manifest: sha256 over ``f"{path}\\0{sha256}\\n"`` lines sorted by path (UTF-8).

    Sizes are left out because the sha256 already fixes them; the NUL separator cannot occur in a path, so
    two different manifests cannot produce the same byte stream.
    """
    digest = hashlib.sha256()
    for entry in sorted(entries, key=lambda e: e.path):
        digest.update(f"{entry.path}\0{entry.sha256}\n".encode())
    return digest.hexdigest()


def default_hash_cache_path() -> Path:
    """``$ODEVAL_HASH_CACHE``, else ``$ODEVAL_CACHE/hashes.json``, else ``~/.cache/odeval/hashes.json``."""
    explicit = os.environ.get("ODEVAL_HASH_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    from pipeline.workspace import cache_home

    return cache_home() / "hashes.json"


class HashCache:
    """sha256 per (absolute path, size, mtime_ns, inode), persisted as JSON so a big dir is hashed once.

    Why inode too: ``cp -p``/``rsync -t`` can replace a file keeping size and mtime; the new inode catches it.
    ``save()`` merges with what other processes wrote meanwhile under a file lock (parallel sweep jobs share it).
    A corrupt cache file is ignored (it is only a cache) rather than failing the stage.
    """

    VERSION = 1

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_hash_cache_path()
        self._entries: dict[str, dict[str, Any]] = self._read()
        self._dirty: dict[str, dict[str, Any]] = {}
        self.hits = 0
        self.misses = 0

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("version") != self.VERSION or not isinstance(data.get("files"), dict):
            return {}
        return data["files"]

    @staticmethod
    def _key(path: Path) -> tuple[str, os.stat_result]:
        real = os.path.realpath(path)
        return real, os.stat(real)

    def sha256(self, path: Path | str) -> str:
        """Cached sha256 of ``path`` (symlinks resolved), hashing only when size/mtime/inode changed."""
        real, st = self._key(Path(path))
        rec = self._entries.get(real)
        if rec and (rec.get("size"), rec.get("mtime_ns"), rec.get("ino")) == (st.st_size, st.st_mtime_ns, st.st_ino):
            self.hits += 1
            return rec["sha256"]
        self.misses += 1
        sha = hash_file(real)
        st_after = os.stat(real)
        rec = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "sha256": sha}
        if (st_after.st_size, st_after.st_mtime_ns) == (st.st_size, st.st_mtime_ns):  # not modified while hashing
            self._entries[real] = rec
            self._dirty[real] = rec
        return sha

    def save(self) -> None:
        """Atomically write the cache (merged with concurrent writers); no-op when nothing new was hashed."""
        if not self._dirty:
            return
        from filelock import FileLock  # lazy: only needed when writing

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            merged = self._read()
            merged.update(self._dirty)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".hashes.", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump({"version": self.VERSION, "files": merged}, fh, separators=(",", ":"))
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        self._entries = merged
        self._dirty = {}


def _excluded(rel: str, patterns: Sequence[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def _walk(root: Path, exclude: Sequence[str]) -> Iterable[tuple[str, Path]]:
    """Yield (relative posix path, absolute path) of regular files under root, applying the symlink policy."""
    root_real = Path(os.path.realpath(root))
    stack: list[tuple[Path, str]] = [(root, "")]
    seen_dirs = {str(root_real)}
    while stack:
        current, prefix = stack.pop()
        with os.scandir(current) as it:
            for dent in it:
                rel = f"{prefix}{dent.name}"
                if _excluded(rel, exclude):
                    continue
                full = Path(dent.path)
                if dent.is_symlink():
                    target = Path(os.path.realpath(full))
                    if not target.exists():
                        raise ManifestError(f"{full}: dangling symlink: remove it or restore its target")
                    if target.is_dir():
                        if not target.is_relative_to(root_real):
                            raise ManifestError(
                                f"{full}: symlinked directory leaves {root}: copy it into the dir or remove the link"
                            )
                        if str(target) not in seen_dirs:
                            seen_dirs.add(str(target))
                            stack.append((full, rel + "/"))
                        continue
                    if target.is_file():
                        yield rel, full
                    continue
                if dent.is_dir(follow_symlinks=False):
                    stack.append((full, rel + "/"))
                elif dent.is_file(follow_symlinks=False):
                    yield rel, full
                # sockets, fifos, devices: not model files, skipped


def scan_dir(
    root: Path | str,
    *,
    cache: HashCache | None = None,
    exclude: Sequence[str] = (MANIFEST_NAME,),
) -> list[FileEntry]:
    """Manifest of every regular file under ``root`` (sorted by path; symlink policy in the module docstring).

    ``exclude`` holds fnmatch patterns matched against the relative path and the basename (a matching directory
    is pruned). With ``cache`` the sha256 of unchanged files comes from the cache; call ``cache.save()`` after.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a directory: check the path (did fetch/build run?)")
    entries = []
    for rel, full in _walk(root, tuple(exclude)):
        check_relpath(rel, source=str(root))
        sha = cache.sha256(full) if cache is not None else hash_file(full)
        entries.append(FileEntry(path=rel, size=os.stat(full).st_size, sha256=sha))
    entries.sort(key=lambda e: e.path)
    return entries


def diff(host: Iterable[FileEntry], remote: Iterable[FileEntry]) -> tuple[list[FileEntry], list[FileEntry]]:
    """Split the host manifest into (to_send, unchanged) against the remote one.

    A file is unchanged only if the remote has the same path with the same sha256 and size; everything else
    (missing, different content) is sent. Remote-only files are not reported: push deletes nothing it doesn't own.
    """
    remote_by_path = {e.path: e for e in remote}
    to_send: list[FileEntry] = []
    unchanged: list[FileEntry] = []
    for entry in sorted(host, key=lambda e: e.path):
        other = remote_by_path.get(entry.path)
        same = other is not None and other.sha256 == entry.sha256 and other.size == entry.size
        (unchanged if same else to_send).append(entry)
    return to_send, unchanged


def manifest_to_dict(entries: Iterable[FileEntry]) -> dict[str, Any]:
    """The on-disk/on-device manifest document (``.odeval-manifest.json``)."""
    files = sorted(entries, key=lambda e: e.path)
    return {
        "version": MANIFEST_VERSION,
        "manifest_sha256": manifest_sha256(files),
        "files": [e.to_dict() for e in files],
    }


def manifest_from_dict(data: Any, *, source: str = "manifest") -> list[FileEntry]:
    """Parse and validate a manifest document; a mismatched ``manifest_sha256`` means it was edited or torn."""
    if not isinstance(data, dict) or data.get("version") != MANIFEST_VERSION or not isinstance(data.get("files"), list):
        raise ManifestError(f"{source}: not an odeval manifest v{MANIFEST_VERSION}: delete it so it is regenerated")
    entries = sorted((FileEntry.from_dict(d, source=source) for d in data["files"]), key=lambda e: e.path)
    paths = [e.path for e in entries]
    if len(set(paths)) != len(paths):
        raise ManifestError(f"{source}: duplicate paths in manifest: delete it so it is regenerated")
    if "manifest_sha256" in data and data["manifest_sha256"] != manifest_sha256(entries):
        raise ManifestError(f"{source}: manifest_sha256 does not match its files: delete it so it is regenerated")
    return entries


def manifest_dumps(entries: Iterable[FileEntry]) -> str:
    """Canonical JSON text (sorted, 1-space indent, trailing newline) so equal manifests are equal bytes."""
    return json.dumps(manifest_to_dict(entries), indent=1, sort_keys=False) + "\n"


def manifest_loads(text: str, *, source: str = "manifest") -> list[FileEntry]:
    """Inverse of :func:`manifest_dumps` with validation; invalid JSON is a :class:`ManifestError`."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        msg = f"{source}: invalid JSON ({err.msg} at line {err.lineno}): delete it so it is regenerated"
        raise ManifestError(msg) from None
    return manifest_from_dict(data, source=source)
