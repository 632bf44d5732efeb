"""A run's identity covers config, device files and code; rows are reused only while what they asked is unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.codehash import closure, code_files, digest
from pipeline.guest.build import REFERENCE_APP_MODULE, build_reference_app
from pipeline.run.identity import RunIdentity, app_code, ask_keys, asked_digest, describe_change
from pipeline.run.record import RunDir

CFG = {"model.max_seq_len": 1024, "runtime": {"repeats": 1}}
DEV = {"model": "m" * 64, "app": "a" * 64, "serial": "127.0.0.1:1", "kind": "virtual"}
CODE = {"pipeline/stages/run.py": "1" * 64, "pipeline/guest/npllama.py": "2" * 64}


def ident(config=CFG, device=DEV, code=CODE) -> RunIdentity:
    return RunIdentity(config=dict(config), device_files=dict(device), code=dict(code))


def _package(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_the_code_closure_follows_function_local_imports_and_changes_with_any_file(tmp_path):
    _package(tmp_path, {"pipeline/__init__.py": "", "pipeline/apps/__init__.py": "",
                        "pipeline/apps/app.py": "def load():\n    from pipeline.apps import engine\n",
                        "pipeline/apps/engine.py": "SIGN = 1\n", "pipeline/apps/unrelated.py": ""})
    files = code_files("pipeline.apps.app", root=tmp_path)
    assert set(files) == {"pipeline/__init__.py", "pipeline/apps/__init__.py", "pipeline/apps/app.py",
                          "pipeline/apps/engine.py"}
    before = digest(files)
    (tmp_path / "pipeline/apps/engine.py").write_text("SIGN = -1\n")  # the engine's logits negated
    assert digest(code_files("pipeline.apps.app", root=tmp_path)) != before


def test_the_reference_app_manifest_holds_its_whole_import_closure(tmp_path):
    app = build_reference_app(tmp_path / "app", "simple_app")
    code = app_code(app)
    files = {k: v for k, v in code.items() if k.startswith("pipeline/")}
    assert files == code_files(REFERENCE_APP_MODULE)
    # the engine and the model loaders, not only reference_app.py
    assert {"pipeline/guest/npllama.py", "pipeline/models/gguf_model.py",
            "pipeline/guest/reference_app.py"} <= set(files)
    assert {"library:numpy", "python"} <= set(code)
    assert app_code(tmp_path) == {}  # not a reference app: its binary is its code (the manifest covers it)


def test_the_converted_and_tiny_model_keys_cover_their_import_closures():
    """A converter/quantiser/engine-config edit must reach the converted-model key (it once missed npllama)."""
    names = {p.name for p in closure("pipeline.models.gguf_model")}
    assert {"gguf_model.py", "quant.py", "tokenizer_bin.py", "act_quant.py"} <= names
    assert {"tiny.py", "tokenizer_bin.py"} <= {p.name for p in closure("pipeline.models.tiny")}


@pytest.mark.parametrize("change, said", [
    (dict(config={**CFG, "model.max_seq_len": 512}), "config (model.max_seq_len)"),
    (dict(device={**DEV, "app": "b" * 64}), "device files (app)"),
    (dict(code={**CODE, "pipeline/guest/npllama.py": "3" * 64}), "code (pipeline/guest/npllama.py)"),
], ids=["config", "device-files", "code"])
def test_a_changed_identity_is_named_part_by_part(change, said):
    new = ident(**change)
    assert new.key != ident().key
    assert describe_change(ident().to_record(), new) == f"changed: {said}"
    assert "older odeval" in describe_change({"run_key": "x"}, new)


ITEMS = [{"id": i, "prompt": f"question {i}?", "reference": [f"r{i}"], "keywords": [], "rules": [], "lang": None}
         for i in "abcd"]


def test_ask_keys_change_only_for_the_edited_prompt_in_fresh_sessions_and_onwards_in_shared_ones():
    sent = [it["prompt"] for it in ITEMS]
    edited = [dict(it) for it in ITEMS]
    edited[1]["reference"] = ["Tokyo"]
    for shared, changed in ((False, {"b"}), (True, {"b", "c", "d"})):
        before, after = ask_keys(ITEMS, sent, shared), ask_keys(edited, sent, shared)
        assert {k for k in before if before[k] != after[k]} == changed
    other_template = ask_keys(ITEMS, [f"Answer: {s}" for s in sent], False)
    assert all(other_template[k] != v for k, v in ask_keys(ITEMS, sent, False).items())


def _write_run(run: RunDir, identity: RunIdentity, asks: dict[str, str]) -> None:
    run.resume(identity, asks)
    run.start({"run_key": identity.key, "identity": identity.to_record()}, rows=0)
    with run.rows() as write:
        for pid, key in asks.items():
            write({"prompt_id": pid, "repeat": 0, "warmup": False, "sent_text": pid, "raw_output_b64": "",
                   "error": None, "ask_key": key, "response": f"answer {pid}"})


def test_resume_keeps_unchanged_rows_reasks_edited_and_drops_removed_prompts(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    asks = ask_keys(ITEMS, [it["prompt"] for it in ITEMS], False)
    _write_run(run, ident(), asks)
    now = {**asks, "b": "edited"}
    del now["d"]
    done = run.resume(ident(), now)
    assert done == {("a", 0), ("c", 0)}
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["run: resuming — 2 finished rows kept; re-asking 1 changed prompt(s) (b); dropped the rows of 1 "
                   "prompt(s) no longer in the set (d)"]
    assert [json.loads(x)["prompt_id"] for x in run.rows_path.read_text().splitlines()] == ["a", "c"]


def test_another_identity_starts_afresh_in_one_line_naming_the_change(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    asks = ask_keys(ITEMS, [it["prompt"] for it in ITEMS], False)
    _write_run(run, ident(), asks)
    capsys.readouterr()
    new = ident(code={**CODE, "pipeline/guest/npllama.py": "9" * 64})
    assert run.resume(new, asks) == set()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("run: starting afresh — changed: code (pipeline/guest/npllama.py)")
    assert "4 rows" in err[0] and not run.rows_path.exists()
    assert run.previous == {"run_key": ident().key, "asked": asked_digest(asks),
                            "why": "changed: code (pipeline/guest/npllama.py)"}
