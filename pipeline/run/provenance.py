"""What ``run.json`` says produced the rows: the run's identity, the device (kind and props: a virtual device's
throughput is the host's, never a phone's), the host, the app and model (manifests, commits), the session and its
KV-context policy, and the git state — so every number carries its provenance."""

from __future__ import annotations

import os
import platform

from pipeline.config import APP_KV_POSITIONS, Config
from pipeline.run.identity import RunIdentity
from pipeline.run.record import now
from pipeline.workspace import git_commit, git_dirty, shared_root


def context_record(cfg: Config) -> dict:
    """What a KV wrap would do with this app, and how the run avoids it (see pipeline.run.runner.RunOptions)."""
    return {"positions": min(cfg.model.max_seq_len, APP_KV_POSITIONS),
            "app_at_wrap": "clears its KV cache (reference app)" if cfg.app.virtual_only
            else "never wraps: a context of model.max_seq_len, one prompt per process (llama.cpp)"
            if cfg.app.protocol == "llama-cpp" else "overwrites the oldest positions (simple_app's ring)",
            "policy": "shared session: a fresh app process before a prompt that could wrap (rows: context_reset)"
            if cfg.session.mode == "shared" else "fresh session: one process per prompt, within the budget"}


def provenance(cfg: Config, fetch: dict, push: dict, identity: RunIdentity) -> dict:
    device = push["device"]
    kind = device.get("kind", "unknown")
    root = shared_root()
    pick = ("repo_id", "commit", "manifest_sha256", "source")
    return {
        "run_key": identity.key,
        "identity": identity.to_record(),
        "device": device,
        "throughput_source": "host CPU via the virtual device — not a phone measurement" if kind == "virtual"
        else "phone",
        "host": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "app": {k: fetch["app"].get(k) for k in pick}
        | {"name": cfg.app.name, "protocol": cfg.app.protocol, "template": cfg.app.template,
           "remote_dir": push["app"]["remote_dir"]},
        "model": {k: fetch["model"].get(k) for k in pick}
        | {"name": cfg.model.name, "quant": cfg.model.quant, "remote_dir": push["model"]["remote_dir"],
           "standin_model": cfg.device.virtual.standin_model if kind == "virtual" else None},
        "session": cfg.session.mode,
        "context": context_record(cfg),
        "prompts": cfg.prompts.name,
        "git": {"commit": git_commit(root), "dirty": git_dirty(root)},
        "started": now(),
    }
