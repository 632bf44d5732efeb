"""Incremental, verified deploys of a host directory to a device directory over ADB.

Why it works the way it does:

- **Trust by stat, verify by hash.** The device dir holds ``.odeval-manifest.json`` (the shared manifest format of
  ``pipeline.fetch.manifest`` plus ``device_stat``: each file's on-device size, mtime and mode as ``stat -c`` printed
  them right after the file was verified). A run ``stat``s every wanted file in ONE shell command (plus a ``cat``
  of the manifest in the same command) and trusts a file whose sha256 the manifest records *and* whose
  size+mtime are unchanged since it was verified. That makes a no-op re-push one round trip per directory instead
  of re-hashing ~1 GB on the phone. The trade-off: a same-size in-place rewrite that also restores the mtime is not
  noticed; ``verify="full"`` (stage flag ``--verify full``) re-hashes every present file on the device instead.
- **Adopt before sending.** A file that is present with the right size but not trusted (no/old manifest, changed
  mtime, ``verify="full"``) is hashed on the device (one ``sha256sum`` for all of them) and kept if it matches:
  hashing on the phone is far cheaper than re-sending over USB, and it is how an interrupted push resumes (files
  verified and moved into place before the interruption are adopted, not sent again).
- **Atomic, verified files.** Each file is sent to ``.<name>.odeval-part`` in its final directory, hashed there
  with ``sha256sum`` and only then ``mv``-ed over its final name, so a final name never holds unverified bytes.
  The manifest itself is written the same way and LAST, after every file is verified.
- **Own only what the manifest lists.** Files the previous manifest owned and the host no longer has are removed;
  anything else in the directory is left alone.
- **Throughput.** adbutils' ``sync.push`` sends 4 KiB DATA chunks with ``socket.send`` (ignoring short writes);
  we speak the sync protocol on adbutils' transport ourselves: 64 KiB DATA messages (the protocol maximum), 16 per
  ``sendall`` from one reused buffer, one ``sync:`` session per directory. The device-side sha256 of file i runs
  (in a worker thread) while file i+1 is sent. ``mover="adb"`` uses the adb binary's ``push`` per file instead;
  ``benchmarks/push_incremental.py`` compares both with ``adb push`` of the whole dir. Measured on the virtual
  device (2 shared cores): both movers ~0.6x an unverified ``adb push`` for a 1 GB dir; the gap is the on-device
  sha256 (the virtual device's daemon CPU 1.27 s vs 0.57 s per GB) competing for the same host CPU. On a phone
  the hashing runs on the phone's CPU, overlapped with the USB transfer.

Every path on a device command line is quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import shlex
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.device.remote import (
    STAT_FMT,
    RemoteStat,
    TransferError,
    device_serial,
    device_shell,
    free_bytes,
    parse_stat_lines,
    probe_files,
    quoted,
    read_remote_manifest,
    sha256_on_device,
    stat_files,
)
from pipeline.device.sender import SyncSession, adb_push_file, sync_send
from pipeline.fetch.manifest import (
    MANIFEST_NAME,
    FileEntry,
    ManifestError,
    hash_file,
    manifest_sha256,
    manifest_to_dict,
)

log = logging.getLogger("odeval.push")


PART_SUFFIX = ".odeval-part"


VERIFY_MODES = ("stat", "full")


MOVERS = ("sync", "adb")


@dataclass
class PushResult:
    """What one :func:`push_dir` did (counts and bytes; ``seconds`` is wall time, not stored in push.json)."""

    remote_dir: str
    manifest_sha256: str
    files_sent: int = 0
    files_skipped: int = 0
    files_adopted: int = 0  # subset of skipped: present but untrusted, matched by sha256 on the device
    files_removed: int = 0
    bytes_sent: int = 0
    bytes_skipped: int = 0
    seconds: float = 0.0
    send_seconds: float = 0.0  # bytes on the wire (sync SEND … DONE/OKAY)
    verify_seconds: float = 0.0  # on-device sha256 + mv of sent files (overlapped with the next send)
    verify_wait_seconds: float = 0.0  # part of verify_seconds the sender waited for (not hidden behind a send)
    sent: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# naming
# ----------------------------------------------------------------------------------------------------------------
def commit7(commit: str) -> str:
    """7-char id for a dir name: a sha's first 7 hex chars; for ``builtin-<hex>``/``local-<hex>`` the hex part's
    first 7 (content-derived, so the dir stays stable across rebuilds); anything else: sha256 of it, 7 chars."""
    text = (commit or "").strip().lower()
    m = re.fullmatch(r"(?:[a-z]+-)?([0-9a-f]{7,})", text)
    if m:
        return m.group(1)[:7]
    return hashlib.sha256(text.encode()).hexdigest()[:7]


def _safe_name(name: str) -> str:
    """Keep the name readable (simple_app looks for "gemma" in it) but shell- and path-safe."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", name).strip("._") or "unnamed"
    return cleaned


def remote_dir_for(remote_root: str, kind: str, name: str, commit: str) -> str:
    """``<remote_root>/<kind>/<name>@<commit7>`` (kind is ``apps`` or ``models``)."""
    if kind not in ("apps", "models"):
        raise TransferError(f"remote kind {kind!r}: must be 'apps' or 'models' (a bug in the caller)")
    root = remote_root.rstrip("/") or "/"
    if not root.startswith("/"):
        raise TransferError(f"device.remote_root={remote_root!r}: must be an absolute device path, "
                            "e.g. /data/local/tmp/odeval")
    return posixpath.join(root, kind, f"{_safe_name(name)}@{commit7(commit)}")


# ----------------------------------------------------------------------------------------------------------------
# push_dir
# ----------------------------------------------------------------------------------------------------------------
def _part_name(final: str) -> str:
    head, tail = posixpath.split(final)
    return posixpath.join(head, f".{tail}{PART_SUFFIX}")


def _check_host(local_dir: Path, entries: Sequence[FileEntry]) -> None:
    """Cheap guard: the host files must still have the sizes the manifest (fetch.json) recorded."""
    for e in entries:
        p = local_dir / e.path
        try:
            size = p.stat().st_size
        except OSError:
            raise TransferError(f"{p}: listed in the host manifest but missing: re-run fetch") from None
        if size != e.size:
            raise TransferError(f"{p}: size {size} differs from the host manifest ({e.size}): re-run fetch")


def _mkdirs(dev: Any, remote_dir: str, rels: Iterable[str]) -> None:
    dirs = sorted({remote_dir} | {posixpath.dirname(posixpath.join(remote_dir, r)) for r in rels})
    res = device_shell(dev, f"mkdir -p {quoted(dirs)}", f"creating {remote_dir}")
    if res.returncode != 0:
        msg = res.output.strip().splitlines()[-1] if res.output.strip() else f"exit {res.returncode}"
        low = msg.lower()
        if "permission denied" in low or "read-only" in low:
            raise TransferError(f"device {device_serial(dev)}: permission denied creating {remote_dir} ({msg}): set "
                                "device.remote_root to a writable dir such as /data/local/tmp/odeval")
        raise TransferError(f"device {device_serial(dev)}: cannot create {remote_dir} ({msg}): "
                            "check device.remote_root")


def _precheck_space(dev: Any, remote_dir: str, need: int) -> None:
    avail = free_bytes(dev, remote_dir)
    if avail is None:
        log.warning("device %s: could not parse `df -k %s`; skipping the free-space precheck", device_serial(dev),
                    remote_dir)
        return
    if need > avail:
        raise TransferError(f"device {device_serial(dev)}: not enough space for {remote_dir}: need {need} bytes, "
                            f"{avail} bytes available: free space on the device and re-run push")


def _verify_and_place(dev: Any, part: str, final: str, expected: str, executable: bool,
                      local: Path) -> RemoteStat:
    """sha256 the part file on the device, then (only if it matches) chmod + mv over the final name + stat."""
    res = device_shell(dev, f"sha256sum {shlex.quote(part)}", f"verifying {part}")
    got = res.stdout.split(" ", 1)[0].strip().lower() if res.returncode == 0 else ""
    if got != expected:
        device_shell(dev, f"rm -f {shlex.quote(part)}", f"removing {part}")
        host_now = hash_file(local)
        if host_now != expected:
            raise TransferError(f"{local}: content changed since fetch (sha256 {host_now[:12]}… ≠ manifest "
                                f"{expected[:12]}…): re-run fetch, then push")
        raise TransferError(f"device {device_serial(dev)}: {final} failed verification after push (device sha256 "
                            f"{got[:12] or 'unreadable'}… ≠ {expected[:12]}…): re-run push; if it repeats, check "
                            "the cable/storage")
    chmod = f"chmod 755 {shlex.quote(part)} && " if executable else ""
    cmd = f"{chmod}mv {shlex.quote(part)} {shlex.quote(final)} && stat -c {shlex.quote(STAT_FMT)} {shlex.quote(final)}"
    res = device_shell(dev, cmd, f"moving {part} into place")
    st = parse_stat_lines(res.stdout, posixpath.dirname(final) + "/").get(posixpath.basename(final))
    if res.returncode != 0 or st is None:
        raise TransferError(f"device {device_serial(dev)}: cannot move {part} to {final} ({res.output.strip()[:200]}): "
                            "check permissions under device.remote_root and re-run push")
    return st


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm byte bar on stderr (disabled under --quiet/CI); returns an object with update() and close()."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not enabled,
                leave=False, mininterval=0.2)


def _manifest_doc(entries: Sequence[FileEntry], stats: dict[str, RemoteStat]) -> str:
    doc = manifest_to_dict(entries)
    doc["device_stat"] = {e.path: stats[e.path].to_dict() for e in sorted(entries, key=lambda x: x.path)}
    return json.dumps(doc, indent=1) + "\n"


def _write_manifest(dev: Any, remote_dir: str, text: str, tmp_dir: Path) -> None:
    """The manifest goes through the same temp-name + sha256 + mv path as any file (written last)."""
    data = text.encode()
    local = tmp_dir / MANIFEST_NAME
    local.write_bytes(data)
    final = posixpath.join(remote_dir, MANIFEST_NAME)
    part = _part_name(final)
    sync_send(dev, local, part, 0o644, int(time.time()), lambda _n: None)
    _verify_and_place(dev, part, final, hashlib.sha256(data).hexdigest(), False, local)


def _send_all(dev: Any, local_dir: Path, remote_dir: str, to_send: Sequence[FileEntry], execs: set[str],
              result: PushResult, final_stats: dict[str, RemoteStat], on_bytes: Callable[[int], None],
              mover: str = "sync") -> None:
    """Send files one by one; verify+mv file i on the device (worker thread) while file i+1 is being sent.

    Why overlap: the device-side sha256 of a big shard costs about as long as a second of sending; doing it in
    parallel keeps cold pushes near ``adb push`` speed. At most one verification is in flight, so a failure
    surfaces within one file, and an interrupted send still waits for the previous file to be verified and kept.
    """
    from concurrent.futures import Future, ThreadPoolExecutor

    def verify(e: FileEntry) -> None:
        final = posixpath.join(remote_dir, e.path)
        tv = time.monotonic()
        final_stats[e.path] = _verify_and_place(dev, _part_name(final), final, e.sha256, e.path in execs,
                                                local_dir / e.path)
        result.verify_seconds += time.monotonic() - tv
        result.files_sent += 1
        result.bytes_sent += e.size
        result.sent.append(e.path)

    pending: Future[None] | None = None
    session = SyncSession(dev)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="odeval-verify") as pool:
        try:
            for e in to_send:
                local = local_dir / e.path
                part = _part_name(posixpath.join(remote_dir, e.path))
                ts = time.monotonic()
                if mover == "adb":
                    adb_push_file(dev, local, part, on_bytes)
                else:
                    session.send(local, part, 0o755 if e.path in execs else 0o644, int(local.stat().st_mtime),
                                 on_bytes)
                result.send_seconds += time.monotonic() - ts
                if pending is not None:
                    _wait(pending, result)
                pending = pool.submit(verify, e)
            if pending is not None:
                _wait(pending, result)
        except TransferError as err:
            if pending is not None and not pending.done():
                try:  # keep what can still be verified before reporting the first error
                    pending.result()
                except TransferError:
                    pass
            raise TransferError(f"{err} [{result.files_sent} of {len(to_send)} files verified before the error]"
                                ) from None
        finally:
            session.close()


def _wait(pending: Any, result: PushResult) -> None:
    """Wait for the in-flight verification, counting the time it was not hidden behind a send."""
    tw = time.monotonic()
    pending.result()
    result.verify_wait_seconds += time.monotonic() - tw


def push_dir(
    dev: Any,
    local_dir: Path,
    remote_dir: str,
    entries: Sequence[FileEntry],
    *,
    executables: Iterable[str] = (),
    verify: str = "stat",
    mover: str = "sync",
    progress: bool = False,
    label: str | None = None,
) -> PushResult:
    """Make ``remote_dir`` on ``dev`` hold exactly the verified bytes of ``entries`` (files under ``local_dir``).

    ``entries`` is the host manifest (from fetch.json or :func:`pipeline.fetch.manifest.scan_dir`); ``executables`` are
    relative paths to ``chmod 755``; ``verify`` is ``"stat"`` (trust unchanged size+mtime, see module docstring) or
    ``"full"`` (re-hash every present file on the device). ``mover`` is ``"sync"`` (our 64 KiB sync client, one
    session per dir, byte-level progress) or ``"adb"`` (the adb binary's ``push`` per file).
    Raises :class:`TransferError` with a one-line message.
    """
    if verify not in VERIFY_MODES:
        raise TransferError(f"verify={verify!r}: choose one of {', '.join(VERIFY_MODES)}")
    if mover not in MOVERS:
        raise TransferError(f"mover={mover!r}: choose one of {', '.join(MOVERS)}")
    t0 = time.monotonic()
    local_dir = Path(local_dir)
    remote_dir = remote_dir.rstrip("/")
    entries = sorted(entries, key=lambda e: e.path)
    execs = set(executables)
    _check_host(local_dir, entries)
    rels = [e.path for e in entries]

    dev_stats, manifest_text = probe_files(dev, remote_dir, rels)
    old_entries, old_stats = read_remote_manifest(manifest_text, f"{device_serial(dev)}:{remote_dir}/{MANIFEST_NAME}")
    old_by_path = {e.path: e for e in old_entries}

    trusted: list[FileEntry] = []
    candidates: list[FileEntry] = []
    to_send: list[FileEntry] = []
    for e in entries:
        now = dev_stats.get(e.path)
        if now is None or now.size != e.size:
            to_send.append(e)
            continue
        before = old_stats.get(e.path)
        known = old_by_path.get(e.path)
        if (verify == "stat" and known is not None and known.sha256 == e.sha256 and known.size == e.size
                and before is not None and (before.size, before.mtime) == (now.size, now.mtime)):
            trusted.append(e)
        else:
            candidates.append(e)

    adopted: list[FileEntry] = []
    if candidates:
        hashes = sha256_on_device(dev, remote_dir, [e.path for e in candidates])
        for e in candidates:
            (adopted if hashes.get(e.path) == e.sha256 else to_send).append(e)

    final_stats: dict[str, RemoteStat] = {e.path: dev_stats[e.path] for e in trusted + adopted}

    # chmod the binary if it lost its exec bit while its bytes are fine
    fix_mode = [e.path for e in trusted + adopted if e.path in execs and final_stats[e.path].mode != "755"]
    if fix_mode:
        paths = [posixpath.join(remote_dir, r) for r in fix_mode]
        device_shell(dev, f"chmod 755 {quoted(paths)}", f"chmod 755 in {remote_dir}")
        final_stats.update(stat_files(dev, remote_dir, fix_mode))

    host_paths = set(rels)
    stale = [e.path for e in old_entries if e.path not in host_paths]

    result = PushResult(remote_dir=remote_dir, manifest_sha256=manifest_sha256(entries))
    result.files_skipped = len(trusted) + len(adopted)
    result.files_adopted = len(adopted)
    result.bytes_skipped = sum(e.size for e in trusted + adopted)

    if to_send:
        _mkdirs(dev, remote_dir, [e.path for e in to_send])
        _precheck_space(dev, remote_dir, sum(e.size for e in to_send))
        bar = _progress_bar(sum(e.size for e in to_send), label or posixpath.basename(remote_dir), progress)
        try:
            _send_all(dev, local_dir, remote_dir, to_send, execs, result, final_stats, bar.update, mover)
        finally:
            bar.close()

    if stale:
        stale_paths = [posixpath.join(remote_dir, r) for r in stale]
        device_shell(dev, f"rm -f {quoted(stale_paths)}", f"removing stale files in {remote_dir}")
        result.files_removed = len(stale)

    new_doc = _manifest_doc(entries, final_stats)
    if new_doc != manifest_text:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="odeval-push-") as tmp:
            if not to_send:
                _mkdirs(dev, remote_dir, [])
            _write_manifest(dev, remote_dir, new_doc, Path(tmp))
    result.seconds = time.monotonic() - t0
    return result


def host_entries(files: Sequence[dict[str, Any]], source: str) -> list[FileEntry]:
    """FileEntry list from a fetch.json entry's ``files`` (validated: these paths become device paths)."""
    try:
        return [FileEntry.from_dict(f, source=source) for f in files]
    except ManifestError as e:
        raise TransferError(f"{e}") from None


def device_manifest_path(remote_dir: str) -> str:
    """Where :func:`push_dir` keeps the manifest of ``remote_dir`` (for tests and tools)."""
    return posixpath.join(remote_dir.rstrip("/"), MANIFEST_NAME)


def is_part_file(name: str) -> bool:
    """True for our temp names (``.<name>.odeval-part``): never a final file."""
    return os.path.basename(name).startswith(".") and name.endswith(PART_SUFFIX)


def verify_on_device(dev: Any, remote_dir: str, entries: Sequence[FileEntry]) -> list[str]:
    """Re-hash every file of ``entries`` under ``remote_dir`` on the device; the problems found ([] = all match).

    Each problem names the file and what is wrong (missing, or both sha256 prefixes)."""
    hashes = sha256_on_device(dev, remote_dir, [e.path for e in entries])
    problems = []
    for e in entries:
        got = hashes.get(e.path)
        if got is None:
            problems.append(f"{e.path}: missing or unreadable")
        elif got != e.sha256:
            problems.append(f"{e.path}: sha256 {got[:12]}… on the device, {e.sha256[:12]}… in the manifest")
    return problems


def verify_dirs(dev: Any, dirs: Sequence[tuple[str, str, Sequence[FileEntry]]]) -> dict[str, Any]:
    """Re-hash every file of every ``(what, remote_dir, entries)`` on the device before it is used.

    Raises :class:`TransferError` naming the first files that differ and the fix; returns what was checked
    (``method``, ``files``, ``bytes``, ``seconds``) for the run's provenance."""
    t0 = time.monotonic()
    for what, remote_dir, entries in dirs:
        bad = verify_on_device(dev, remote_dir, entries)
        if bad:
            raise TransferError(f"the {what} files on device {device_serial(dev)} do not match the fetched manifest "
                                f"({'; '.join(bad[:3])}{' …' if len(bad) > 3 else ''}) — re-run push with "
                                "`device.push_verify=full` (`python -m pipeline.stages.push --verify full`), "
                                "then run")
    return {"method": "sha256", "files": sum(len(e) for _, _, e in dirs),
            "bytes": sum(f.size for _, _, e in dirs for f in e), "seconds": round(time.monotonic() - t0, 3)}


def push_stats(parts: dict[str, PushResult], verify: str) -> dict[str, Any]:
    """push_stats.json: files/bytes sent and skipped, wall ``seconds``, ``send_seconds`` and ``mb_per_s`` (null when
    nothing was sent), per dir too. Timings live here, never in push.json (``run`` depends on push.json)."""
    sent = sum(r.bytes_sent for r in parts.values())
    seconds = sum(r.seconds for r in parts.values())
    send_seconds = sum(r.send_seconds for r in parts.values())
    return {
        "files_sent": sum(r.files_sent for r in parts.values()),
        "files_skipped": sum(r.files_skipped for r in parts.values()),
        "files_adopted": sum(r.files_adopted for r in parts.values()),
        "files_removed": sum(r.files_removed for r in parts.values()),
        "bytes_sent": sent,
        "bytes_skipped": sum(r.bytes_skipped for r in parts.values()),
        "seconds": round(seconds, 3),
        "send_seconds": round(send_seconds, 3),
        "mb_per_s": round(sent / 1e6 / send_seconds, 1) if sent and send_seconds > 0 else None,
        "verify": verify,
        "per_dir": {k: {"remote_dir": r.remote_dir, "files_sent": r.files_sent, "files_skipped": r.files_skipped,
                        "bytes_sent": r.bytes_sent, "bytes_skipped": r.bytes_skipped, "seconds": round(r.seconds, 3)}
                    for k, r in parts.items()},
    }
