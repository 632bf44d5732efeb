"""What a failed Hub fetch tells the user: one line naming the repo, the revision or the file and the fix
(:class:`HubError`, with a stable ``kind``), the library's exceptions mapped to it (:func:`map_error`), and no token
ever in a message (:func:`scrub`: the env tokens, the stored login token, anything shaped like one).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")



class FetchTarget(Protocol):
    """What a message needs to know of the fetch that failed (``pipeline.fetch.hub.Ctx`` is one)."""

    repo_id: str
    revision: str
    config_key: str

    @property
    def what(self) -> str: ...

    @property
    def shown(self) -> str: ...

class HubError(Exception):
    """One-line fetch failure naming the repo/revision/key and the fix; ``kind`` is a stable machine tag.

    kinds: repo_not_found, gated, revision_not_found, entry_not_found, patterns, unreachable, timeout,
    not_cached, incomplete, verify, http, local, invalid.
    """

    def __init__(self, message: str, *, kind: str, missing: Sequence[str] = ()) -> None:
        super().__init__(_scrub(" ".join(message.split())))
        self.kind = kind
        self.missing = list(missing)


def _secrets() -> list[str]:
    """Token values that must never be shown: env tokens and the stored login token (read, never used)."""
    from huggingface_hub import constants

    values = [os.environ.get("HF_TOKEN"), os.environ.get("HUGGING_FACE_HUB_TOKEN")]
    try:
        values.append(Path(constants.HF_TOKEN_PATH).read_text().strip())
    except OSError:
        pass
    return [v for v in values if v and len(v) >= 4]


def _scrub(text: str) -> str:
    for secret in _secrets():
        text = text.replace(secret, "***")
    return _TOKEN_RE.sub("hf_***", text)


def show_endpoint(endpoint: str) -> str:
    """Endpoint without any ``user:password@`` part, for messages."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}".rstrip("/")


NET_FIX = "check the network/endpoint, or set HF_HUB_OFFLINE=1 to use the cache"


def map_error(ctx: FetchTarget, err: Exception, *, commit: str | None = None) -> HubError:
    """Translate a huggingface_hub exception into one line with the fix (order matters: subclasses first)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        IncompleteSnapshotError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    key, what, ep = ctx.config_key, ctx.what, ctx.shown
    status = getattr(getattr(err, "response", None), "status_code", None)
    page = f"{ep}/{ctx.repo_id}"
    if isinstance(err, GatedRepoError) or (
        isinstance(err, HfHubHTTPError) and status in (401, 403) and not isinstance(err, RepositoryNotFoundError)
    ):
        return HubError(
            f"{what}: access denied (gated repo, HTTP {status}): accept the licence on the model page ({page}) "
            "and set HF_TOKEN (or run `hf auth login`)",
            kind="gated",
        )
    if isinstance(err, RepositoryNotFoundError):
        return HubError(
            f"{what}: repository not found at {ep} (HTTP {status}): check {key}.repo_id; "
            "if it is private, set HF_TOKEN",
            kind="repo_not_found",
        )
    if isinstance(err, RevisionNotFoundError):
        return HubError(
            f"{what}: revision {ctx.revision!r} not found: check {key}.revision (a branch, tag or full 40-char "
            "commit sha)",
            kind="revision_not_found",
        )
    if isinstance(err, IncompleteSnapshotError):
        return HubError(
            f"{what}: the cached snapshot is incomplete and the Hub could not be reached: {NET_FIX}",
            kind="incomplete",
        )
    if isinstance(err, LocalEntryNotFoundError):
        return HubError(f"{what}: not cached and could not be downloaded from {ep}: {NET_FIX}", kind="not_cached")
    if isinstance(err, EntryNotFoundError):
        at = f"commit {commit[:12]}" if commit else "this revision"
        return HubError(
            f"{what}: a listed file is missing on {ep} at {at}: check {key}.allow_patterns or pin another "
            f"{key}.revision",
            kind="entry_not_found",
        )
    return HubError(
        f"{what}: {ep} answered HTTP {status}: retry later, or set HF_HUB_OFFLINE=1 to use the cache", kind="http"
    )
