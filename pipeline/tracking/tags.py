"""Provenance tags: the device (kind, model, SoC, serial, sandbox), the app and model manifests, the git commit,
the DVC experiment and the sweep — so every number in MLflow says where it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.socs import soc_of
from pipeline.tracking.store import UNKNOWN
from pipeline.workspace import git_commit, git_dirty


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return None
        d = d[k]
    return d


def _first(*values: Any) -> str:
    for v in values:
        if v is not None and str(v).strip() != "":
            return str(v)
    return UNKNOWN


def provenance_tags(
    run_json: Mapping[str, Any],
    fetch_json: Mapping[str, Any],
    push_json: Mapping[str, Any],
    *,
    root: Path | None = None,
    sweep_id: str | None = None,
    dvc_exp_name: str | None = None,
) -> dict[str, str]:
    """Tags that say what produced a score: device, app/model manifests, git state, dvc exp name, sweep id.

    Reads (all optional; a missing value becomes "unknown"): device from ``run_json["device"]`` else
    ``push_json["device"]`` (``kind``, ``serial``, ``props["ro.product.model"]``, ``props["ro.soc.model"]`` with
    ``ro.board.platform`` as fallback); manifests from ``fetch_json["model"|"app"]["manifest_sha256"]``; git from
    ``run_json["git"]["commit"|"dirty"]`` (what produced the responses), else computed at ``root``;
    ``sweep_id`` argument, else ``run_json["sweep_id"]``; ``dvc_exp_name`` (the run context's DVC_EXP_NAME).
    """
    run_dev = _get(run_json, "device")
    push_dev = _get(push_json, "device")

    def dev(*keys: str) -> Any:
        return _first(_get(run_dev, *keys), _get(push_dev, *keys))

    soc = _first(soc_of(_get(run_dev, "props")), soc_of(_get(push_dev, "props")))
    commit = _get(run_json, "git", "commit")
    dirty = _get(run_json, "git", "dirty")
    if commit is None and root is not None:
        commit, dirty = git_commit(root), git_dirty(root)
    return {
        "device.kind": dev("kind"),
        "device.model": dev("props", "ro.product.model"),
        "device.soc": soc,
        "device.serial": dev("serial"),
        # how the virtual device was confined: landlock-abi<N>, or off (the user's opt-out); a phone confines itself
        "device.sandbox": "n/a" if dev("kind") == "real" else dev("props", "ro.odeval.sandbox"),
        "app.manifest_sha256": _first(_get(fetch_json, "app", "manifest_sha256")),
        "model.manifest_sha256": _first(_get(fetch_json, "model", "manifest_sha256")),
        "git.commit": _first(commit),
        "git.dirty": UNKNOWN if dirty is None else str(bool(dirty)).lower(),
        "dvc.exp_name": _first(dvc_exp_name),
        "sweep_id": _first(sweep_id, _get(run_json, "sweep_id")),
    }


def bench_tags(score: Mapping[str, Any]) -> dict[str, str]:
    """The llama-bench facts that are text, not metrics: the llama.cpp build it ran and, when it failed, why —
    the report shows them beside the numbers (``bench.*`` metrics), which a failed benchmark does not have."""
    from pipeline.score.llama_cpp import build_label

    bench = score.get("bench")
    if not isinstance(bench, Mapping):
        return {}
    tags = {"bench.build": build_label(bench)}
    if bench.get("error"):
        tags["bench.error"] = str(bench["error"])
    return tags
