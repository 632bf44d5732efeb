"""Factor analysis for the off-topic diagnosis: which varying param moves answer quality most?

Why matched pairs: in a sweep several things vary at once; comparing the mean quality of all ``hf-chat`` runs with
all ``mobilequant`` runs mixes in whatever else differs between those groups when the design is unbalanced.
So each level is compared with the baseline level only across pairs of runs that differ in that factor ALONE
(same value of every other factor), and the delta is the mean over those pairs.
Why per-prompt spread: with a 2×2 design a factor has two pairs — a standard deviation over two numbers says
little. The runs' ``quality.jsonl`` gives a quality score per prompt, so the paired delta per prompt (averaged
over pairs) gives n = prompts, a standard deviation and a bootstrap CI over prompts. When per-prompt data are
missing the spread falls back to the pairs, and the report says so.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pipeline.report import ReportError
from pipeline.report.runs import RunRecord, measured_rows
from pipeline.report.variants import Factor, value
from pipeline.score.stats import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, bootstrap_ci  # noqa: F401 (re-exported)


@dataclass
class LevelEffect:
    """One level compared with the factor's baseline over matched pairs. ``delta`` = level − baseline."""

    level: str
    baseline: str
    n_pairs: int = 0
    n_prompts: int = 0
    mean_level: float | None = None
    mean_baseline: float | None = None
    delta: float | None = None
    sd: float | None = None
    ci95: tuple[float, float] | None = None
    spread_over: str = "prompts"
    notes: list[str] = field(default_factory=list)
    answers_level: float | None = None  # share of answers that are answers by form (answer_rate), matched runs
    answers_baseline: float | None = None


@dataclass
class FactorEffect:
    """A factor's baseline, the marginal mean per level (all runs), and each level's matched effect."""

    factor: Factor
    baseline: str
    marginal: dict[str, tuple[float | None, int]]
    levels: list[LevelEffect]

    @property
    def top(self) -> LevelEffect | None:
        """The level with the largest |delta| (the factor's effect size for the ranking)."""
        known = [e for e in self.levels if e.delta is not None]
        return max(known, key=lambda e: abs(e.delta)) if known else None


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def _sd(xs: Sequence[float]) -> float | None:
    """Sample standard deviation (n−1); None below two values."""
    if len(xs) < 2:
        return None
    m = sum(xs) / len(xs)
    return (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5


def prompt_quality(rec: RunRecord) -> tuple[dict[str, float] | None, str | None]:
    """Per-prompt mean ``quality_score`` from quality.jsonl (repeats averaged); (None, reason) when unavailable.

    quality.jsonl rows carry ``id``; older files without it are aligned with the measured responses.jsonl rows
    (the score stage writes both in the same order).
    """
    qrows = rec.rows("quality.jsonl")
    if qrows is None:
        return None, rec.reason("quality.jsonl")
    ids = [q.get("id", q.get("prompt_id")) for q in qrows]
    if any(i is None for i in ids):
        resp = measured_rows(rec.rows("responses.jsonl"))
        if resp is None or len(resp) != len(qrows):
            return None, f"quality.jsonl of run {rec.run_id[:8]} has no ids and cannot be aligned with responses"
        ids = [r.get("prompt_id") for r in resp]
    acc: dict[str, list[float]] = defaultdict(list)
    for pid, q in zip(ids, qrows, strict=True):
        if q.get("quality_score") is not None:
            acc[str(pid)].append(float(q["quality_score"]))
    if not acc:
        return None, f"quality.jsonl of run {rec.run_id[:8]} has no quality_score values"
    return {pid: sum(v) / len(v) for pid, v in acc.items()}, None


def answer_rate(rec: RunRecord) -> float | None:
    """Share of a run's scored rows that are answers by their form (quality.jsonl ``is_answer``: not empty, no
    leak, no loop, not noise, right script); failed rows (crash, time-out) count as not answers. None for runs
    scored before ``is_answer`` existed.

    WHY in the report: a delta says how much quality moved, not why; "w3: 0 of 16 are answers" is the why that the
    docs used to add by hand (⚠) when the composite still rewarded noise.
    """
    flags = []
    for q in rec.rows("quality.jsonl") or ():
        if "is_answer" in q:
            flags.append(bool(q["is_answer"]))
        elif q.get("failed"):
            flags.append(False)
    return sum(flags) / len(flags) if flags else None


def cells(records: Sequence[RunRecord], facs: Sequence[Factor]) -> tuple[dict[tuple[str, ...], RunRecord], int]:
    """Design cell (every factor's level) → run; repeated cells keep the newest run. Returns (cells, n dropped)."""
    out: dict[tuple[str, ...], RunRecord] = {}
    for r in sorted(records, key=lambda r: r.start_time):
        out[tuple(value(r, f.key) for f in facs)] = r
    return out, len(records) - len(out)


def default_baseline(fac: Factor, fp_model: str, overrides: Mapping[str, str]) -> str:
    """--baseline key=level wins; the FP model for model.name; otherwise the first level in natural order."""
    for key in (fac.key, *fac.aliases):
        if key in overrides:
            if overrides[key] not in fac.levels:
                raise ReportError(f"--baseline {key}={overrides[key]}: not a level of {fac.key} in the selected runs "
                                  f"(levels: {', '.join(fac.levels)})")
            return overrides[key]
    if fac.key == "model.name" and fp_model in fac.levels:
        return fp_model
    return fac.levels[0]


def _level_effect(grid: Mapping[tuple[str, ...], RunRecord], idx: int, level: str, baseline: str,
                  pq: Mapping[str, tuple[dict[str, float] | None, str | None]]) -> LevelEffect:
    """Matched comparison of ``level`` against ``baseline`` for the factor at position ``idx`` of the cell key."""
    eff = LevelEffect(level=level, baseline=baseline)
    run_deltas, q_lvl, q_base = [], [], []
    a_lvl: list[float] = []
    a_base: list[float] = []
    per_prompt: dict[str, list[float]] = defaultdict(list)
    every_pair_per_prompt = True
    for key, rec in grid.items():
        if key[idx] != level:
            continue
        base = grid.get((*key[:idx], baseline, *key[idx + 1:]))
        if base is None:
            continue
        a, b = rec.metric("quality.score"), base.metric("quality.score")
        if a is None or b is None:
            eff.notes.append(f"pair {base.run_id[:8]}/{rec.run_id[:8]}: quality.score missing — pair skipped")
            continue
        eff.n_pairs += 1
        run_deltas.append(a - b)
        q_lvl.append(a)
        q_base.append(b)
        ra, rb = answer_rate(rec), answer_rate(base)
        if ra is not None and rb is not None:
            a_lvl.append(ra)
            a_base.append(rb)
        (pa, ra), (pb, rb) = pq[rec.run_id], pq[base.run_id]
        if pa is None or pb is None:
            eff.notes.append(f"pair {base.run_id[:8]}/{rec.run_id[:8]}: no per-prompt quality ({ra or rb})")
            every_pair_per_prompt = False
            continue
        common = sorted(set(pa) & set(pb))
        if not common:
            eff.notes.append(f"pair {base.run_id[:8]}/{rec.run_id[:8]}: no prompt ids in common")
            every_pair_per_prompt = False
        for pid in common:
            per_prompt[pid].append(pa[pid] - pb[pid])
    if not eff.n_pairs:
        eff.notes.append(f"no pair of runs differs only in this factor ({baseline} vs {level})")
        return eff
    eff.delta, eff.mean_level, eff.mean_baseline = _mean(run_deltas), _mean(q_lvl), _mean(q_base)
    eff.answers_level, eff.answers_baseline = _mean(a_lvl), _mean(a_base)
    if per_prompt and every_pair_per_prompt:
        d = [sum(v) / len(v) for v in per_prompt.values()]
        eff.n_prompts, eff.sd, eff.ci95, eff.spread_over = len(d), _sd(d), bootstrap_ci(d), "prompts"
    else:
        eff.spread_over, eff.sd, eff.ci95 = "pairs", _sd(run_deltas), bootstrap_ci(run_deltas)
        eff.notes.append("spread over run pairs, not prompts (per-prompt quality missing for some pair)")
    return eff


def analyse(records: Sequence[RunRecord], facs: Sequence[Factor], *, fp_model: str = "tiny-fp",
            baselines: Mapping[str, str] | None = None) -> tuple[list[FactorEffect], int]:
    """Effect of every factor, ranked by |delta| of its strongest level (unknown effects last).

    Returns (effects, number of duplicate runs ignored because an identical cell had a newer run).
    """
    known = {k for f in facs for k in (f.key, *f.aliases)}
    unknown = sorted(set(baselines or {}) - known)
    if unknown:
        raise ReportError(f"--baseline {unknown[0]}: not a param that varies across the selected runs "
                          f"(factors: {', '.join(f.key for f in facs) or 'none'})")
    grid, dropped = cells(records, facs)
    pq = {r.run_id: prompt_quality(r) for r in grid.values()}
    effects = []
    for idx, fac in enumerate(facs):
        base = default_baseline(fac, fp_model, baselines or {})
        marginal = {}
        for lvl in fac.levels:
            qs = [q for k, r in grid.items() if k[idx] == lvl and (q := r.metric("quality.score")) is not None]
            marginal[lvl] = (_mean(qs), len(qs))
        levels = [_level_effect(grid, idx, lvl, base, pq) for lvl in fac.levels if lvl != base]
        effects.append(FactorEffect(factor=fac, baseline=base, marginal=marginal, levels=levels))
    effects.sort(key=lambda e: (e.top is None, -abs(e.top.delta) if e.top else 0.0))
    return effects, dropped
