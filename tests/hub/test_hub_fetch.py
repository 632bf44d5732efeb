"""fetch_snapshot / local_snapshot against the local Hub-compatible server (no network: see hf_home)."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest

from pipeline.fetch.hub import fetch_snapshot, local_snapshot
from pipeline.fetch.hub_errors import HubError
from pipeline.fetch.manifest import FileEntry, manifest_sha256
from tests.helpers.hub_server import HubServer, synthetic_model_files

REPO = "org/tiny-model"
KEYS = ["source", "repo_id", "requested_revision", "commit", "local_dir", "files", "manifest_sha256"]


def _fetch(server: HubServer, revision: str = "main", **kw):
    kw.setdefault("allow_patterns", None)
    kw.setdefault("progress", False)
    kw.setdefault("timeout", 5.0)
    return fetch_snapshot(kw.pop("repo_id", REPO), revision, endpoint=server.url, **kw)


def _expected_files(files: dict[str, bytes]) -> list[dict]:
    return [{"path": p, "size": len(files[p]), "sha256": hashlib.sha256(files[p]).hexdigest()} for p in sorted(files)]


def _one_line(err: HubError) -> str:
    msg = str(err)
    assert "\n" not in msg and msg.strip() == msg
    return msg


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- happy paths ---------------------------------------------------------------------------------------------------
def test_fetch_main_resolves_commit_and_hashes(hub_server: HubServer) -> None:
    files = synthetic_model_files()
    sha = hub_server.add_repo(REPO, files)
    out = _fetch(hub_server)
    assert list(out) == KEYS
    assert (out["source"], out["repo_id"], out["requested_revision"], out["commit"]) == ("hub", REPO, "main", sha)
    assert out["files"] == _expected_files(files)
    entries = [FileEntry(**f) for f in out["files"]]
    assert out["manifest_sha256"] == manifest_sha256(entries)
    base = Path(out["local_dir"])
    assert sha in base.parts[-1]
    for f in out["files"]:
        assert (base / f["path"]).read_bytes() == files[f["path"]]


def test_allow_patterns_select_files(hub_server: HubServer) -> None:
    files = synthetic_model_files()
    hub_server.add_repo(REPO, files)
    out = _fetch(hub_server, allow_patterns=["*.json", "tokenizer/*"])
    assert [f["path"] for f in out["files"]] == ["config.json", "tokenizer.json", "tokenizer/tokenizer.bin"]
    downloaded = {r.path.rsplit("/", 1)[-1] for r in hub_server.requests if "/resolve/" in r.path}
    assert "model.safetensors" not in downloaded


def test_cached_pinned_fetch_makes_zero_requests(hub_server: HubServer) -> None:
    sha = hub_server.add_repo(REPO, synthetic_model_files())
    first = _fetch(hub_server, sha)
    assert first["commit"] == sha and first["requested_revision"] == sha
    assert not any("/revision/" in r.path for r in hub_server.requests)  # a sha is never "resolved"
    hub_server.clear_log()
    assert _fetch(hub_server, sha) == first
    assert hub_server.requests == []


def test_cached_branch_fetch_makes_only_the_resolve_request(hub_server: HubServer) -> None:
    hub_server.add_repo(REPO, synthetic_model_files())
    first = _fetch(hub_server)
    hub_server.clear_log()
    assert _fetch(hub_server) == first
    assert [(r.method, r.path) for r in hub_server.requests] == [("GET", f"/api/models/{REPO}/revision/main")]


def test_branch_moves_to_new_commit(hub_server: HubServer) -> None:
    old = hub_server.add_repo(REPO, synthetic_model_files(0))
    assert _fetch(hub_server)["commit"] == old
    new_files = synthetic_model_files(1)
    new = hub_server.add_repo(REPO, new_files)
    out = _fetch(hub_server)
    assert out["commit"] == new != old
    assert out["files"] == _expected_files(new_files)


def test_local_dir_and_pagination(hub_server: HubServer, tmp_path: Path) -> None:
    hub_server.page_size = 2  # forces Link pagination of the tree listing
    files = synthetic_model_files()
    sha = hub_server.add_repo(REPO, files)
    dest = tmp_path / "dest"
    out = _fetch(hub_server, sha, local_dir=dest)
    assert out["local_dir"] == str(dest.resolve())
    assert out["files"] == _expected_files(files)
    assert sum("/tree/" in r.path for r in hub_server.requests) >= 3
    hub_server.clear_log()
    assert _fetch(hub_server, sha, local_dir=dest) == out
    assert hub_server.requests == []


def test_quiet_progress_writes_nothing(hub_server: HubServer, capfd: pytest.CaptureFixture[str]) -> None:
    hub_server.add_repo(REPO, synthetic_model_files())
    _fetch(hub_server, progress=False)
    captured = capfd.readouterr()
    assert "Fetching" not in captured.err and "Download" not in captured.err


# -- errors: one line, with the fix --------------------------------------------------------------------------------
def test_unknown_repo(hub_server: HubServer) -> None:
    with pytest.raises(HubError) as exc:
        _fetch(hub_server, repo_id="org/absent")
    assert exc.value.kind == "repo_not_found"
    assert "check model.repo_id" in _one_line(exc.value) and "HF_TOKEN" in str(exc.value)


def test_private_repo_without_token_is_not_found(hub_server: HubServer) -> None:
    hub_server.add_repo(REPO, synthetic_model_files(), private=True, token="hf_ownerToken0000000000")
    with pytest.raises(HubError) as exc:
        _fetch(hub_server)
    assert exc.value.kind == "repo_not_found"


def test_gated_repo(hub_server: HubServer) -> None:
    hub_server.add_repo(REPO, synthetic_model_files(), gated=True, token="hf_ownerToken0000000000")
    with pytest.raises(HubError) as exc:
        _fetch(hub_server)
    assert exc.value.kind == "gated"
    assert "accept the licence on the model page" in _one_line(exc.value) and "HF_TOKEN" in str(exc.value)


def test_bad_revision(hub_server: HubServer) -> None:
    hub_server.add_repo(REPO, synthetic_model_files())
    for rev in ("no-such-branch", "0" * 40):
        with pytest.raises(HubError) as exc:
            _fetch(hub_server, rev)
        assert exc.value.kind == "revision_not_found"
        assert rev in _one_line(exc.value) and "model.revision" in str(exc.value)


def test_pattern_matching_nothing_is_named(hub_server: HubServer) -> None:
    hub_server.add_repo(REPO, synthetic_model_files())
    with pytest.raises(HubError) as exc:
        _fetch(hub_server, allow_patterns=["*.json", "*.gguf"], config_key="app")
    assert exc.value.kind == "patterns"
    msg = _one_line(exc.value)
    assert "*.gguf" in msg and "'*.json'" not in msg and "app.allow_patterns" in msg


def test_entry_missing_on_server(hub_server: HubServer) -> None:
    hub_server.add_repo(REPO, synthetic_model_files())
    hub_server.broken_files = {"config.json"}
    with pytest.raises(HubError) as exc:
        _fetch(hub_server)
    assert exc.value.kind == "entry_not_found"
    assert "allow_patterns" in _one_line(exc.value)


def test_endpoint_unreachable(hf_home: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    with pytest.raises(HubError) as exc:
        fetch_snapshot(REPO, "main", allow_patterns=None, endpoint=url, progress=False)
    assert exc.value.kind == "unreachable"
    msg = _one_line(exc.value)
    assert url in msg and "HF_HUB_OFFLINE=1" in msg


def test_default_endpoint_is_isolated(hf_home: Path) -> None:
    """Without endpoint=, the fixture's dead HF_ENDPOINT is used: a forgotten argument cannot reach the internet."""
    with pytest.raises(HubError) as exc:
        fetch_snapshot(REPO, "main", allow_patterns=None, progress=False)
    assert exc.value.kind == "unreachable" and "127.0.0.1:9" in str(exc.value)


@pytest.mark.timeout(60)
def test_hanging_server_times_out(hub_server: HubServer) -> None:
    hub_server.add_repo(REPO, synthetic_model_files())
    hub_server.hang = True
    for rev in ("main", "f" * 40):  # both the resolve call and the tree listing are timed
        with pytest.raises(HubError) as exc:
            _fetch(hub_server, rev, timeout=0.5)
        assert exc.value.kind == "timeout"
        assert "did not answer within 0.5s" in _one_line(exc.value)


# -- offline / cache fallbacks -------------------------------------------------------------------------------------
def test_offline_with_complete_cache(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    hub_server.add_repo(REPO, synthetic_model_files())
    online = _fetch(hub_server)
    hub_server.clear_log()
    assert _fetch(hub_server, offline=True) == online
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert _fetch(hub_server) == online
    assert hub_server.requests == []


def test_offline_with_incomplete_cache_lists_missing(hub_server: HubServer) -> None:
    hub_server.add_repo(REPO, synthetic_model_files())
    _fetch(hub_server, allow_patterns=["*.json"])
    with pytest.raises(HubError) as exc:
        _fetch(hub_server, offline=True)
    assert exc.value.kind == "incomplete"
    assert exc.value.missing == ["README.md", "model.safetensors", "tokenizer/tokenizer.bin"]
    msg = _one_line(exc.value)
    assert all(m in msg for m in exc.value.missing) and "offline" in msg


def test_offline_never_fetched(hub_server: HubServer) -> None:
    with pytest.raises(HubError) as exc:
        _fetch(hub_server, offline=True)
    assert exc.value.kind == "not_cached" and "never fetched" in _one_line(exc.value)


def test_unreachable_falls_back_to_complete_cache(hf_home: Path) -> None:
    with HubServer() as server:
        server.add_repo(REPO, synthetic_model_files())
        online = _fetch(server)
        url = server.url
    out = fetch_snapshot(REPO, "main", allow_patterns=None, endpoint=url, progress=False, timeout=2)
    assert out == online


# -- verification and secrets --------------------------------------------------------------------------------------
@pytest.mark.parametrize("victim", ["model.safetensors", "config.json"])  # LFS (sha256) and git-blob (sha1) checks
def test_corrupted_cache_is_detected(hub_server: HubServer, victim: str) -> None:
    sha = hub_server.add_repo(REPO, synthetic_model_files())
    out = _fetch(hub_server, sha)
    path = Path(out["local_dir"]) / victim
    real = path.resolve()
    data = bytearray(real.read_bytes())
    data[0] ^= 0xFF
    real.chmod(0o644)
    real.write_bytes(bytes(data))
    with pytest.raises(HubError) as exc:
        _fetch(hub_server, sha)
    assert exc.value.kind == "verify"
    assert victim in _one_line(exc.value) and str(real) in str(exc.value)


def test_token_is_used_but_never_shown(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "hf_SuperSecretToken1234567890"
    monkeypatch.setenv("HF_TOKEN", secret)
    files = synthetic_model_files()
    hub_server.add_repo(REPO, files, private=True, token=secret)
    out = _fetch(hub_server)
    assert out["files"] == _expected_files(files)
    assert all(r.has_auth for r in hub_server.requests)
    assert secret not in json.dumps(out)

    hub_server.add_repo("org/gated", files, gated=True, token="hf_someoneElsesToken000000")
    with pytest.raises(HubError) as exc:
        _fetch(hub_server, repo_id="org/gated")
    assert exc.value.kind == "gated"
    assert exc.value.__cause__ is None and exc.value.__suppress_context__
    assert secret not in str(exc.value) and secret not in repr(exc.value)


def test_token_scrubbed_even_if_it_reaches_a_message(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "hf_LeakyToken99999999999"
    monkeypatch.setenv("HF_TOKEN", secret)
    assert secret not in str(HubError(f"boom {secret} and hf_OtherLooking123456", kind="http"))


# -- local sources -------------------------------------------------------------------------------------------------
def test_local_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ODEVAL_HASH_CACHE", str(tmp_path / "h.json"))
    files = synthetic_model_files()
    root = tmp_path / "m"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_text("ref: x")
    out = local_snapshot(root, name="tiny")
    assert list(out) == KEYS
    assert out["files"] == _expected_files(files)
    assert out["repo_id"] is None and out["source"] == "local"
    assert out["commit"] == "local-" + out["manifest_sha256"][:12]
    with pytest.raises(HubError, match="does not exist") as exc:
        local_snapshot(tmp_path / "absent", name="tiny")
    assert exc.value.kind == "local"


def test_network_guard_refuses_non_loopback(hf_home: Path) -> None:
    from huggingface_hub.utils import get_session

    from tests.helpers.hub_server import NetworkRefused

    with pytest.raises(NetworkRefused, match="example.invalid"):
        get_session().get("http://example.invalid/", timeout=1)


@pytest.mark.parametrize("exc_name", ["IncompleteSnapshotError", "LocalEntryNotFoundError"])
def test_cache_errors_from_the_hub_are_mapped(hf_home: Path, exc_name: str) -> None:
    """These only surface from snapshot_download if the cache changes under us; the mapping must still be one line."""
    import huggingface_hub.errors as hub_errors

    from pipeline.fetch import hub

    cls = getattr(hub_errors, exc_name)
    err = cls("multi\nline", snapshot_path="/x") if exc_name.startswith("Incomplete") else cls("multi\nline")
    ctx = hub.Ctx(REPO, "main", None, "http://127.0.0.1:9", 1.0, hf_home, None, "model", False, None)  # type: ignore[arg-type]
    mapped = hub.map_error(ctx, err)
    assert mapped.kind == ("incomplete" if exc_name.startswith("Incomplete") else "not_cached")
    assert "HF_HUB_OFFLINE" in _one_line(mapped)


@pytest.mark.slow
def test_fetch_a_built_tiny_model(hub_server: HubServer, tmp_path: Path) -> None:
    """The real offline tiny model served by the fixture: the fetched manifest equals the local one, byte for byte."""
    import os
    import subprocess
    import sys

    out_dir = tmp_path / "built"
    env = {**os.environ, "ODEVAL_CACHE": str(tmp_path / "odeval"), "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "pipeline.models", "build", "tiny-random", "--out", str(out_dir)],
        check=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        timeout=600,
    )
    sha = hub_server.add_repo("odeval/tiny-random", out_dir)
    fetched = _fetch(hub_server, repo_id="odeval/tiny-random")
    local = local_snapshot(out_dir, name="tiny-random")
    assert fetched["commit"] == sha
    assert fetched["files"] == local["files"] and fetched["manifest_sha256"] == local["manifest_sha256"]
