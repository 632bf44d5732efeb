"""llama.cpp as the app, end to end on the virtual device: this machine's build fetched as an app (sha256 in the
manifest), pushed over real adb, run prompt by prompt through llama-completion's REPL, benchmarked by llama-bench,
scored — and the same GGUF's numbers checked against llama.cpp's own counters."""

from __future__ import annotations

import json

import pytest

from pipeline.stages import StageError
from tests.helpers.pipeline import rows, run_stages, stage_config

pytestmark = pytest.mark.timeout(600, func_only=True)  # the first llama_build of a machine (~5.5 min) is setup


def test_llama_cpp_answers_are_timed_and_agree_with_its_own_counters(virtual_device, workdir, stage_cache,
                                                                       smollm2, llama_build):
    smollm2("gguf")
    cfg = stage_config(virtual_device, workdir, "app=llama-cpp", "model=smollm2-q4", "prompts.limit=3",
                       "runtime=bench", "runtime.repeats=2", "runtime.cooldown_s=0", "runtime.bench_pp=16",
                       "runtime.bench_tg=16", "app.threads=1", cache=stage_cache)
    run_stages(cfg, workdir)
    art = workdir / "artifacts"
    app = json.loads((art / "fetch.json").read_text())["app"]
    built = json.loads((llama_build / "build.json").read_text())
    assert app["source"] == "build" and app["commit"].startswith("build-")
    by_path = {f["path"]: f["sha256"] for f in app["files"]}
    assert by_path["llama-completion"] == built["sha256"]["llama-completion"]  # the manifest names the build
    run = json.loads((art / "run" / "run.json").read_text())
    assert run["status"] == "complete" and run["preflight"]["device"]["machine"]["llama-completion"] == "x86-64"

    got = [r for r in rows(workdir) if not r["warmup"]]
    assert len(got) == 6 and not any(r["crashed"] or r["timed_out"] or r["error"] for r in got)
    for r in got:
        c = r["app_counters"]
        assert r["ttft_s"] > 0 and r["response"].strip() and r["eos"] != r["truncated"], r
        assert c["prompt_eval_tokens"] == r["n_prompt_tokens"]  # llama.cpp fed what the run plan counted
        assert c["eval_tokens"] == (r["n_output_tokens"] - 1 if r["truncated"] else c["eval_tokens"]), r
        assert r["past_end"] is None and r["app_tok_s"] is None
    timed = [r for r in got if r["decode_tok_s"]]
    assert timed, "no answer long enough to time a decode rate"
    host = sum(r["decode_tok_s"] for r in timed) / len(timed)
    app_rate = sum(r["app_counters"]["eval_tokens"] / r["app_counters"]["eval_ms"] * 1000 for r in timed) / len(timed)
    assert 0.75 < host / app_rate < 1.25, (host, app_rate)  # the same decode, timed by two clocks

    bench = json.loads((art / "run" / "bench.json").read_text())
    assert "error" not in bench, bench
    for test, n in (("pp", 16), ("tg", 16)):
        assert bench[test]["n_tokens"] == n and bench[test]["mean_tok_s"] > 0 and bench[test]["sd_tok_s"] is not None
        assert len(bench[test]["samples_tok_s"]) == 2
    assert bench["repeats"] == 2 and bench["threads"] == 1 and "model_filename" not in json.dumps(bench["raw"])
    score = json.loads((workdir / "metrics" / "score.json").read_text())
    assert score["device_kind"] == "virtual" and score["failures"]["failed"] == 0
    counters = score["app_counters"]
    assert counters["prompt_tokens_agree"] == 1.0 and counters["n_decode_pairs"] == len(timed)
    assert counters["host_vs_app_decode"] == pytest.approx(
        sum(r["decode_tok_s"] for r in timed) / sum(r["app_counters"]["eval_tokens"] / r["app_counters"]["eval_ms"]
                                                     * 1000 for r in timed))
    assert score["bench"]["pp_tok_s"] == bench["pp"]["mean_tok_s"] and score["bench"]["tg_tok_s_sd"] is not None
    headline = json.loads((workdir / "metrics" / "headline.json").read_text())
    assert headline["bench_tg_tok_s"] > 0 and headline["bench_pp_tok_s"] > 0


def test_session_shared_is_refused_at_config_time(virtual_device, workdir):
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="session=shared with app=llama-cpp"):
        stage_config(virtual_device, workdir, "app=llama-cpp", "model=smollm2-q4", "session=shared")
    with pytest.raises(ConfigError, match="app.template='mobilequant'"):
        stage_config(virtual_device, workdir, "app=llama-cpp", "model=smollm2-q4", "app.template=mobilequant")


def test_a_build_for_another_cpu_is_refused_before_the_first_prompt(virtual_device, workdir, stage_cache, smollm2,
                                                                    llama_build):
    """The virtual device says it is an arm64 phone (host-side props override): the x86-64 build is refused in one
    line naming both machines, and no row is written."""
    smollm2("gguf")
    virtual_device.set_faults(props_override={"ro.product.cpu.abi": "arm64-v8a"})
    cfg = stage_config(virtual_device, workdir, "app=llama-cpp", "model=smollm2-q4", "prompts.limit=1",
                       cache=stage_cache)
    run_stages(cfg, workdir, "fetch", "push")
    with pytest.raises(StageError, match=r"llama-completion is built for x86-64 but the device is arm64-v8a"):
        run_stages(cfg, workdir, "run")
    assert not (workdir / "artifacts" / "run" / "responses.jsonl").exists() or not rows(workdir)


def test_kill_9_mid_run_resumes_and_leaves_no_llama_process(virtual_device, workdir, stage_cache, smollm2,
                                                            llama_build):
    from tests.helpers.pipeline import kill_9_after

    smollm2("gguf")
    cfg = stage_config(virtual_device, workdir, "app=llama-cpp", "model=smollm2-q4", "prompts.limit=5",
                       "tracking=none", "app.threads=1", cache=stage_cache)
    run_stages(cfg, workdir, "fetch", "push")
    before = kill_9_after(cfg, workdir, 2)
    assert 2 <= len(before) < 5
    run_stages(cfg, workdir, "run")
    after = rows(workdir)
    assert len(after) == 5 and after[: len(before)] == before and all(r["app_counters"] for r in after)
    assert json.loads((workdir / "artifacts" / "run" / "run.json").read_text())["status"] == "complete"
    left = virtual_device.adb("shell", "pidof llama-completion").stdout.strip()
    assert left == b"", left
