"""The reference app as a fetchable 'app': a launcher named like simple_app (on a phone it only says that it
runs on the virtual device) and ``app.json`` — the sha256 of every file of the reference implementation's import
closure, its libraries' versions and the native kernel's build key, so the app manifest, and every result
downstream, changes when any code the virtual device runs changes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REFERENCE_LAUNCHER = """#!/system/bin/sh
# odeval reference app. On the odeval virtual device, executing this file runs pipeline/guest/reference_app.py
# (simple_app's REPL protocol on the host CPU). It is not an Android binary: on a phone it only says so.
echo "odeval reference app: runs only on the odeval virtual device (device=virtual)" >&2
exit 126
"""


# What the virtual device runs for the reference app: its import closure (engine and model loaders included) and
# the libraries those import. Changing any of them changes app.json, hence the app manifest and every result key.
REFERENCE_APP_MODULE = "pipeline.guest.reference_app"


REFERENCE_APP_LIBRARIES = ("numpy", "safetensors", "gguf", "tokenizers", "torch", "transformers")


def build_reference_app(out: Path, binary: str, progress: bool = True) -> Path:
    """The reference 'app' is a launcher named like simple_app plus ``app.json``: the sha256 of every file of the
    reference implementation's import closure, the versions of its libraries and the native kernel's build key
    (C source, compiler, flags, CPU), so the app manifest (and every downstream result) changes when any code the
    device runs changes — not only reference_app.py."""
    import platform

    import pipeline
    from pipeline.codehash import code_files, library_versions
    from pipeline.guest import native_build

    out.mkdir(parents=True, exist_ok=True)
    info = {"app": "odeval-reference", "version": getattr(pipeline, "__version__", "0"),
            "module": REFERENCE_APP_MODULE, "code": code_files(REFERENCE_APP_MODULE),
            "libraries": library_versions(*REFERENCE_APP_LIBRARIES), "python": platform.python_version(),
            # the native kernel the app will map: built here once per machine (a progress line the first time), its
            # source/compiler/flags/CPU key in the manifest; or why it is unavailable (the numpy engine then runs)
            "native_kernel": native_build.status(build=True, progress=progress)}
    _write_if_changed(out / binary, REFERENCE_LAUNCHER)
    _write_if_changed(out / "app.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    os.chmod(out / binary, 0o755)
    return out


def _write_if_changed(path: Path, text: str) -> None:
    """Keep mtimes stable when nothing changed so the host hash cache stays warm."""
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
