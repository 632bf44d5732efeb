"""pipeline.score.stats: summaries cross-checked against numpy/statistics, roofline, plausibility, throttle, energy."""

from __future__ import annotations

import math
import random
import statistics

import numpy as np
import pytest

from pipeline.score import stats


@pytest.mark.parametrize("n", [1, 2, 3, 7, 50])
def test_summarize_matches_numpy_and_statistics(n: int) -> None:
    rng = random.Random(n)
    values = [rng.uniform(1, 40) for _ in range(n)]
    s = stats.summarize(values)
    assert s["n"] == n and s["n_missing"] == 0
    assert s["mean"] == pytest.approx(statistics.fmean(values))
    assert s["p50"] == pytest.approx(float(np.percentile(values, 50, method="linear")))
    assert s["p90"] == pytest.approx(float(np.percentile(values, 90, method="linear")))
    assert s["min"] == min(values) and s["max"] == max(values)
    if n >= 2:
        assert s["std"] == pytest.approx(statistics.stdev(values))
        assert s["cv"] == pytest.approx(statistics.stdev(values) / statistics.fmean(values))
    else:
        assert s["std"] is None and s["cv"] is None


def test_summarize_skips_and_counts_missing() -> None:
    s = stats.summarize([None, 2.0, float("nan"), 4.0, float("inf")])
    assert s["n"] == 2 and s["n_missing"] == 3
    assert s["mean"] == pytest.approx(3.0)
    assert s["p50"] == pytest.approx(3.0)


@pytest.mark.parametrize("values", [[], [None, None], iter(())])
def test_summarize_empty_is_all_null(values) -> None:
    s = stats.summarize(values)
    assert s["n"] == 0
    assert all(s[k] is None for k in ("mean", "p50", "p90", "std", "cv", "min", "max"))


def test_summarize_zero_mean_has_no_cv() -> None:
    s = stats.summarize([-1.0, 1.0])
    assert s["mean"] == 0 and s["std"] is not None and s["cv"] is None


def test_summarize_rejects_non_numbers() -> None:
    with pytest.raises(stats.StatsError, match="not a number"):
        stats.summarize([1.0, "fast"])


def test_roofline_seed_numbers() -> None:
    # MobileQuant facts: 8 Gen 3 ~76.8 GB/s, 1.1 B params at 4 bits ≈ 0.55 GB → ≈ 140 tok/s
    bw, wb = 76.8e9, int(1.1e9 * 4 / 8)
    assert stats.roofline_tok_s(bw, wb) == pytest.approx(bw / wb)
    assert stats.roofline_tok_s(None, wb) is None
    assert stats.roofline_tok_s(bw, None) is None
    with pytest.raises(stats.StatsError, match="weight_bytes"):
        stats.roofline_tok_s(bw, 0)


def test_plausibility() -> None:
    roof = stats.roofline_tok_s(76.8e9, 550_000_000)
    ok = stats.plausibility(19.78, roof)
    assert ok["plausible"] is True and ok["reason"] is None
    assert ok["roofline_efficiency"] == pytest.approx(19.78 / roof)
    bad = stats.plausibility(roof * 1.5, roof)
    assert bad["plausible"] is False and "exceeds" in bad["reason"]
    assert stats.plausibility(roof * 1.05, roof, tolerance=0.1)["plausible"] is True
    unknown = stats.plausibility(20.0, None)
    assert unknown["plausible"] is None and unknown["roofline_efficiency"] is None and "roofline" in unknown["reason"]
    assert stats.plausibility(None, roof)["plausible"] is None


def test_throttle_ratio() -> None:
    assert stats.throttle_ratio([10, 10]) is None
    assert stats.throttle_ratio([10, None, 12, 5]) == pytest.approx(5 / 10)  # 3 valid → thirds of 1
    rates = [20, 20, 19, 15, 14, 10, 10, 10, 10]
    assert stats.throttle_ratio(rates) == pytest.approx(statistics.fmean(rates[-3:]) / statistics.fmean(rates[:3]))
    assert stats.throttle_ratio([0, 1, 2]) is None


def _samples(power: list[float | None], status: str | None = "Discharging") -> list[dict]:
    return [{"t": float(i), "power_w": p, "battery_status": status} for i, p in enumerate(power)]


def test_energy_per_token() -> None:
    r = stats.energy_per_token(_samples([2.0, 4.0, None]), n_tokens=30, duration=10.0)
    assert r["reason"] is None and r["n_samples"] == 2
    assert r["mean_power_w"] == pytest.approx(3.0)
    assert r["j_per_token"] == pytest.approx(3.0 * 10.0 / 30)
    windowed = stats.energy_per_token(_samples([2.0, 4.0, 8.0]), 10, 2.0, window=(1.0, 2.0), baseline_w=1.0)
    assert windowed["mean_power_w"] == pytest.approx(5.0)


@pytest.mark.parametrize(
    ("samples", "n_tokens", "duration", "needle"),
    [
        (_samples([2.0], status="Charging"), 10, 1.0, "Charging"),
        (_samples([None, None]), 10, 1.0, "no power samples"),
        (_samples([2.0]), 0, 1.0, "no generated tokens"),
        (_samples([2.0]), 10, None, "duration"),
        (_samples([2.0]), 10, math.nan, "duration"),
    ],
)
def test_energy_per_token_null_with_reason(samples, n_tokens, duration, needle) -> None:
    r = stats.energy_per_token(samples, n_tokens, duration)
    assert r["j_per_token"] is None and needle in r["reason"]


def test_temperature_span() -> None:
    samples = [{"thermal": None}, {"thermal": {"cpu": 40.0, "gpu": 38.0}}, {"thermal": {"cpu": 55.5, "bat": 30.0}},
               {"thermal": {"cpu": 49.0}}]
    assert stats.temperature_span(samples) == {"start_c": 40.0, "end_c": 49.0, "max_c": 55.5, "reason": None}
    empty = stats.temperature_span([{"thermal": None}])
    assert empty["max_c"] is None and "thermal" in empty["reason"]
