"""Verified, pinned downloads from the Hugging Face Hub (the fetch stage's domain module).

Why not just ``snapshot_download(revision="main")``: with huggingface_hub 2.4 its first metadata call
(``repo_info``) and its tree listing are sent with *no* timeout, so a server that accepts and never answers hangs
the stage forever (measured; ``etag_timeout`` only covers the per-file HEAD). So this module

1. resolves a branch/tag to a commit itself (``model_info(..., timeout=)``) and records ``refs/<branch>`` in the
   hub cache so offline runs can find it again;
2. lists the commit's files itself with the same timeout (following ``Link`` pagination) and stores the list in
   the hub's own per-commit tree cache (``trees/<sha>.json``), which ``snapshot_download`` then reuses;
3. checks every ``allow_patterns`` entry matches something (a typo would otherwise download nothing, silently);
4. calls ``snapshot_download(revision=<sha>)`` only if a requested file is missing: a complete cached commit costs
   zero requests (pinned sha) or one (branch resolution);
5. sha256s every file (through :class:`~pipeline.fetch.manifest.HashCache`, so re-runs only ``stat``) and verifies it
   against the Hub's checksums: the LFS sha256, or the git blob sha1 for small files.

The token is never handled here: huggingface_hub reads ``HF_TOKEN``/the login itself (``build_hf_headers``);
messages are scrubbed of it anyway. Offline (``offline=True``, ``HF_HUB_OFFLINE=1``) or with the endpoint
unreachable, the cache is used when complete for that commit and patterns, else the error lists what is missing.

Relies on huggingface_hub 2.4 internals in one place: ``huggingface_hub._tree_cache`` (read/write of the
per-commit tree listing, which carries the LFS sha256 that the public ``get_cached_repo_tree`` drops).
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pipeline.fetch.hub_errors import NET_FIX, HubError, map_error, show_endpoint
from pipeline.fetch.manifest import (
    MANIFEST_NAME,
    FileEntry,
    HashCache,
    ManifestError,
    git_blob_sha1,
    manifest_sha256,
    scan_dir,
)

log = logging.getLogger(__name__)


_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


_TRUE = {"1", "on", "yes", "true"}


LOCAL_EXCLUDE = (MANIFEST_NAME, ".git", ".cache/huggingface")


def _env_true(name: str) -> bool:
    return (os.environ.get(name) or "").strip().lower() in _TRUE


@dataclass(frozen=True)
class Ctx:
    """Everything one fetch needs, resolved once (paths from the hub's own cache layout)."""

    repo_id: str
    revision: str
    patterns: list[str] | None
    endpoint: str
    timeout: float
    storage: Path  # <HF_HUB_CACHE>/models--org--name
    local_dir: Path | None
    config_key: str
    progress: bool
    cache: HashCache

    @property
    def tree_folder(self) -> Path:
        return self.local_dir / ".cache" / "huggingface" if self.local_dir else self.storage

    def base_dir(self, commit: str) -> Path:
        return self.local_dir if self.local_dir else self.storage / "snapshots" / commit

    @property
    def what(self) -> str:
        return f"{self.config_key} {self.repo_id}@{self.revision}"

    @property
    def shown(self) -> str:
        return show_endpoint(self.endpoint)


def fetch_snapshot(
    repo_id: str,
    revision: str,
    *,
    allow_patterns: list[str] | None,
    local_dir: Path | None = None,
    endpoint: str | None = None,
    timeout: float = 10.0,
    offline: bool = False,
    progress: bool = True,
    source: str = "hub",
    config_key: str = "model",
    hash_cache: HashCache | None = None,
) -> dict[str, Any]:
    """Download (or reuse) ``repo_id`` at ``revision`` and return the verified fetch.json entry.

    ``config_key`` only words the messages (``model`` or ``app``); ``hash_cache`` defaults to
    :func:`~pipeline.fetch.manifest.default_hash_cache_path`. Raises :class:`HubError` (one line, with the fix).
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if not repo_id or not isinstance(repo_id, str) or repo_id.count("/") > 1 or repo_id.strip("/") != repo_id:
        raise HubError(f"{config_key}.repo_id {repo_id!r} is not a Hub repo id: use 'org/name'", kind="invalid")
    if not revision:
        raise HubError(f"{config_key}.revision is empty: pin a commit sha (or a branch/tag)", kind="invalid")
    if timeout <= 0:
        raise HubError(f"timeout {timeout!r} must be > 0 seconds", kind="invalid")
    ep = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    ctx = Ctx(
        repo_id=repo_id,
        revision=revision,
        patterns=list(allow_patterns) if allow_patterns else None,
        endpoint=ep,
        timeout=float(timeout),
        storage=Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model"),
        local_dir=Path(local_dir).expanduser().resolve() if local_dir else None,
        config_key=config_key,
        progress=progress,
        cache=hash_cache if hash_cache is not None else HashCache(),
    )
    pinned = bool(_COMMIT_RE.fullmatch(revision))
    if offline or _env_true("HF_HUB_OFFLINE") or constants.HF_HUB_OFFLINE:
        return _from_cache(
            ctx, source, reason="offline mode", fix="run fetch once online (HF_HUB_OFFLINE unset)", kind="not_cached"
        )
    if pinned:
        listing = _read_listing(ctx, revision)
        if listing is not None:
            expected = _select(ctx, listing)
            if not _missing(ctx, revision, expected):
                log.info("%s: complete in cache, no request made", ctx.what)
                return _result(ctx, source, revision, expected, listing)
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    try:
        commit = revision if pinned else _resolve(ctx)
        listing = _read_listing(ctx, commit) or _fetch_listing(ctx, commit)
    except httpx2.TimeoutException:
        reason = f"endpoint {ctx.shown} did not answer within {timeout:g}s"
        return _from_cache(ctx, source, reason=reason, fix=NET_FIX, kind="timeout")
    except (httpx2.TransportError, ConnectionError) as err:
        reason = f"endpoint {ctx.shown} unreachable ({type(err).__name__})"
        return _from_cache(ctx, source, reason=reason, fix=NET_FIX, kind="unreachable")
    except HfHubHTTPError as err:
        raise map_error(ctx, err) from None
    if not pinned:
        _write_ref(ctx.storage, revision, commit)
    expected = _select(ctx, listing)
    if _missing(ctx, commit, expected):
        _download(ctx, commit)
    return _result(ctx, source, commit, expected, listing)


def _resolve(ctx: Ctx) -> str:
    """Branch/tag -> commit sha with a timeout (the hub's own ``repo_info`` call has none)."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=ctx.endpoint).model_info(ctx.repo_id, revision=ctx.revision, timeout=ctx.timeout)
    if not info.sha or not _COMMIT_RE.fullmatch(info.sha):
        raise HubError(f"{ctx.what}: {ctx.shown} returned no commit sha: is it a Hub endpoint?", kind="http")
    log.info("%s resolved to commit %s", ctx.what, info.sha)
    return info.sha


def _read_listing(ctx: Ctx, commit: str) -> dict[str, Any] | None:
    from huggingface_hub._tree_cache import read_tree_cache

    return read_tree_cache(str(ctx.tree_folder), commit)


def _fetch_listing(ctx: Ctx, commit: str) -> dict[str, Any]:
    """GET the recursive tree of ``commit`` (timed, paginated) and store it in the hub's tree cache."""
    from huggingface_hub._tree_cache import TreeCacheEntry, write_tree_cache
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    url: str | None = f"{ctx.endpoint}/api/models/{ctx.repo_id}/tree/{quote(commit, safe='')}"
    params: dict[str, Any] | None = {"recursive": True, "expand": False}
    headers = build_hf_headers()  # token (if any) comes from HF_TOKEN / the login, via the hub
    origin = urlsplit(ctx.endpoint)[:2]
    entries: dict[str, Any] = {}
    while url:
        if urlsplit(url)[:2] != origin:
            raise HubError(f"{ctx.what}: tree pagination left {ctx.shown}: refusing to follow", kind="http")
        resp = get_session().get(url, params=params, headers=headers, timeout=ctx.timeout)
        hf_raise_for_status(resp)
        for item in resp.json():
            if item.get("type") != "file":
                continue
            lfs = item.get("lfs") or {}
            entries[item["path"]] = TreeCacheEntry(
                size=int(item["size"]),
                blob_id=item["oid"],
                lfs_sha256=lfs.get("oid"),
                lfs_size=lfs.get("size"),
                xet_hash=item.get("xetHash"),
            )
        url, params = resp.links.get("next", {}).get("url"), None
    write_tree_cache(str(ctx.tree_folder), commit, entries)
    return entries


def _select(ctx: Ctx, listing: dict[str, Any]) -> list[str]:
    """Files of the commit matching ``allow_patterns`` (hub semantics); any pattern matching nothing is an error."""
    from huggingface_hub.utils import filter_repo_objects

    paths = sorted(listing)
    if ctx.patterns is None:
        selected = paths
    else:
        unmatched = [p for p in ctx.patterns if not list(filter_repo_objects(paths, allow_patterns=[p]))]
        if unmatched:
            sample = ", ".join(paths[:8]) + (" …" if len(paths) > 8 else "")
            raise HubError(
                f"{ctx.what}: allow_patterns {unmatched} match no file in the repo (files: {sample}): "
                f"fix {ctx.config_key}.allow_patterns",
                kind="patterns",
            )
        selected = sorted(filter_repo_objects(paths, allow_patterns=ctx.patterns))
    if not selected:
        raise HubError(f"{ctx.what}: the repo has no files at this revision: check {ctx.config_key}", kind="patterns")
    return selected


def _missing(ctx: Ctx, commit: str, expected: list[str]) -> list[str]:
    base = ctx.base_dir(commit)
    return [p for p in expected if not (base / p).is_file()]


def _from_cache(ctx: Ctx, source: str, *, reason: str, fix: str, kind: str) -> dict[str, Any]:
    """Serve the fetch from the cache alone, or say exactly what is missing (``kind`` when nothing is cached)."""
    pinned = bool(_COMMIT_RE.fullmatch(ctx.revision))
    commit = ctx.revision if pinned else _read_ref(ctx.storage, ctx.revision)
    if commit is None:
        raise HubError(
            f"{ctx.what}: {reason}, and revision {ctx.revision!r} was never fetched into {ctx.storage}: {fix}",
            kind=kind,
        )
    listing = _read_listing(ctx, commit)
    if listing is None:
        raise HubError(f"{ctx.what}: {reason}, and commit {commit[:12]} has no cached file list: {fix}", kind=kind)
    expected = _select(ctx, listing)
    missing = _missing(ctx, commit, expected)
    if missing:
        shown = ", ".join(missing[:10]) + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
        raise HubError(
            f"{ctx.what}: {reason}, and the cached snapshot of commit {commit[:12]} is incomplete, "
            f"missing {len(missing)} file(s): {shown}: {fix}",
            kind="incomplete",
            missing=missing,
        )
    log.warning("%s: %s; using the complete cached commit %s", ctx.what, reason, commit)
    return _result(ctx, source, commit, expected, listing)


def _read_ref(storage: Path, revision: str) -> str | None:
    try:
        sha = (storage / "refs" / revision).read_text().strip()
    except OSError:
        return None
    return sha if _COMMIT_RE.fullmatch(sha) else None


def _write_ref(storage: Path, revision: str, commit: str) -> None:
    """Record branch -> commit the way the hub does (``refs/<name>``), atomically, so offline runs resolve it."""
    ref = storage / "refs" / revision
    if _read_ref(storage, revision) == commit:
        return
    ref.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=ref.parent, prefix=".ref.")
    with os.fdopen(fd, "w") as fh:
        fh.write(commit)
    os.replace(tmp, ref)


def _quiet_tqdm() -> type:
    """A disabled subclass of the hub's tqdm (``progress=False`` or ``CI=true``); built lazily to keep imports cheap."""
    from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

    class QuietTqdm(hf_tqdm):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return QuietTqdm


def _download(ctx: Ctx, commit: str) -> None:
    """``snapshot_download`` by commit sha: its tree listing is already cached, HEADs use ``etag_timeout``."""
    import httpx2
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        snapshot_download(
            ctx.repo_id,
            revision=commit,
            allow_patterns=ctx.patterns,
            local_dir=str(ctx.local_dir) if ctx.local_dir else None,
            cache_dir=constants.HF_HUB_CACHE,
            endpoint=ctx.endpoint,
            etag_timeout=ctx.timeout,
            tqdm_class=None if ctx.progress else _quiet_tqdm(),
        )
    except httpx2.TimeoutException:
        raise HubError(
            f"{ctx.what}: endpoint {ctx.shown} stopped answering during the download (>{ctx.timeout:g}s): "
            "re-run fetch to resume",
            kind="timeout",
        ) from None
    except (httpx2.TransportError, ConnectionError) as err:
        raise HubError(
            f"{ctx.what}: connection to {ctx.shown} lost during the download ({type(err).__name__}): "
            "re-run fetch to resume",
            kind="unreachable",
        ) from None
    except (HfHubHTTPError, EntryNotFoundError, LocalEntryNotFoundError) as err:
        raise map_error(ctx, err, commit=commit) from None


def _result(ctx: Ctx, source: str, commit: str, expected: list[str], listing: dict[str, Any]) -> dict[str, Any]:
    """Hash + verify every selected file against the Hub's checksums, then build the fetch.json entry."""
    base = ctx.base_dir(commit)
    files: list[FileEntry] = []
    try:
        for path in expected:
            full = base / path
            meta = listing[path]
            sha = ctx.cache.sha256(full)
            size = full.stat().st_size
            _verify(ctx, commit, path, full, sha, size, meta)
            files.append(FileEntry(path=path, size=size, sha256=sha))
    finally:
        ctx.cache.save()
    return {
        "source": source,
        "repo_id": ctx.repo_id,
        "requested_revision": ctx.revision,
        "commit": commit,
        "local_dir": str(base),
        "files": [f.to_dict() for f in files],
        "manifest_sha256": manifest_sha256(files),
    }


def _verify(ctx: Ctx, commit: str, path: str, full: Path, sha: str, size: int, meta: Any) -> None:
    """Size always; content via the LFS sha256, or the git blob sha1 (small non-LFS files)."""
    got, want = None, None
    if size != meta.size:
        got, want = f"size {size}", f"size {meta.size}"
    elif meta.lfs_sha256:
        if sha != meta.lfs_sha256:
            got, want = f"sha256 {sha[:12]}", f"sha256 {meta.lfs_sha256[:12]}"
    elif meta.blob_id and (blob := git_blob_sha1(full)) != meta.blob_id:
        got, want = f"git sha1 {blob[:12]}", f"git sha1 {meta.blob_id[:12]}"
    if got is None:
        return
    real = os.path.realpath(full)
    extra = f" and {full}" if str(full) != real else ""
    raise HubError(
        f"{ctx.what}: {path} at commit {commit[:12]} fails verification ({got} != expected {want}): "
        f"the cached copy is corrupt; delete {real}{extra} and re-run fetch",
        kind="verify",
    )


def local_snapshot(
    path: Path,
    *,
    name: str,
    source: str = "local",
    hash_cache: HashCache | None = None,
) -> dict[str, Any]:
    """Manifest a local directory into the same entry shape (``source: local``, or ``builtin`` for built models).

    ``commit`` is ``"local-" + manifest_sha256[:12]``: content-derived, so a rebuilt identical dir keeps its id
    and the device path ``<name>@<commit7>`` stays stable. ``.git``, ``.cache/huggingface`` and the odeval
    manifest are excluded.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise HubError(f"{name}: local directory {root} does not exist: build/copy it or fix the path", kind="local")
    cache = hash_cache if hash_cache is not None else HashCache()
    try:
        entries = scan_dir(root, cache=cache, exclude=LOCAL_EXCLUDE)
    except ManifestError as err:
        raise HubError(f"{name}: {err}", kind="local") from None
    finally:
        cache.save()
    if not entries:
        raise HubError(f"{name}: local directory {root} contains no files: build/copy the model into it", kind="local")
    digest = manifest_sha256(entries)
    return {
        "source": source,
        "repo_id": None,
        "requested_revision": None,
        "commit": f"local-{digest[:12]}",
        "local_dir": str(root.resolve()),
        "files": [e.to_dict() for e in entries],
        "manifest_sha256": digest,
    }
