"""pytest plugin: this machine's llama.cpp build (``app=llama-cpp``), built once per *machine*, not per session.

WHY the machine's cache and not the session's: the build takes ~5 minutes on 2 cores (README); every test session
has its own hermetic ``$ODEVAL_CACHE``, so the build is made (or found) in the cache the user's runs use —
``$ODEVAL_CACHE`` as it was before the session started, else ``~/.cache/odeval`` — and linked into the session's
cache under the same key directory, where the fetch stage and the virtual device's daemon look it up. On a fresh
machine the first test that needs it pays the build once; a second suite run finds it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.workspace import cache_home

MACHINE_CACHE = cache_home()  # read when the plugin loads: before the session's hermetic ODEVAL_CACHE is set


@pytest.fixture(scope="session")
def llama_build(_hermetic_env: None) -> Path:
    """The build dir (``llama-completion``, ``llama-bench``, ``build.json``) as the session's cache sees it."""
    from pipeline import llama_cpp
    from pipeline.fetch import llama_build as lb

    session_cache = os.environ["ODEVAL_CACHE"]
    os.environ["ODEVAL_CACHE"] = str(MACHINE_CACHE)
    try:
        if llama_cpp.cxx_compiler() is None:
            pytest.skip("no C++ compiler on this machine: llama.cpp cannot be built (app=llama-cpp is unavailable)")
        built = lb.ensure_built(progress=True)
    finally:
        os.environ["ODEVAL_CACHE"] = session_cache
    link = llama_cpp.key_dir(llama_cpp.build_key())
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.symlink_to(built, target_is_directory=True)
    assert llama_cpp.find()[0] == link
    return link
