"""Foundation: the config tree composes, validates with clear messages, and params.yaml agrees with conf/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from pipeline.config import CONF_DIR, ConfigError, compose, to_config
from pipeline.params import load_params

REPO = Path(__file__).resolve().parents[2]


def problems(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as e:
        to_config(compose(overrides))
    return str(e.value)


def test_default_composition_is_the_offline_demo():
    cfg = to_config(compose())
    assert (cfg.device.kind, cfg.app.name, cfg.model.name) == ("virtual", "reference", "tiny-fp")
    assert cfg.prompts.name == "qa"
    assert (cfg.sequence.name, cfg.session.mode, cfg.tracking.backend) == ("s256", "fresh", "mlflow")
    assert cfg.tracking.tracking_uri == "sqlite:///mlflow.db"


@pytest.mark.parametrize(
    "overrides, must_name",
    [
        (["sequence.context=5000"], ["sequence.context", "model.max_seq_len", "5000"]),
        (["runtime.repeats=0"], ["runtime.repeats=0", "≥ 1"]),
        (["model.source=hub", "model.repo_id=null"], ["model.repo_id", "model.source=hub"]),
        (["model.source=hub", "model.repo_id=a/b", "model.revision=null"], ["model.revision"]),
        (["device=adb"], ["device.kind=adb", "app=simple-app-8gen3"]),
        (["model=mobilequant-w4a8-8gen3"], ["standin_model", "device=adb"]),
        (["app=simple-app-8gen3", "device=adb", "app.template=hf-chat"], ["app.template", "reference app"]),
        (["session.mode=sometimes"], ["session.mode", "fresh, shared"]),
        (["runtime.repeats=abc"], ["runtime.repeats", "abc"]),
        (["+runtime.repeat=3"], ["runtime.repeat", "not in"]),
        (["prompting.template=no placeholder"], ["prompting.template", "{prompt}"]),
        (["+app.env.HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz"], ["app.env.HF_TOKEN", "secret", "environment"]),
        (["app=simple-app-8gen2", "device=adb", "model=mobilequant-w4a8-8gen3"], ["app.path", "source=local"]),
    ],
)
def test_validation_names_key_value_and_fix(overrides, must_name):
    msg = problems(overrides)
    for needle in must_name:
        assert needle in msg, f"{needle!r} missing from: {msg}"


def test_all_problems_reported_at_once():
    msg = problems(["sequence.context=5000", "runtime.repeats=0", "runtime.warmup=-1"])
    assert msg.count("\n  - ") == 3


def test_secret_check_does_not_flag_token_counts_or_ids():
    cfg = to_config(compose(["sequence.max_new_tokens=10", "app.past_end_token=0"]))
    assert cfg.sequence.max_new_tokens == 10 and cfg.app.past_end_token == 0
    from pipeline.secrets import redact

    assert redact({"app": {"past_end_token": 0, "env": {"HF_TOKEN": "x"}}}) == {
        "app": {"past_end_token": 0, "env": {"HF_TOKEN": "***"}}}


def test_every_group_option_has_a_matching_name_key():
    """params.yaml records values, not choices: the `name:` key is how dvc exp show / MLflow tell options apart."""
    for f in CONF_DIR.glob("*/*.yaml"):
        if f.parent.name in ("experiment", "diag", "compare", "hydra", "local"):  # diag, compare: _global_ presets
            continue
        data = yaml.safe_load(f.read_text())
        assert data.get("name") == f.stem, f"{f}: name must be {f.stem!r}"


# Options that need a companion setting to be valid; each entry says why. Every other option validates alone.
COMPANIONS = {
    ("app", "simple-app-8gen2"): ["app.path=/tmp/simple-app-8gen2", "device=adb"],  # local build; a phone
    ("app", "simple-app-8gen3"): ["device=adb"],                 # a phone binary (validates with the virtual too)
    ("device", "adb"): ["app=simple-app-8gen3"],                 # the reference app runs only on the virtual device
    ("model", "mobilequant-w4a8-8gen3"): ["device=adb", "app=simple-app-8gen3"],  # QNN: a Snapdragon HTP only
    ("model", "mobilequant-w8a8-8gen3"): ["device=adb", "app=simple-app-8gen3"],
    ("prompts", "custom"): ["prompts.path=my.jsonl"],            # your own file
    ("app", "llama-cpp"): ["model=smollm2-q4"],                  # llama.cpp runs a GGUF; the default model is not one
}
GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "local"))
OPTIONS = [(g, f.stem) for g in GROUPS for f in sorted((CONF_DIR / g).glob("*.yaml"))]


@pytest.mark.parametrize("group, option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_and_preset_composes_and_validates(group, option):
    if group in ("diag", "compare"):  # not in the root defaults list: their sweeps add them (+diag=..., +compare=...)
        preset = {"diag": "diagnose-offtopic", "compare": "runtime-compare"}[group]
        cfg = to_config(compose([f"experiment={preset}", f"+{group}={option}"]))
        return
    cfg = to_config(compose([f"{group}={option}", *COMPANIONS.get((group, option), [])]))
    if group != "experiment":
        assert getattr(cfg, group).name == option


def test_companions_are_needed():
    """A companion entry that is no longer needed would hide a broken default: each must still be required."""
    for (group, option), _ in COMPANIONS.items():
        if (group, option) == ("app", "simple-app-8gen3"):
            continue  # listed only to test it with a phone config
        with pytest.raises(ConfigError):
            to_config(compose([f"{group}={option}"]))


def test_seed_experiment_reproduces_the_seed():
    raw = compose(["experiment=seed-k70pro"])
    assert raw.model.repo_id == "fwtan/llama-1.1b-mobilequant-w4a8-s1024-e60-sym-8gen3"
    assert raw.app.repo_id == "fwtan/llm_8gen3_demo" and raw.app.device_arg == "8gen3"
    assert (raw.device.kind, raw.prompts.name, raw.session.mode, raw.prompting.template) == (
        "adb", "smoke", "shared", "{prompt}")
    to_config(raw)  # valid as is


def test_committed_params_yaml_is_dvcs_default_composition(tmp_path):
    """A drifted params.yaml would silently run another experiment under `dvc repro`."""
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(CONF_DIR), None, "config", str(tmp_path), [])
    assert yaml.safe_load(out.read_text()) == yaml.safe_load((REPO / "params.yaml").read_text()), (
        "params.yaml drifted from conf/: run `make params` (or `python -m pipeline.params`) and commit it")
    assert yaml.safe_load(out.read_text()) == OmegaConf.to_container(compose())


def test_dvc_composes_overrides_from_conf(tmp_path):
    from dvc.utils.hydra import compose_and_dump

    out = tmp_path / "params.yaml"
    compose_and_dump(out, str(CONF_DIR), None, "config", str(tmp_path), ["model=tiny-w8", "sequence=s512"])
    cfg = load_params(out)
    assert (cfg.model.quant, cfg.sequence.name) == ("w8", "s512")


def test_stale_params_warning_names_the_key(tmp_path, capsys):
    raw = OmegaConf.to_container(compose())
    raw["runtime"]["repeats"] = 7
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    load_params(p)
    out = capsys.readouterr().out
    assert "runtime.repeats" in out and "dvc exp run" in out


def test_params_from_an_experiment_preset_are_not_stale(tmp_path, capsys):
    """`make demo` writes params.yaml with experiment=offline-demo: no warning for the preset's own keys, but an
    edit on top of it is still named."""
    from pipeline.params import write_params

    p = write_params(["experiment=offline-demo"], tmp_path / "params.yaml")
    load_params(p)
    assert "warning" not in capsys.readouterr().out
    p.write_text(p.read_text().replace("template: hf-chat", "template: raw"))
    load_params(p)
    out = capsys.readouterr().out
    assert "app.template (params.yaml 'raw', conf/ 'hf-chat')" in out and "tag" not in out


def test_dvc_yaml_has_exactly_the_four_stages_in_order():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["fetch", "push", "run", "score"]
    outs = {s: [next(iter(o)) if isinstance(o, dict) else o for o in v.get("outs", [])] for s, v in stages.items()}
    assert "artifacts/fetch.json" in stages["push"]["deps"]
    assert "artifacts/push.json" in stages["run"]["deps"] and "artifacts/run" in stages["score"]["deps"]
    assert outs["fetch"] == ["artifacts/fetch.json", "artifacts/fetched"] and "artifacts/run" in outs["run"]
    assert stages["push"]["always_changed"] is True
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, st in stages.items():  # every params key a stage declares exists (DVC fails otherwise)
        for key in st.get("params", []):
            node = params
            for part in key.split("."):
                assert part in node, f"stage {name}: params key {key} not in params.yaml"
                node = node[part]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_cli_prints_composed_config():
    r = run_cli("--cfg", "job", "model=tiny-w4", "sequence=s1024")
    assert r.returncode == 0, r.stderr
    assert "quant: w4" in r.stdout and "max_new_tokens: 240" in r.stdout


def test_cli_rejects_a_budget_over_max_seq_len():
    r = run_cli("--cfg", "job", "sequence.context=5000")
    assert r.returncode != 0
    assert "sequence.context" in r.stderr and "model.max_seq_len" in r.stderr


def test_cli_unknown_option_lists_the_options():
    r = run_cli("--cfg", "job", "model=nope")
    assert r.returncode != 0 and "tiny-w4" in r.stderr


def test_past_end_token_is_null_an_id_or_faithful():
    cfg = to_config(compose(["app.past_end_token=faithful", "app.past_end_unwritten_id=13"]))
    assert (cfg.app.past_end_token, cfg.app.past_end_unwritten_id) == ("faithful", 13)
    msg = problems(["app.past_end_token=stale"])
    assert "app.past_end_token='stale': use null (the fixed app), an integer token id, or faithful" in msg


def test_diagnose_offtopic_flips_one_factor_per_option():
    """Every diag option but `fixed` differs from `as-is` in exactly one of the four factors."""
    keys = ("model.name", "app.template", "app.past_end_token", "session.mode")

    def cell(opt):
        c = to_config(compose(["experiment=diagnose-offtopic", f"+diag={opt}"]))
        return (c.model.name, c.app.template, c.app.past_end_token, c.session.mode)

    base = cell("as-is")
    assert base == ("smollm2-q4", "mobilequant", "faithful", "shared")
    for opt in ("template", "past-end", "session", "ref", "w4", "w3", "a8"):
        diff = [k for k, a, b in zip(keys, base, cell(opt), strict=True) if a != b]
        assert len(diff) == 1, (opt, diff)
    assert cell("fixed") == ("smollm2-q4", "hf-chat", None, "fresh")
    assert cell("a8")[0] == "smollm2-q4a8"
    sweep = yaml.safe_load((CONF_DIR / "experiment" / "diagnose-offtopic.yaml").read_text())
    swept = sweep["hydra"]["sweeper"]["params"]["+diag"].split(",")
    assert sorted(swept) == sorted(f.stem for f in (CONF_DIR / "diag").glob("*.yaml"))  # every preset is swept


def test_model_variants_are_the_converters():
    """config.py lists the variants without importing the converter (numpy); the two lists must agree."""
    from pipeline.config import MODEL_VARIANTS
    from pipeline.models.gguf_model import VARIANTS

    assert MODEL_VARIANTS == VARIANTS
    cfg = to_config(compose(["model=smollm2-q4a8"]))
    assert (cfg.model.variant, cfg.model.quant) == ("gguf-a8", "q4_1+a8")
    assert "model.variant='gguf-a9'" in problems(["model=smollm2-q4a8", "model.variant=gguf-a9"])


def test_app_threads_is_null_or_a_small_positive_integer_and_reaches_the_device_command_line():
    from pipeline.apps.launch import app_env
    from pipeline.virtual.app_launch import DEVICE_KNOBS

    assert to_config(compose([])).app.threads is None
    assert to_config(compose(["app.threads=2"])).app.threads == 2
    assert "app.threads=0: use null (the app's default for the host) or an integer 1-99" in problems(["app.threads=0"])
    env = app_env({}, "/d", virtual_only=True, template="hf-chat", past_end_token=None, threads=2)
    assert env["ODEVAL_THREADS"] == "2" and DEVICE_KNOBS["ODEVAL_THREADS"].fullmatch(env["ODEVAL_THREADS"])
    assert "ODEVAL_THREADS" not in app_env({}, "/d", virtual_only=True, template="hf-chat", past_end_token=None)
    assert not DEVICE_KNOBS["ODEVAL_THREADS"].fullmatch("0") and not DEVICE_KNOBS["ODEVAL_THREADS"].fullmatch("999")
