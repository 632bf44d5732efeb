"""Throughput statistics and plausibility checks for the score stage.

Why a module of its own: the numbers that end up in ``metrics/score.json`` and MLflow must be computed one way
everywhere (per prompt, overall, per sweep job) and must say *why* a value is missing instead of inventing one.
Pure Python on purpose (numpy only inside :func:`bootstrap_ci`): the score stage calls these on a few thousand
floats at most.

Conventions used by every function here:
- ``None`` and non-finite floats (NaN, ±inf) are *missing* values: skipped and counted, never averaged in.
- Percentiles use linear interpolation between closest ranks (Hyndman & Fan type 7 — numpy's default
  ``method="linear"``, Excel's ``PERCENTILE.INC``): ``p = x[floor(h)] + (h - floor(h)) * (x[floor(h)+1] - x[floor(h)])``
  with ``h = (n - 1) * q``. With one value every percentile is that value.
- ``std`` is the *sample* standard deviation (divisor n − 1): repeats are a sample of the device's behaviour, and
  the population formula would understate the spread for the small n (3–10 repeats) we have. It is ``None`` for
  n < 2. ``cv`` = std / mean (``None`` when std is None or mean is 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "StatsError",
    "summarize",
    "percentile",
    "roofline_tok_s",
    "plausibility",
    "throttle_ratio",
    "energy_per_token",
    "temperature_span",
    "bootstrap_ci",
]

# The one resampling every quality interval uses (score.json, the report, its contrasts): seeded, so re-scoring
# the same answers gives the same interval.
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0

# Battery states in which the battery current does not measure what the phone draws: on USB the charger feeds
# the system, so the battery current is (charge − draw) or ~0 when full.
_CHARGER_STATES = frozenset({"charging", "full", "not charging"})


class StatsError(ValueError):
    """A statistic was asked for with arguments that are a configuration bug (e.g. negative bandwidth)."""


def _finite(value: Any) -> float | None:
    """Return value as float, or None when it is missing (None, NaN, ±inf) — why: one rule for 'missing'."""
    if value is None:
        return None
    try:
        x = float(value)
    except (TypeError, ValueError) as exc:
        raise StatsError(f"not a number: {value!r} (expected float or None)") from exc
    return x if math.isfinite(x) else None


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Type-7 (linear) percentile of already sorted values, q in [0, 1]; see the module docstring."""
    if not sorted_values:
        raise StatsError("percentile of an empty sequence")
    if not 0.0 <= q <= 1.0:
        raise StatsError(f"percentile q={q!r} outside [0, 1]")
    h = (len(sorted_values) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (h - lo) * (sorted_values[hi] - sorted_values[lo])


def summarize(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """mean, p50, p90, std, cv, min, max, n, n_missing of values; missing values skipped and counted.

    Empty (or all missing) input gives every statistic ``None`` with ``n`` 0, so a prompt set whose every answer
    crashed still produces a well-formed score.json rather than a ZeroDivisionError.
    """
    kept: list[float] = []
    n_missing = 0
    for v in values:
        x = _finite(v)
        if x is None:
            n_missing += 1
        else:
            kept.append(x)
    out: dict[str, float | int | None] = dict.fromkeys(("mean", "p50", "p90", "std", "cv", "min", "max"))
    out["n"] = len(kept)
    out["n_missing"] = n_missing
    if not kept:
        return out
    kept.sort()
    mean = math.fsum(kept) / len(kept)
    out.update(mean=mean, p50=percentile(kept, 0.5), p90=percentile(kept, 0.9), min=kept[0], max=kept[-1])
    if len(kept) >= 2:
        std = math.sqrt(math.fsum((x - mean) ** 2 for x in kept) / (len(kept) - 1))
        out["std"] = std
        out["cv"] = std / mean if mean != 0 else None
    return out


def roofline_tok_s(bandwidth_bytes_s: float | None, weight_bytes: int | None) -> float | None:
    """Memory-bandwidth ceiling for single-stream decode: bandwidth / weight bytes (tokens per second).

    Why it is a ceiling: decoding one token at batch 1 reads every weight once from DRAM, so no implementation can
    beat it (KV-cache reads and activations only lower the real bound). It ignores weights cached on-chip, which is
    negligible for a 0.5 GB model. None when either input is unknown (e.g. the virtual device has no bandwidth).
    """
    if bandwidth_bytes_s is None or weight_bytes is None:
        return None
    if bandwidth_bytes_s <= 0 or weight_bytes <= 0:
        raise StatsError(
            f"roofline needs positive bandwidth_bytes_s and weight_bytes, got {bandwidth_bytes_s!r} and "
            f"{weight_bytes!r}: fix the SoC bandwidth table or model.weight_bytes in conf/"
        )
    return float(bandwidth_bytes_s) / float(weight_bytes)


def plausibility(decode_tok_s: float | None, roofline: float | None, *, tolerance: float = 0.0) -> dict[str, Any]:
    """Flag a decode rate above the bandwidth roofline: ``plausible`` False, with efficiency and a reason.

    Published on-device numbers have exceeded this ceiling; a measured rate above it means the token count, the
    timing, or the bandwidth/weight_bytes inputs are wrong. ``tolerance`` (fraction, default 0) allows for a
    bandwidth figure that is itself approximate. ``plausible`` is None when either number is unknown.
    """
    rate = _finite(decode_tok_s)
    ceiling = _finite(roofline)
    if rate is None or ceiling is None:
        missing = "decode_tok_s" if rate is None else "roofline_tok_s"
        return {"plausible": None, "roofline_efficiency": None, "reason": f"{missing} unknown: no ceiling check"}
    if ceiling <= 0:
        raise StatsError(f"roofline_tok_s must be positive, got {roofline!r}")
    eff = rate / ceiling
    if eff > 1.0 + tolerance:
        reason = (
            f"decode rate {rate:.3g} tok/s exceeds the memory-bandwidth roofline {ceiling:.3g} tok/s "
            f"(efficiency {eff:.2f}): check the token counting/timing, or the bandwidth and model.weight_bytes"
        )
        return {"plausible": False, "roofline_efficiency": eff, "reason": reason}
    return {"plausible": True, "roofline_efficiency": eff, "reason": None}


def throttle_ratio(rates_in_time_order: Iterable[float | None]) -> float | None:
    """Mean of the last third of the rates ÷ mean of the first third (< 1: the device slowed down, e.g. thermal).

    Missing rates (crashed prompts) are dropped before splitting; thirds have ``n // 3`` values each, so the
    middle absorbs the remainder. None with fewer than 3 valid rates or a first third averaging 0.
    """
    kept = [x for x in (_finite(v) for v in rates_in_time_order) if x is not None]
    k = len(kept) // 3
    if k == 0:
        return None
    first = math.fsum(kept[:k]) / k
    last = math.fsum(kept[-k:]) / k
    return last / first if first != 0 else None


def energy_per_token(
    samples: Sequence[Mapping[str, Any]],
    n_tokens: int | None,
    duration: float | None,
    *,
    window: tuple[float, float] | None = None,
    baseline_w: float = 0.0,
) -> dict[str, Any]:
    """Joules per generated token from telemetry ``power_w`` samples: mean power × duration ÷ tokens.

    What it measures: whole-device battery draw (screen, radios and other processes included), optionally minus an
    idle ``baseline_w`` — compare runs on one device under the same conditions, not across phones. ``power_w`` is
    |I|·V because vendors disagree on the sign of ``current_now`` (see telemetry). While the phone is on a charger
    (status Charging/Full/Not charging, e.g. USB adb) the battery current is not the draw: the result is then None
    with that reason. ``window`` = (t_start, t_end) restricts samples to the generation time (host monotonic s).

    Returns ``{"j_per_token", "energy_j", "mean_power_w", "n_samples", "reason"}``.
    """
    out: dict[str, Any] = {"j_per_token": None, "energy_j": None, "mean_power_w": None, "n_samples": 0, "reason": None}
    chosen = [s for s in samples if window is None or (s.get("t") is not None and window[0] <= s["t"] <= window[1])]
    charging = sorted({str(s.get("battery_status")) for s in chosen
                       if str(s.get("battery_status", "")).strip().lower() in _CHARGER_STATES})
    powers = [p for p in (_finite(s.get("power_w")) for s in chosen) if p is not None]
    out["n_samples"] = len(powers)
    if not n_tokens or n_tokens <= 0:
        out["reason"] = "no generated tokens"
    elif _finite(duration) is None or duration <= 0:
        out["reason"] = f"generation duration unknown or not positive ({duration!r})"
    elif charging:
        out["reason"] = (f"battery status {', '.join(charging)} during the window: the battery current is not the "
                         "device's draw; measure on battery (wireless adb) or with an external power meter")
    elif not powers:
        out["reason"] = "no power samples in the window (battery current/voltage not exposed, or sampling too sparse)"
    if out["reason"]:
        return out
    mean_w = math.fsum(powers) / len(powers) - baseline_w
    out["mean_power_w"] = mean_w
    out["energy_j"] = mean_w * float(duration)
    out["j_per_token"] = out["energy_j"] / n_tokens
    return out


def temperature_span(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Hottest thermal zone at the first and last telemetry sample, and the peak — shown next to throttle_ratio
    so a slowdown can be read against heat. Uses the max over zones per sample (zone names differ per SoC)."""
    peaks = [max(vals) for s in samples
             if isinstance(s.get("thermal"), Mapping)
             and (vals := [x for x in map(_finite, s["thermal"].values()) if x is not None])]
    if not peaks:
        return {"start_c": None, "end_c": None, "max_c": None, "reason": "no thermal zone readings in telemetry"}
    return {"start_c": peaks[0], "end_c": peaks[-1], "max_c": max(peaks), "reason": None}


def bootstrap_ci(xs: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """Percentile 95% CI of the mean by resampling ``xs`` with replacement (seeded: the report is reproducible)."""
    if len(xs) < 2:
        return None
    import numpy as np

    arr = np.asarray(xs, dtype=float)
    rng = np.random.default_rng(seed)
    means = arr[rng.integers(0, len(arr), size=(resamples, len(arr)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)
