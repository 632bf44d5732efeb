"""pytest plugin: the reference app's native kernel, built once per test session (into the session's ODEVAL_CACHE).

WHY autouse: ``ODEVAL_ENGINE=auto`` picks the native engine when the kernel is built and the numpy engine (with a
reason) when it is not; building it at session start makes every test see the same engine whatever the order the
tests run in. A build is a few seconds; with no compiler it records why and the numpy engine runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def native_kernel(_hermetic_env: None) -> Path | None:
    """The built library, or None (no compiler: tests that need it skip with the recorded reason)."""
    from pipeline import native_kernel
    from pipeline.guest import native_build

    try:
        return native_build.ensure_built(progress=False)
    except native_build.BuildError as exc:
        if native_kernel.compiler() is not None:  # a compiler that fails to build is a bug, not an environment gap
            raise
        print(f"native kernel unavailable: {exc}")
        return None


@pytest.fixture
def native(native_kernel: Path | None) -> Path:
    """Skip (naming the reason) when this machine has no C compiler; the kernel's path otherwise."""
    if native_kernel is None:
        pytest.skip("no C compiler on this machine: the native engine cannot be built (the numpy engine runs)")
    return native_kernel
