"""Synthetic run outputs of the two app runtimes (simple_app protocol, llama.cpp's ``llama-completion``) as the run
stage writes them (responses.jsonl rows with ``app_counters``, bench.json from ``llama-bench -o json``), for the
score, MLflow and report tests — built to the run side's data contract, not read from a device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.run.runner import ROW_FIELDS


def perf(eval_tokens: int | None = 29, eval_ms: float | None = 1450.0, prompt_eval_tokens: int | None = 12,
         prompt_eval_ms: float | None = 100.0, load_ms: float | None = 300.0) -> dict[str, Any]:
    """One process's ``llama_perf_context_print`` counters, as the run side parses them."""
    return {"load_ms": load_ms, "prompt_eval_tokens": prompt_eval_tokens, "prompt_eval_ms": prompt_eval_ms,
            "eval_tokens": eval_tokens, "eval_ms": eval_ms}


def row(pid: str, response: str, *, app_counters: dict | None = None, app_tok_s: float | None = None,
        decode_tok_s: float | None = 20.0, ttft_s: float | None = 0.25, n_prompt_tokens: int = 12,
        n_output_tokens: int = 30, repeat: int = 0, warmup: bool = False, **extra: Any) -> dict[str, Any]:
    """A finished answer row with exactly ROW_FIELDS (host timings filled as the runner fills them)."""
    r = dict.fromkeys(ROW_FIELDS)
    t_send = 100.0 + 10 * len(pid) + repeat
    r.update(prompt_id=pid, repeat=repeat, warmup=warmup, prompt=f"prompt {pid}", sent_text=f"prompt {pid}",
             response=response, raw_output_b64="", eos=True, truncated=False, timed_out=False, crashed=False,
             exit_code=0, app_tok_s=app_tok_s, t_send=t_send, t_first_byte=t_send + (ttft_s or 0.0),
             t_last_byte=t_send + 2.0, chunks=[], n_output_tokens=n_output_tokens, n_prompt_tokens=n_prompt_tokens,
             ttft_s=ttft_s, decode_tok_s=decode_tok_s, e2e_s=2.0, session="fresh", load_s=0.3,
             host_blended_tok_s=(n_prompt_tokens + n_output_tokens - 1) / 2.0, replaced_chars=0,
             positions_before=0, context_reset=False, ask_key=f"ask-{pid}", app_counters=app_counters)
    r.update(extra)
    return r


def sample_stats(xs: list[float]) -> dict[str, Any]:
    import statistics

    return {"mean_tok_s": statistics.fmean(xs), "sd_tok_s": statistics.stdev(xs), "samples_tok_s": xs}


def bench_json(pp: tuple[int, list[float]] | None = (512, [300.0, 310.0, 320.0]),
               tg: tuple[int, list[float]] | None = (128, [45.0, 46.0, 47.0]), *, threads: int | None = 2,
               error: str | None = None) -> dict[str, Any]:
    """artifacts/run/bench.json as the run stage writes it (``error``: llama-bench failed, no numbers)."""
    raw = []  # llama-bench's own records: one per test
    if pp:
        raw.append({"n_prompt": pp[0], "n_gen": 0, "n_threads": 4, "samples_ts": pp[1]})
    if tg:
        raw.append({"n_prompt": 0, "n_gen": tg[0], "n_threads": 4, "samples_ts": tg[1]})
    out: dict[str, Any] = {"tool": "llama-bench", "command": ["llama-bench", "-o", "json", "-r", "3"], "repeats": 3,
                           "warmup": True, "delay_s": 0.5, "threads": threads,
                           "build": {"commit": "a1b2c3d", "number": 4567}, "raw": raw}
    if error:
        return {"tool": "llama-bench", "error": error, "command": out["command"], "repeats": 3}
    if pp:
        out["pp"] = {"n_tokens": pp[0], **sample_stats(pp[1])}
    if tg:
        out["tg"] = {"n_tokens": tg[0], **sample_stats(tg[1])}
    return out


def write_score_inputs(work: Path, rows: list[dict], *, app_name: str, bench: dict | None = None,
                       protocol: str | None = None) -> Path:
    """The artifacts/ the score stage reads (fetch.json, push.json, run/…) for ``rows``; returns artifacts/run."""
    art, run = work / "artifacts", work / "artifacts" / "run"
    run.mkdir(parents=True, exist_ok=True)
    device = {"kind": "virtual", "serial": "127.0.0.1:5555", "props": {"ro.product.model": "odeval-virtual"}}
    (art / "fetch.json").write_text(json.dumps({"model": {"manifest_sha256": "ab" * 32},
                                                "app": {"manifest_sha256": "cd" * 32}}))
    (art / "push.json").write_text(json.dumps({"device": device}))
    app = {"name": app_name} | ({"protocol": protocol} if protocol else {})
    (run / "run.json").write_text(json.dumps({"run_key": f"key-{app_name}", "asked": "asked-1", "device": device,
                                              "app": app, "status": "complete", "git": {"commit": "0" * 40},
                                              "started": "2025-01-01T10:00:00+00:00",
                                              "ended": "2025-01-01T10:05:00+00:00"}))
    ids = sorted({r["prompt_id"] for r in rows})
    (run / "prompts.jsonl").write_text("".join(json.dumps({"id": i, "prompt": f"prompt {i}", "reference": "Paris"})
                                               + "\n" for i in ids))
    (run / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "telemetry.jsonl").write_text("")
    if bench is not None:
        (run / "bench.json").write_text(json.dumps(bench))
    return run
