"""llama.cpp's own benchmark on the device: ``llama-bench -o json`` → ``artifacts/run/bench.json``.

WHY beside the per-prompt numbers: they answer two questions. The per-prompt rows time real answers to real
prompts as a user sees them (host clock, transport included) and carry llama.cpp's own counters; ``llama-bench``
times synthetic prompt processing (``pp<N>``) and generation (``tg<N>``) with its own repeats, warm-up and cool-down
(``--delay``) — the number people quote for a runtime. Both are recorded, labelled, never merged.
"""

from __future__ import annotations

import json
import shlex
import statistics
from collections.abc import Mapping
from typing import Any

KEEP = ("build_commit", "build_number", "cpu_info", "backends", "model_type", "model_size", "model_n_params",
        "n_batch", "n_threads", "type_k", "type_v", "n_prompt", "n_gen", "test_time", "avg_ts", "stddev_ts",
        "samples_ts")  # not model_filename: on the virtual device it is a host path


class BenchError(ValueError):
    """llama-bench's output could not be read (the message says what it printed)."""


def bench_command(app_dir: str, model_path: str, binary: str, env: Mapping[str, str], *, pp: int, tg: int,
                  repeats: int, warmup: bool, delay_s: float, threads: int | None) -> list[str]:
    """``llama-bench`` argv (run from the app dir): one pp and one tg test, ``-r`` repeats, ``--delay`` seconds of
    cool-down between tests, its warm-up run unless ``warmup`` is off."""
    if not binary or "/" in binary:
        raise BenchError(f"app.bench_binary={binary!r} must be a plain file name")
    argv = [f"./{binary}", "-m", model_path, "-o", "json", "-p", str(int(pp)), "-n", str(int(tg)),
            "-r", str(int(repeats)), "--delay", str(int(round(delay_s)))]
    argv += [] if warmup else ["--no-warmup"]
    argv += ["-t", str(int(threads))] if threads is not None else []
    return argv


def shell_line(app_dir: str, argv: list[str], env: Mapping[str, str]) -> str:
    """The remote shell line for ``argv``, every value quoted (no ``exec``: the exit status comes back)."""
    from pipeline.apps.simple_app import env_exports

    return " && ".join([f"cd {shlex.quote(app_dir)}", *env_exports(env), " ".join(shlex.quote(a) for a in argv)])


def _test(records: list[Mapping[str, Any]], kind: str) -> dict[str, Any]:
    key = "n_prompt" if kind == "pp" else "n_gen"
    other = "n_gen" if kind == "pp" else "n_prompt"
    rec = next((r for r in records if int(r.get(key) or 0) > 0 and int(r.get(other) or 0) == 0), None)
    if rec is None:
        raise BenchError(f"llama-bench printed no {kind} test")
    samples = [float(x) for x in rec.get("samples_ts") or []]
    return {"n_tokens": int(rec[key]), "mean_tok_s": float(rec["avg_ts"]),
            "sd_tok_s": statistics.stdev(samples) if len(samples) > 1 else None, "samples_tok_s": samples}


def parse_bench(stdout: str) -> dict[str, Any]:
    """pp/tg mean ± sd tok/s (sd of the repeats' samples: llama-bench's own ``stddev_ts``) and the records."""
    try:
        records = json.loads(stdout)
    except ValueError as e:
        raise BenchError(f"llama-bench printed no JSON ({e}); its output began {stdout[:200]!r}") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise BenchError("llama-bench's JSON is not a list of records")
    first = records[0] if records else {}
    return {"pp": _test(records, "pp"), "tg": _test(records, "tg"),
            "build": {"commit": first.get("build_commit"), "number": first.get("build_number")},
            "raw": [{k: r.get(k) for k in KEEP if k in r} for r in records]}


def run_bench(dev: Any, app_dir: str, argv: list[str], env: Mapping[str, str], *, timeout_s: float,
              repeats: int, warmup: bool, delay_s: float, threads: int | None) -> dict[str, Any]:
    """Run llama-bench over ``adb shell`` and return bench.json's content: the numbers, or an ``error`` naming why
    there are none (a missing number stays missing)."""
    out: dict[str, Any] = {"tool": "llama-bench", "command": argv, "repeats": repeats, "warmup": warmup,
                           "delay_s": delay_s, "threads": threads}
    try:
        r = dev.shell2(shell_line(app_dir, argv, env), timeout=timeout_s, v2=True)
    except Exception as e:  # noqa: BLE001 - adb errors and timeouts become the recorded reason
        return out | {"error": f"llama-bench did not finish: {str(e).splitlines()[0] if str(e) else type(e).__name__}"}
    if r.returncode != 0:
        tail = (r.stderr or "").strip().splitlines()[-3:]
        return out | {"error": f"llama-bench exited with code {r.returncode}: {' | '.join(tail)}"}
    try:
        return out | parse_bench(r.stdout)
    except BenchError as e:
        return out | {"error": str(e)}


def device_bench(cfg: Any, dev: Any, app_dir: str, model_dir: str, model_files: list[Mapping[str, Any]]
                 ) -> dict[str, Any]:
    """bench.json for ``runtime=bench`` with ``app.bench_binary``: sizes from ``runtime.bench_pp``/``bench_tg``,
    ``runtime.repeats``, its warm-up when ``runtime.warmup`` > 0, ``runtime.cooldown_s`` as ``--delay``."""

    from pipeline.apps.launch import app_env
    from pipeline.apps.llama_cpp import gguf_file

    a, rt = cfg.app, cfg.runtime
    env = app_env(a.env, app_dir, virtual_only=False, template=a.template, past_end_token=None)
    model = gguf_file(model_dir, model_files, f"model={cfg.model.name}")
    argv = bench_command(app_dir, model, a.bench_binary, env, pp=rt.bench_pp, tg=rt.bench_tg, repeats=rt.repeats,
                         warmup=rt.warmup > 0, delay_s=rt.cooldown_s, threads=a.threads)
    timeout = rt.load_timeout_s + rt.prompt_timeout_s * (rt.repeats + 1) * 2 + rt.cooldown_s * 4
    return run_bench(dev, app_dir, argv, env, timeout_s=timeout, repeats=rt.repeats, warmup=rt.warmup > 0,
                     delay_s=rt.cooldown_s, threads=a.threads)
