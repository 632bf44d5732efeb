"""Turn a run's rows (+ their quality scores) into the numbers a user compares: score.json and prompts.csv.

Warm-up rows never count. Throughput statistics run over measured rows (each prompt × repeat); quality is
averaged per prompt first, then over prompts, so a prompt with more repeats does not weigh more.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.score.stats import (
    bootstrap_ci,
    energy_per_token,
    plausibility,
    roofline_tok_s,
    summarize,
    temperature_span,
    throttle_ratio,
)
from pipeline.socs import chip_of, soc_of

THROUGHPUT_KEYS = ("decode_tok_s", "ttft_s", "app_tok_s", "e2e_s", "load_s", "host_blended_tok_s")
CSV_FIELDS = ("prompt_id", "set", "n_repeats", "quality_score", "on_topic", "decode_tok_s", "ttft_s", "app_tok_s",
              "e2e_s", "n_prompt_tokens", "n_output_tokens", "eos", "truncated", "timed_out", "crashed", "undecodable")


def undecodable(row: Mapping[str, Any]) -> bool:
    """The answer's bytes were not valid UTF-8: U+FFFD stands in the text for what the app really printed.

    WHY a flag of its own: the text then scores like any answer ("Paris\ufffd" still contains Paris), so a score of
    1.00 would hide that the app emitted broken bytes (a tokenizer/detokenizer or transport defect)."""
    return (row.get("replaced_chars") or 0) > 0


def measured(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [r for r in rows if not r.get("warmup")]


def failed_answer_score(row: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The score of a row that is not an answer (crashed, timed out, refused): quality 0, off topic.

    The rule: a failed prompt is a failed answer, not a skipped one — otherwise a model that crashes on hard
    prompts would score better than one that answers them badly. Its partial text is not scored.
    """
    return {"id": row["prompt_id"], "quality_score": 0.0, "on_topic": False, "failed": kind,
            "quality_score_reason": f"failed answer ({kind}): counted as 0"}


def quality_items(rows: Sequence[Mapping[str, Any]], prompts: Mapping[str, Mapping[str, Any]]) -> list[dict]:
    """What the quality scorers take: the prompt's references/rules + the row's answer and flags."""
    items = []
    for r in rows:
        p = prompts.get(r["prompt_id"], {})
        items.append({"id": r["prompt_id"], "prompt": r["prompt"], "response": r["response"] or "",
                      "reference": p.get("reference") or None, "keywords": p.get("keywords") or None,
                      "rules": p.get("rules") or None, "lang": p.get("lang"), "eos": r["eos"],
                      "truncated": r["truncated"]})
    return items


def per_prompt(rows: Sequence[Mapping[str, Any]], scores: Sequence[Mapping[str, Any]],
               prompts: Mapping[str, Mapping[str, Any]], families: Sequence[str]) -> list[dict]:
    """One row per prompt: means over its measured repeats (the prompts.csv rows)."""
    grouped: dict[str, list[tuple[Mapping, Mapping]]] = defaultdict(list)
    for r, s in zip(rows, scores, strict=True):
        grouped[r["prompt_id"]].append((r, s))
    out = []
    for pid, pairs in grouped.items():
        rs, ss = [p[0] for p in pairs], [p[1] for p in pairs]
        row: dict[str, Any] = {"prompt_id": pid, "set": prompts.get(pid, {}).get("set"), "n_repeats": len(pairs)}
        for key in ("decode_tok_s", "ttft_s", "app_tok_s", "e2e_s", "n_prompt_tokens", "n_output_tokens"):
            row[key] = mean_of(r.get(key) for r in rs)
        for key in ("eos", "truncated", "timed_out", "crashed"):
            row[key] = mean_of(float(bool(r.get(key))) for r in rs)
        row["undecodable"] = mean_of(float(undecodable(r)) for r in rs)
        for fam in ("quality_score", *families):
            row[fam] = mean_of(s.get(fam) for s in ss)
        on = [s.get("on_topic") for s in ss if s.get("on_topic") is not None]
        row["on_topic"] = (sum(on) / len(on)) if on else None
        out.append(row)
    return out


def summarize_run(rows: Sequence[Mapping[str, Any]], prompt_rows: Sequence[Mapping[str, Any]],
                  families: Sequence[str], telemetry: Sequence[Mapping[str, Any]], *, device_kind: str,
                  bandwidth_gb_s: float | None, bandwidth_reason: str | None,
                  weight_bytes: int | None) -> dict[str, Any]:
    """score.json: throughput stats, quality per family, plausibility, drift, energy; nulls carry reasons."""
    from pipeline.run.outcomes import failure_kind

    kinds = [failure_kind(r) for r in rows]
    answered = [r for r, k in zip(rows, kinds, strict=True) if k is None]  # a failed row's timings measure nothing
    failures = {"measured": len(rows), "failed": sum(k is not None for k in kinds),
                **{k: kinds.count(k) for k in ("crashed", "timed_out", "error")}}
    thr = {k: summarize(r.get(k) for r in answered) for k in THROUGHPUT_KEYS}
    quality: dict[str, Any] = {"score": mean_of(p.get("quality_score") for p in prompt_rows)}
    if rows and not answered:
        quality["score"] = None
        quality["score_reason"] = f"no answers to score: all {len(rows)} prompts failed"
    per_prompt_q = [p["quality_score"] for p in prompt_rows if p.get("quality_score") is not None]
    ci = bootstrap_ci(per_prompt_q) if quality["score"] is not None else None
    quality["score_ci95"] = list(ci) if ci else None  # over prompts: how far another prompt set could move it
    if ci is None:
        quality["score_ci95_reason"] = ("fewer than 2 scored prompts" if quality["score"] is not None
                                        else quality.get("score_reason", "no quality score"))
    for fam in families:
        quality[fam] = mean_of(p.get(fam) for p in prompt_rows)
    on = [p["on_topic"] for p in prompt_rows if p.get("on_topic") is not None]
    quality["on_topic_rate"] = (sum(on) / len(on)) if on and answered else None
    decode = thr["decode_tok_s"]["mean"]
    roof = roofline_tok_s(bandwidth_gb_s * 1e9 if bandwidth_gb_s else None, weight_bytes)
    plaus = plausibility(decode, roof)
    if roof is None:
        plaus["reason"] = bandwidth_reason or ("model.weight_bytes unknown" if not weight_bytes else plaus["reason"])
    ratios = [r["host_blended_tok_s"] / r["app_tok_s"] for r in answered
              if r.get("host_blended_tok_s") and r.get("app_tok_s")]
    n_tokens = sum(r.get("n_output_tokens") or 0 for r in rows)
    duration = sum(r.get("e2e_s") or 0.0 for r in rows)
    sends = [r["t_send"] for r in rows if r.get("t_send") is not None]
    ends = [r["t_last_byte"] for r in rows if r.get("t_last_byte") is not None]
    window = (min(sends), max(ends)) if sends and ends else None  # generation time only: not idle or model load
    energy = energy_per_token(telemetry, n_tokens or None, duration or None, window=window)
    temps = temperature_span(telemetry)
    broken = [r for r in rows if undecodable(r)]
    return {
        "device_kind": device_kind,
        "n_prompts": len(prompt_rows),
        "n_rows": len(rows),
        "throughput": thr,
        "quality": quality,
        "failures": failures,
        "rates": {k: mean_of(float(bool(r.get(k))) for r in rows) for k in ("eos", "truncated", "timed_out",
                                                                           "crashed")}
        | {"failed": failures["failed"] / len(rows) if rows else None,
           "undecodable": len(broken) / len(rows) if rows else None},
        "undecodable": {"rows": len(broken), "replaced_chars": sum(r["replaced_chars"] for r in broken),
                        "prompt_ids": sorted({r["prompt_id"] for r in broken})},
        "roofline_tok_s": roof,
        "roofline_efficiency": plaus["roofline_efficiency"],
        "plausible": plaus["plausible"],
        "plausibility_reason": plaus.get("reason"),
        "throttle_ratio": throttle_ratio(r.get("decode_tok_s")
                                         for r in sorted(answered, key=lambda r: r["t_send"] or 0)),
        "timing_agreement": statistics.median(ratios) if ratios else None,
        "energy_j_per_token": energy.get("j_per_token"),
        "energy_reason": energy.get("reason"),
        "temp_start_c": temps["start_c"],
        "temp_end_c": temps["end_c"],
        "temp_reason": temps["reason"],
    }


def device_bandwidth(push_device: Mapping[str, Any], override_gb_s: float | None,
                     table: Mapping[str, float]) -> tuple[float | None, str | None]:
    """Peak DRAM bandwidth for the roofline, with the reason when unknown (never a guess)."""
    if override_gb_s:
        return override_gb_s, None
    if push_device.get("kind") == "virtual":
        return None, "virtual device: the host's memory bandwidth is not a phone's — no roofline"
    props = push_device.get("props") or {}
    soc, chip = soc_of(props) or "", chip_of(props) or ""
    if chip in table:
        return float(table[chip]), None
    return None, f"SoC {soc or 'unknown'} not in scoring.soc_bandwidth_gb_s — set device.bandwidth_gb_s"


def mean_of(values) -> float | None:
    """Mean of the non-null values (None when there are none)."""
    xs = [float(v) for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None
