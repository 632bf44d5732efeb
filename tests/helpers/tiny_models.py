"""pytest plugin: offline tiny model dirs built once per session (under the session's ODEVAL_CACHE).

Usage: ``def test_x(tiny_model): d = tiny_model("tiny-fp")`` -> a private HF dir (copy; safe to modify).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: model name -> a built model dir (cached by content, so each name builds once per session)."""
    import torch

    from pipeline.models.tiny import build_model

    torch.set_num_threads(1)
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = build_model(name, tmp_path_factory.mktemp(name))
        return made[name]

    return get
