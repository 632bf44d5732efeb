"""Fixtures for tests/push: the real virtual device (tests/helpers/device.py) and small host dirs to deploy."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def make_tree(root: Path, files: dict[str, int], seed: int = 0) -> Path:
    """Write files of the given sizes with pseudo-random (seeded, incompressible) bytes under root."""
    import random

    rng = random.Random(seed)
    for rel, size in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(size))
    return root


@pytest.fixture
def host_tree(tmp_path: Path) -> Path:
    """A small app-like dir: a binary, a nested file, a name needing shell quoting, a 1.5 MB blob."""
    root = make_tree(tmp_path / "host app", {
        "simple_app": 20_000,
        "lib/libllmod.so": 300_000,
        "we ird 'name' $x.bin": 1234,
        "zz_big.bin": 1_500_000,
    })
    os.chmod(root / "simple_app", 0o644)  # exec bit must come from the push, not the host
    return root
