"""IFEval's four accuracies are headline metrics (MLflow and metrics/headline.json) only for runs that have them: a
qa run did not fail to measure them, so they must not appear in its missing_metrics or its description."""

from __future__ import annotations

from pipeline import tracking
from pipeline.score.headline import headline, headline_metrics

BASE = {"device_kind": "virtual", "throughput": {"decode_tok_s": {"mean": 12.5}, "ttft_s": {"p50": 0.21}},
        "quality": {"score": 0.7, "on_topic_rate": 0.75}, "energy_j_per_token": None}


def test_a_run_without_ifeval_has_no_ifeval_headline():
    head = headline_metrics(BASE)
    assert not any(k.startswith("ifeval") for k in head)
    assert "IFEval" not in tracking.run_description({"device_kind": "virtual", "n_prompts": 4}, head)


def test_an_ifeval_run_logs_the_four_accuracies_under_plain_names():
    score = BASE | {"ifeval": {"prompt_strict": {"value": 0.25}, "prompt_loose": {"value": 0.3},
                               "instruction_strict": {"value": 0.4}, "instruction_loose": {"value": None}}}
    head = headline_metrics(score)
    assert head["ifeval_prompt_strict"] == 0.25 and head["ifeval_instruction_strict"] == 0.4
    assert "ifeval_instruction_loose" in head and head["ifeval_instruction_loose"] is None  # null stays null
    assert headline(score)["ifeval_prompt_strict"] == 0.25  # DVC's metrics too
    text = tracking.run_description({"device_kind": "virtual", "n_prompts": 21}, head)
    assert "| IFEval prompt-level strict accuracy (`ifeval_prompt_strict`) | 0.250 |" in text
    assert "(`ifeval_instruction_loose`) | not measured |" in text
