"""What the device holds, asked over adb: stat lines and sha256 of pushed files, the remote manifest, free space.
Every command line quotes its device paths (``shlex.quote``), in batches under old adbd's line limit; every failure
becomes one :class:`TransferError` line naming the device and what to do.
"""

from __future__ import annotations

import json
import logging
import shlex
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.fetch.manifest import (
    MANIFEST_NAME,
    FileEntry,
    ManifestError,
    manifest_from_dict,
)

log = logging.getLogger("odeval.push")
STAT_FMT = "%s %Y %a %n"


_SEP = "---odeval-manifest---"


_MAX_ARGS_CHARS = 32_000  # keep each device command line well under old adbd limits


IO_TIMEOUT_S = 120.0  # a sync socket with no progress for this long is treated as a dead device


class TransferError(Exception):
    """A push that cannot complete; the message is one line naming the device/file and what to do."""


# ----------------------------------------------------------------------------------------------------------------
# device calls with one-line errors
# ----------------------------------------------------------------------------------------------------------------
def device_serial(dev: Any) -> str:
    return str(getattr(dev, "serial", None) or "?")


def explain_error(dev: Any, err: BaseException, doing: str) -> TransferError:
    """Map adb/socket failures to one line with the fix (unauthorized, offline, gone)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    low = text.lower()
    serial = device_serial(dev)
    if "unauthorized" in low:
        return TransferError(f"device {serial} is unauthorized while {doing}: unlock the phone and accept the "
                             "'Allow USB debugging' prompt, then re-run push")
    if "offline" in low:
        return TransferError(f"device {serial} went offline while {doing}: verified files are kept; reconnect it "
                             "(virtual device: it reconnects by itself in a few seconds) and re-run push")
    if isinstance(err, (EOFError, ConnectionError)) or "connection closed" in low:
        return TransferError(f"device {serial} disconnected while {doing}: verified files are kept; reconnect it "
                             "(virtual device: it reconnects by itself) and re-run push to continue")
    if "not found" in low and "device" in low:
        return TransferError(f"device {serial} is gone while {doing}: verified files are kept; reconnect it "
                             "(`adb devices` must list it) and re-run push")
    return TransferError(f"device {serial} connection lost while {doing} ({text}): verified files are kept; "
                         "check `adb devices` and re-run push to continue")


@contextmanager
def device_io(dev: Any, doing: str) -> Iterator[None]:
    """Turn AdbError/OSError/EOFError raised inside into a :class:`TransferError` naming what was going on."""
    from adbutils import AdbError

    try:
        yield
    except TransferError:
        raise
    except (AdbError, OSError, EOFError) as e:
        raise explain_error(dev, e, doing) from None


def device_shell(dev: Any, cmd: str, doing: str, timeout: float = IO_TIMEOUT_S) -> Any:
    """Run one device shell command (protocol v2 when available: separate stderr and a real exit code)."""
    with device_io(dev, doing):
        return dev.shell2(cmd, timeout=timeout, v2=True)


def quoted(paths: Iterable[str]) -> str:
    return " ".join(shlex.quote(p) for p in paths)


def _batches(paths: Sequence[str]) -> Iterator[list[str]]:
    """Split long argument lists so one command line stays short enough for any adbd."""
    batch: list[str] = []
    size = 0
    for p in paths:
        n = len(shlex.quote(p)) + 1
        if batch and size + n > _MAX_ARGS_CHARS:
            yield batch
            batch, size = [], 0
        batch.append(p)
        size += n
    if batch:
        yield batch


# ----------------------------------------------------------------------------------------------------------------
# remote state: stat + manifest in one round trip
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RemoteStat:
    size: int
    mtime: int
    mode: str

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "mtime": self.mtime, "mode": self.mode}


def parse_stat_lines(text: str, prefix: str) -> dict[str, RemoteStat]:
    """``size mtime mode /remote_dir/rel`` lines → {rel: stat}; other lines (errors, noise) are ignored."""
    out: dict[str, RemoteStat] = {}
    for line in text.splitlines():
        parts = line.split(" ", 3)
        if len(parts) != 4 or not parts[3].startswith(prefix):
            continue
        try:
            out[parts[3][len(prefix):]] = RemoteStat(int(parts[0]), int(parts[1]), parts[2])
        except ValueError:
            continue
    return out


def stat_files(dev: Any, remote_dir: str, rels: Sequence[str]) -> dict[str, RemoteStat]:
    """``stat -c`` of the given files (missing ones are simply absent from the result)."""
    prefix = remote_dir + "/"
    found: dict[str, RemoteStat] = {}
    for batch in _batches([prefix + r for r in rels]):
        res = device_shell(dev, f"stat -c {shlex.quote(STAT_FMT)} {quoted(batch)}", f"stat-ing files in {remote_dir}")
        found.update(parse_stat_lines(res.stdout, prefix))
    return found


def probe_files(dev: Any, remote_dir: str, rels: Sequence[str]) -> tuple[dict[str, RemoteStat], str | None]:
    """One shell command: ``stat`` every wanted file, a separator, ``cat`` the manifest. Falls back to batches
    when the list is too long for one command line."""
    prefix = remote_dir + "/"
    paths = [prefix + r for r in rels]
    manifest = prefix + MANIFEST_NAME
    args = quoted(paths)
    if len(args) > _MAX_ARGS_CHARS:
        stats = stat_files(dev, remote_dir, rels)
        res = device_shell(dev, f"cat {shlex.quote(manifest)}", f"reading {manifest}")
        return stats, (res.stdout if res.returncode == 0 else None)
    stat_cmd = f"stat -c {shlex.quote(STAT_FMT)} {args}; " if paths else ""
    res = device_shell(dev, f"{stat_cmd}echo {_SEP}; cat {shlex.quote(manifest)}", f"checking {remote_dir}")
    head, sep, tail = res.stdout.partition(_SEP + "\n")
    if not sep:
        raise TransferError(f"device {device_serial(dev)}: unexpected reply to stat/cat in {remote_dir} "
                            f"({res.output.strip()[:200]!r}): does the device shell have toybox `stat -c`?")
    # `cat` failing (no manifest yet) makes the command's status non-zero; an empty tail is the same thing.
    return parse_stat_lines(head, prefix), (tail if tail.strip() else None)


def read_remote_manifest(text: str | None, where: str) -> tuple[list[FileEntry], dict[str, RemoteStat]]:
    """Parse the device manifest; an unreadable one is ignored (its files are then re-hashed, never trusted)."""
    if text is None:
        return [], {}
    try:
        data = json.loads(text)
        entries = manifest_from_dict(data, source=where)
        raw = data.get("device_stat") or {}
        stats = {k: RemoteStat(int(v["size"]), int(v["mtime"]), str(v.get("mode", ""))) for k, v in raw.items()}
    except (ValueError, ManifestError, KeyError, TypeError, AttributeError) as e:
        log.warning("%s: ignoring unreadable device manifest (%s); present files will be re-hashed", where, e)
        return [], {}
    return entries, stats


def sha256_on_device(dev: Any, remote_dir: str, rels: Sequence[str]) -> dict[str, str]:
    """sha256 of device files (one ``sha256sum`` per batch); unreadable ones are absent from the result."""
    prefix = remote_dir + "/"
    out: dict[str, str] = {}
    for batch in _batches([prefix + r for r in rels]):
        res = device_shell(dev, f"sha256sum {quoted(batch)}", f"hashing files in {remote_dir}")
        for line in res.stdout.splitlines():
            digest, _, path = line.partition("  ")
            if len(digest) == 64 and path.startswith(prefix):
                out[path[len(prefix):]] = digest.lower()
    return out


def free_bytes(dev: Any, remote_path: str) -> int | None:
    """Available bytes on the filesystem holding ``remote_path`` from ``df -k`` (None when unparseable)."""
    res = device_shell(dev, f"df -k {shlex.quote(remote_path)}", f"checking free space at {remote_path}")
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    if res.returncode != 0 or len(lines) < 2:
        return None
    cols = " ".join(lines[1:]).split()  # a long filesystem name may wrap onto its own line
    try:
        return int(cols[3]) * 1024
    except (IndexError, ValueError):
        return None
