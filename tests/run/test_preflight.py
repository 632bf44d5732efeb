"""The run stage's checks before the first prompt (pipeline/run/preflight.py), the 1023-position budget, tokenizer
errors as one line, and the virtual device's props_override option."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, compose, to_config
from pipeline.models.count import TokenizerUnreadable, token_counter
from pipeline.run.preflight import (
    HF_REQUIRED,
    PreflightError,
    check_chip,
    check_files,
    check_readable,
    missing_files,
    model_requirements,
)
from pipeline.virtual.faults import FaultsError, make_faults, parse_cli
from pipeline.virtual.props import current_props

PHONE_8GEN3 = {"ro.soc.model": "SM8650", "ro.board.platform": "pineapple"}
PHONE_8GEN2_OLD = {"ro.soc.model": None, "ro.board.platform": "kalama"}  # Android < 12: no ro.soc.model


def chip(props, model_chip="8gen3", device_arg="8gen3"):
    return check_chip(props, model_chip, device_arg, model_name="m", app_name="a")


def test_matching_chip_passes_and_says_what_it_checked():
    assert chip(PHONE_8GEN3) == "8gen3"
    assert chip(PHONE_8GEN2_OLD, "8gen2", "8gen2") == "8gen2"


@pytest.mark.parametrize("props, model_chip, device_arg, says", [
    (PHONE_8GEN2_OLD, "8gen3", "8gen3", "model.chip=8gen3 (model=m) but the device is kalama (8gen2)"),
    ({"ro.soc.model": "SM8550"}, "any", "8gen3", "app.device_arg=8gen3 (app=a) but the device is SM8550 (8gen2)"),
    ({"ro.soc.model": "SM8650"}, "8gen3", "8gen2", "app.device_arg=8gen2"),
    ({"ro.soc.model": "SM7550"}, "8gen3", None, "the device is SM7550 (sm7550)"),
    ({}, "8gen3", "8gen3", "reports no SoC"),
])
def test_wrong_chip_is_one_line(props, model_chip, device_arg, says):
    with pytest.raises(PreflightError) as e:
        chip(props, model_chip, device_arg)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_chip_check_skips_any_and_the_virtual_host_cpu():
    assert chip({"ro.soc.model": "SM8550"}, "any", None) is None
    assert chip(current_props(), "8gen3", "8gen3") is None  # the virtual device runs any model on the host
    with pytest.raises(PreflightError, match="SM8550"):  # a virtual device posing as a phone is checked
        chip(current_props({"ro.soc.model": "SM8550"}), "any", "8gen3")


def test_virtual_props_override_cannot_hide_that_it_is_virtual():
    props = current_props({"ro.soc.model": "SM8550", "ro.odeval.virtual": "0"})
    assert props["ro.soc.model"] == "SM8550" and props["ro.odeval.virtual"] == "1"
    with pytest.raises(PreflightError, match="SM8550"):
        chip(props)


def test_props_override_option_is_validated():
    assert make_faults({"props_override": {"ro.soc.model": "SM8550"}}).props_override == {"ro.soc.model": "SM8550"}
    assert parse_cli(['props_override={"ro.board.platform": "kalama"}'])["props_override"] == {
        "ro.board.platform": "kalama"}
    for bad in ("[1]", '{"a": 1}', "not json"):
        with pytest.raises(FaultsError, match="props_override"):
            make_faults({"props_override": bad})


QNN_APP = ["simple_app", "libllmod.so", "libc++_shared.so", "libQnnHtp.so", "libQnnHtpV75Skel.so",
           "libQnnHtpV75Stub.so", "libQnnSystem.so"]


def entry(paths):
    return {"files": [{"path": p, "size": 1, "sha256": "0" * 64} for p in paths], "local_dir": "/cache/app"}


def test_missing_library_is_named():
    required = compose(["app=simple-app-8gen3"]).app.required_files
    check_files("app", "simple-app-8gen3", entry(QNN_APP), ["simple_app", *required], "app.required_files")
    with pytest.raises(PreflightError) as e:
        check_files("app", "simple-app-8gen3", entry([p for p in QNN_APP if p != "libQnnHtpV75Skel.so"]),
                    ["simple_app", *required], "app.required_files")
    msg = str(e.value)
    assert msg.startswith("app=simple-app-8gen3: libQnnHtpV75Skel.so is missing") and "\n" not in msg


def test_8gen2_app_needs_the_v73_libraries():
    required = compose(["app=simple-app-8gen2"]).app.required_files
    assert "libQnnHtpV73Skel.so" in required and not any("V75" in f for f in required)


def test_model_requirements_from_config_or_format():
    mq = compose(["model=mobilequant-w4a8-8gen3"]).model
    assert model_requirements(mq.format, mq.required_files) == ["meta.bin", "tokenizer.bin", "qnn_model.bin"]
    assert model_requirements("hf", None) == list(HF_REQUIRED)
    hf = ["config.json", "model.qint.safetensors", "tokenizer.json"]
    assert missing_files(hf, HF_REQUIRED) == []
    assert missing_files(["config.json", "tokenizer.bin"], HF_REQUIRED) == [
        "*.safetensors or pytorch_model*.bin or *.gguf"]
    assert missing_files(["a/config.json"], ["config.json"]) == ["config.json"]  # top level only


def test_malformed_files_are_one_line(tmp_path):
    (tmp_path / "tokenizer.bin").write_bytes(b"\x01\x00")
    with pytest.raises(PreflightError) as e:
        check_readable(tmp_path)
    assert f"{tmp_path / 'tokenizer.bin'}" in str(e.value) and "too short" in str(e.value)
    (tmp_path / "tokenizer.bin").unlink()
    (tmp_path / "meta.bin").write_bytes(b"")
    with pytest.raises(PreflightError, match="meta.bin is empty"):
        check_readable(tmp_path)
    (tmp_path / "meta.bin").write_bytes(b"\x01")
    assert check_readable(tmp_path) == ["meta.bin"]


def test_token_counter_names_the_bad_tokenizer(tmp_path):
    (tmp_path / "tokenizer.bin").write_bytes(b"\x10\x00\x00\x00\x00\x00\x80\x3f\xff\xff")
    with pytest.raises(TokenizerUnreadable) as e:
        token_counter(tmp_path)
    assert str(e.value).startswith(f"{tmp_path / 'tokenizer.bin'}: unreadable tokenizer") and "\n" not in str(e.value)
    (tmp_path / "tokenizer.json").write_text("{")
    with pytest.raises(TokenizerUnreadable, match="tokenizer.json"):
        token_counter(tmp_path)


def test_budget_is_checked_against_the_1023_positions_of_the_ring():
    cfg = to_config(compose(["sequence=s1024"]))  # 768 + 240 + 15 = 1023: fits exactly
    assert cfg.sequence.context + cfg.sequence.max_new_tokens + cfg.app.template_tokens == 1023
    with pytest.raises(ConfigError) as e:
        to_config(compose(["sequence=s1024", "sequence.context=769"]))
    msg = str(e.value)
    assert "= 1024 exceeds the 1023 KV positions simple_app's ring holds" in msg and "model.max_seq_len" in msg
    with pytest.raises(ConfigError, match="exceeds model.max_seq_len=512"):
        to_config(compose(["sequence=s1024", "model.max_seq_len=512"]))


def test_required_files_must_be_relative():
    with pytest.raises(ConfigError, match="app.required_files: '../x.so'"):
        to_config(compose(["app.required_files=[../x.so]"]))
