"""A REAL MLflow sqlite store with synthetic but realistic sweeps, built once per test module.

Design ``SW2X2`` (4 children under 1 parent): model.name {tiny-fp, tiny-w4} × app.template {mobilequant, hf-chat}.
Per-prompt quality = prompt difficulty + TEMPLATE_EFFECT (hf-chat) + QUANT_EFFECT (tiny-w4) + seeded noise, so the
factor analysis has a known answer. Answers: the w4 runs repeat the FP twin's answer for the first
``DIVERGE_AT[i]`` words of prompt i (None = identical), then say something else.
Design ``SWMISS``: tiny-fp without responses.jsonl and tiny-w8 without quality.jsonl (missing-artifact paths).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipeline import tracking

EXPERIMENT = "odeval-report-test"
SW2X2 = "sweep-2x2"
SWMISS = "sweep-missing"
N_PROMPTS = 12
TEMPLATE_EFFECT = 0.30   # hf-chat − mobilequant
QUANT_EFFECT = -0.08     # tiny-w4 − tiny-fp
NOISE = 0.05
# first diverging whitespace token of the w4 answer vs the FP answer, per prompt (None: identical answer)
DIVERGE_AT = [None, 0, 3, None, 5, 1, None, 2, 7, 4, None, 6]


def _config(model: str, template: str, tag: str) -> dict:
    quant = {"tiny-fp": "fp32", "tiny-w8": "w8", "tiny-w4": "w4"}[model]
    return {"model": {"name": model, "quant": quant, "source": "builtin", "max_seq_len": 1024},
            "app": {"name": "reference", "template": template},
            "session": {"name": "shared", "mode": "shared"},
            "sequence": {"name": "s256", "context": 160, "max_new_tokens": 80},
            "prompts": {"name": "qa"}, "prompting": {"name": "plain"},
            "device": {"kind": "virtual", "name": "virtual"},
            "tracking": {"experiment": EXPERIMENT}, "tag": tag}


def fp_answer(i: int, template: str) -> str:
    return f"answer {i} in the {template} style: the capital of country {i} is city {i} , of course ."


def w4_answer(i: int, template: str) -> str:
    words = fp_answer(i, template).split()
    k = DIVERGE_AT[i]
    return " ".join(words) if k is None else " ".join([*words[:k], "zebra", "ink", "paragraph", str(i)])


def prompt_quality(model: str, template: str, rng: random.Random) -> list[float]:
    out = []
    for i in range(N_PROMPTS):
        q = 0.35 + 0.02 * i + (TEMPLATE_EFFECT if template == "hf-chat" else 0.0)
        q += QUANT_EFFECT if model != "tiny-fp" else 0.0
        out.append(min(1.0, max(0.0, q + rng.uniform(-NOISE, NOISE))))
    return out


def _write_artifacts(d: Path, model: str, template: str, qs: list[float], *, responses: bool,
                     quality: bool) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    if responses:
        rows = [{"prompt_id": "warm", "repeat": 0, "warmup": True, "response": "warm-up"}]
        for i in range(N_PROMPTS):
            text = fp_answer(i, template) if model == "tiny-fp" else w4_answer(i, template)
            rows.append({"prompt_id": f"q{i:02d}", "repeat": 0, "warmup": False, "response": text, "eos": True})
        (d / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(d / "responses.jsonl")
    if quality:
        rows = [{"id": f"q{i:02d}", "reference_match": q, "quality_score": q} for i, q in enumerate(qs)]
        (d / "quality.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(d / "quality.jsonl")
    return paths


def _metrics(model: str, qs: list[float], rng: random.Random) -> dict:
    tok = {"tiny-fp": 400.0, "tiny-w8": 420.0, "tiny-w4": 450.0}[model] + rng.uniform(-5, 5)
    return {"throughput.decode_tok_s.mean": tok, "throughput.decode_tok_s.std": 12.0,
            "throughput.decode_tok_s.n": float(N_PROMPTS), "throughput.ttft_s.p50": 0.05 + rng.uniform(0, 0.01),
            "quality.score": sum(qs) / len(qs), "quality.reference_match": sum(qs) / len(qs),
            "quality.relevance": 0.2, "quality.on_topic_rate": 0.75, "rates.eos": 0.9, "rates.truncated": 0.1,
            "n_prompts": float(N_PROMPTS), "energy_j_per_token": None, "plausible": None}


def _log(uri: str, parent: str, sweep: str, model: str, template: str, d: Path, rng: random.Random,
         **art: bool) -> str:
    qs = prompt_quality(model, template, rng)
    return tracking.log_run(
        tracking_uri=uri, experiment=EXPERIMENT, run_key=f"{sweep}-{model}-{template}",
        params=_config(model, template, tag="diagnose-offtopic" if sweep == SW2X2 else "other"),
        metrics=_metrics(model, qs, rng),
        tags={"device.kind": "virtual", "device.model": "odeval-virtual", "sweep_id": sweep,
              "throughput_source": "host"},
        artifacts=_write_artifacts(d, model, template, qs, **{"responses": True, "quality": True, **art}),
        parent_run_id=parent, run_name=f"{model}:{template}")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Both sweeps in one sqlite store (MLflow's import and migrations cost seconds: build once per module)."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    rng = random.Random(1234)
    ids: dict[str, str] = {}
    parent = tracking.get_or_create_parent(tracking_uri=uri, experiment=EXPERIMENT, sweep_id=SW2X2)
    for model in ("tiny-fp", "tiny-w4"):
        for template in ("mobilequant", "hf-chat"):
            ids[f"{model}:{template}"] = _log(uri, parent, SW2X2, model, template, root / f"{model}-{template}", rng)
    parent2 = tracking.get_or_create_parent(tracking_uri=uri, experiment=EXPERIMENT, sweep_id=SWMISS)
    ids["miss:fp"] = _log(uri, parent2, SWMISS, "tiny-fp", "mobilequant", root / "m-fp", rng, responses=False)
    ids["miss:w8"] = _log(uri, parent2, SWMISS, "tiny-w8", "mobilequant", root / "m-w8", rng, quality=False)
    return {"uri": uri, "root": root, "parent": parent, "ids": ids}


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow falls back to sqlite:///<cwd>/mlflow.db in places: never let that be the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/stray.db")
