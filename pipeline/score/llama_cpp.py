"""Two more views of a llama.cpp run's speed beside the host-timed per-prompt numbers: the app's own counters
(``llama_perf_context_print`` at each process exit: rows' ``app_counters``) and the synthetic benchmark
(``artifacts/run/bench.json``: ``llama-bench -o json``) — score.json's ``app_counters`` and ``bench`` blocks.

Why keep all three: the host clock times what a user of the app waits for (process, pipe and adb included);
llama.cpp's counters time its own eval loop; llama-bench times random tokens with no prompt set at all. If the host
decode rate is far from llama.cpp's eval rate, the per-prompt timing (or the runner) is measuring something else —
``host_vs_app_decode`` is that check. Numbers that were not printed or not measured stay null with the reason:
never estimated from the other views.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

APP_COUNTERS_SOURCE = "llama.cpp llama_perf_context_print"
BENCH_SOURCE = "llama-bench (synthetic: random tokens, no prompt set)"
LLAMA_CPP = "llama-cpp"  # app.protocol (and the preset's app.name) of the llama.cpp runtime
AGREE_WITHIN = 0.10  # the headline check: host-timed decode within 10 % of llama.cpp's own eval rate


def _num(x: Any) -> float | None:
    """A finite number as float; None for anything else (null, text, NaN, a bool)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
        return None
    return float(x)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _rate(tokens: Any, ms: Any) -> float | None:
    """tokens / ms × 1000; None when either is missing or the time is not positive (0 ms measures nothing)."""
    t, m = _num(tokens), _num(ms)
    return t / m * 1000.0 if t is not None and m is not None and m > 0 else None


def is_llama_cpp(run_json: Mapping[str, Any]) -> bool:
    """The run's app is the llama.cpp runtime (run.json ``app.protocol``, else ``app.name``)."""
    app = run_json.get("app") or {}
    return LLAMA_CPP in (app.get("protocol"), app.get("name"))


def app_counters_block(answered: Sequence[Mapping[str, Any]], llama_cpp: bool
                       ) -> tuple[dict[str, Any] | None, str | None]:
    """score.json ``app_counters`` and ``app_counters_reason`` from the answered measured rows.

    A block when any row carries counters or the app is llama.cpp (then a block of nulls says the counters were
    asked for and not printed — MLflow lists them as missing); no block for simple_app, which prints none (a run
    that could not have them must not show them as missing). Means are over rows: the rates per row first, so a
    long answer does not weigh more; ``host_decode_tok_s`` and ``host_vs_app_decode`` pair the host's and llama.cpp's
    decode rates on the same rows (``n_decode_pairs``)."""
    counted = [(r, c) for r in answered if isinstance(c := r.get("app_counters"), Mapping)]
    if not counted and not llama_cpp:
        return None, "the app prints no llama.cpp perf counters (simple_app protocol): nothing to compare"
    evals = [(_rate(c.get("eval_tokens"), c.get("eval_ms")), _num(r.get("decode_tok_s"))) for r, c in counted]
    pairs = [(app, host) for app, host in evals if app is not None and host is not None]
    agree = [c.get("prompt_eval_tokens") == r.get("n_prompt_tokens") for r, c in counted
             if _num(c.get("prompt_eval_tokens")) is not None and _num(r.get("n_prompt_tokens")) is not None]
    host, app = _mean([h for _, h in pairs]), _mean([a for a, _ in pairs])
    block = {"source": APP_COUNTERS_SOURCE, "n_rows": len(counted),
             "load_ms": _mean([x for _, c in counted if (x := _num(c.get("load_ms"))) is not None]),
             "prompt_eval_tok_s": _mean([x for _, c in counted
                                         if (x := _rate(c.get("prompt_eval_tokens"), c.get("prompt_eval_ms")))
                                         is not None]),
             "eval_tok_s": _mean([a for a, _ in evals if a is not None]),
             "host_decode_tok_s": host, "n_decode_pairs": len(pairs),
             "host_vs_app_decode": host / app if host is not None and app else None,
             "prompt_tokens_agree": sum(agree) / len(agree) if agree else None}
    return block, _counters_reason(answered, counted, block)


def _counters_reason(answered: Sequence[Mapping[str, Any]], counted: Sequence[Any],
                     block: Mapping[str, Any]) -> str | None:
    """Why (some of) the block's numbers are null; None when every number is there."""
    if not answered:
        return "no answered rows: every prompt failed"
    if not counted:
        return (f"none of the {len(answered)} answered rows carries llama.cpp's counters: every process exited "
                "before llama_perf_context_print")
    nulls = [k for k, v in block.items() if v is None]
    if not nulls:
        return None
    return (f"{', '.join(nulls)}: no row had both numbers (a process that died before printing them, a 0 ms "
            "timer, or no host decode rate)")


def bench_block(bench: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """score.json ``bench`` from artifacts/run/bench.json (None: no file, i.e. no benchmark was asked for).

    Flat names (``pp_tok_s``, ``pp_tok_s_sd``, …) so MLflow's dotted metrics read ``bench.pp_tok_s``. A failed
    llama-bench keeps its one-line ``error`` and null numbers — never invented."""
    if bench is None:
        return None
    build = bench.get("build") if isinstance(bench.get("build"), Mapping) else {}
    out: dict[str, Any] = {"source": BENCH_SOURCE}
    missing = []
    for test in ("pp", "tg"):
        part = bench.get(test) if isinstance(bench.get(test), Mapping) else {}
        samples = part.get("samples_tok_s")
        out |= {f"{test}_n_tokens": _num(part.get("n_tokens")), f"{test}_tok_s": _num(part.get("mean_tok_s")),
                f"{test}_tok_s_sd": _num(part.get("sd_tok_s")),
                f"{test}_n_samples": len(samples) if isinstance(samples, list) else None}
        if out[f"{test}_tok_s"] is None:
            missing.append(test)
    out |= {"repeats": _num(bench.get("repeats")), "warmup": bench.get("warmup"), "delay_s": _num(bench.get("delay_s")),
            "threads": _raw_threads(bench.get("raw")) if bench.get("threads") is None else _num(bench.get("threads")),
            "build_commit": build.get("commit"), "build_number": _num(build.get("number"))}
    error = bench.get("error")
    if not error and missing:
        error = f"bench.json has no {' or '.join(missing)} result"
    out["error"] = str(error).strip().splitlines()[0] if error else None
    return out


def _raw_threads(raw: Any) -> float | None:
    """The thread count llama-bench reports in its records when the run stage passed none (its default)."""
    seen = {r.get("n_threads") for r in raw if isinstance(r, Mapping)} if isinstance(raw, list) else set()
    return _num(seen.pop()) if len(seen) == 1 else None


Fmt = Callable[..., str]


def counters_line(block: Mapping[str, Any] | None, f: Fmt) -> list[str]:
    """The terminal line of llama.cpp's own counters beside the host timing (none without the block)."""
    if not block:
        return []
    ratio = block.get("host_vs_app_decode")
    verdict = "" if ratio is None else (f" ({'within' if abs(ratio - 1) <= AGREE_WITHIN else 'NOT within'} "
                                        f"{AGREE_WITHIN:.0%})")
    agree = block.get("prompt_tokens_agree")
    return [f"  llama.cpp's own counters (llama_perf_context_print, {block['n_rows']} answers): eval"
            f" {f(block.get('eval_tok_s'))} tok/s  prompt eval {f(block.get('prompt_eval_tok_s'))} tok/s  load"
            f" {f(block.get('load_ms'), '.0f')} ms;  host-timed decode {f(block.get('host_decode_tok_s'))} tok/s ="
            f" {f(ratio, '.3f')}x llama.cpp's eval{verdict};  prompt tokens agree on"
            f" {'n/a' if agree is None else format(agree, '.0%')} of answers"]


def bench_line(block: Mapping[str, Any] | None, f: Fmt) -> list[str]:
    """The terminal line of the synthetic benchmark (none without bench.json)."""
    if not block:
        return []
    head = "  llama-bench (synthetic benchmark, not the prompt set):"
    if block.get("pp_tok_s") is None and block.get("tg_tok_s") is None:
        return [f"{head} not measured — {block.get('error')}"]

    def test(t: str) -> str:
        n = block.get(f"{t}_n_tokens")
        return f"{t}{f(n, '.0f')} {f(block.get(f'{t}_tok_s'))} ± {f(block.get(f'{t}_tok_s_sd'))} tok/s"

    threads = block.get("threads")
    return [f"{head} {test('pp')}  {test('tg')}  ({f(block.get('repeats'), '.0f')} repeats, delay"
            f" {f(block.get('delay_s'), 'g')} s, threads {'default' if threads is None else format(threads, '.0f')},"
            f" build {build_label(block)})" + (f"  — {block['error']}" if block.get("error") else "")]


def build_label(block: Mapping[str, Any]) -> str:
    """llama.cpp's build as llama-bench reports it: 'b<number> (<commit>)'; a build from a source archive (no git:
    number 0, commit 'unknown', as the virtual device's) is 'not stamped' — the app manifest names its source."""
    number, commit = block.get("build_number"), block.get("build_commit")
    number = number or None
    commit = None if commit in (None, "", "unknown") else commit
    parts = [f"b{number:.0f}" if number is not None else "", f"({commit})" if commit else ""]
    return " ".join(p for p in parts if p) or "not stamped (built from a source archive: see the app manifest)"
