"""The fetched app and model files as a DVC output: ``<artifacts>/fetched/{model,app}/``.

Why: fetch.json alone (the manifest) does not let another host run the pipeline — it still needs the bytes, and
today it would download them again from the Hub. With the files in a DVC output of the fetch stage, ``dvc push`` to
a remote and ``dvc pull`` elsewhere give that host exactly the verified files (DVC checks its own md5s; push then
checks every file's sha256 on the device against fetch.json), and ``dvc repro`` there skips fetch: no Hub access.

The files are hard links to the fetched copies (the Hub cache, the content-addressed model cache), so a checkout
holds no second copy; a copy is made only across filesystems, and then re-hashed against the manifest.
fetch.json's ``local_dir`` is ``fetched/<kind>`` *relative to fetch.json's own directory*, so a pulled
fetch.json is valid in any checkout; :func:`local_dir` resolves it (absolute paths from older fetch.json as is).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

SUBDIR = "fetched"


class FetchedError(Exception):
    """A copied file does not match its manifest sha256 (the source changed under us)."""


def local_dir(entry: dict[str, Any], fetch_json: Path) -> Path:
    """Where an entry's files are on this host: ``local_dir`` relative to the fetch.json that names it."""
    return Path(fetch_json).parent / str(entry["local_dir"])


def resolved(fetch: dict[str, Any], fetch_json: Path) -> dict[str, Any]:
    """fetch.json with every entry's ``local_dir`` made absolute for this host (it is stored relative)."""
    return {k: ({**v, "local_dir": str(local_dir(v, fetch_json))} if isinstance(v, dict) and "local_dir" in v
                else v) for k, v in fetch.items()}


def export(entry: dict[str, Any], artifacts: Path, kind: str) -> dict[str, Any]:
    """Mirror the entry's files into ``<artifacts>/fetched/<kind>/`` and point the entry there (relative)."""
    dest = Path(artifacts) / SUBDIR / kind
    src = Path(entry["local_dir"])
    if src.resolve() != dest.resolve():
        _mirror(src, dest, entry["files"])
    return {**entry, "local_dir": f"{SUBDIR}/{kind}"}


def _mirror(src: Path, dest: Path, files: list[dict[str, Any]]) -> None:
    wanted = {f["path"] for f in files}
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(dest.rglob("*"), key=lambda q: len(q.parts), reverse=True):  # files first, then empty dirs
        rel = p.relative_to(dest).as_posix()
        if (p.is_file() or p.is_symlink()) and rel not in wanted:
            p.unlink()
        elif p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
            p.rmdir()
    for f in files:
        s, d = (src / f["path"]).resolve(), dest / f["path"]  # the Hub cache's snapshot symlink → its blob
        if d.is_file() and not d.is_symlink() and os.path.samefile(s, d):
            continue  # already this very file: mtime kept, hash caches stay warm
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = d.with_name(f".{d.name}.tmp-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        try:
            os.link(s, tmp)
        except OSError:
            shutil.copyfile(s, tmp)
        if not os.path.samefile(s, tmp) and _sha256(tmp) != f["sha256"]:  # a copy: check the bytes
            tmp.unlink()
            raise FetchedError(f"{s}: its bytes no longer match fetch.json's sha256 — re-run the fetch stage")
        os.replace(tmp, d)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mirror_dir(src: Path, out: Path) -> Path:
    """Make ``out`` hold exactly ``src``'s files (hard links, else copies), each replaced atomically; files that
    are already the same inode are left alone (mtimes stay, so host hash caches stay warm)."""
    out.mkdir(parents=True, exist_ok=True)
    names = {f.name for f in src.iterdir() if f.is_file()}
    for stale in out.iterdir():
        if stale.name not in names and stale.is_file():
            stale.unlink()
    for n in sorted(names):
        s, d = src / n, out / n
        if d.exists() and os.path.samefile(s, d):
            continue
        tmp = out / f".{n}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            os.link(s, tmp)
        except OSError:
            shutil.copyfile(s, tmp)
        os.replace(tmp, d)
    return out
