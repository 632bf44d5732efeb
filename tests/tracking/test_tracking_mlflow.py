"""pipeline.tracking against a REAL MLflow sqlite store (one per module: the import and migrations cost seconds)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pytest

from pipeline import tracking
from pipeline.secrets import redact
from pipeline.tracking import TrackingError, TrackingUnavailable
from pipeline.workspace import git_commit, git_dirty

HF_SECRET = "hf_" + "aB3dE5gH7jK9mN1pQ3sT5vX7z"  # token-shaped, not a real token
API_SECRET = "s3cr3t-judge-key-000111"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("repo")
    uri = tracking.resolve_tracking_uri("sqlite:///mlruns/mlflow.db", root)
    from mlflow import MlflowClient

    return {"root": root, "uri": uri, "client": MlflowClient(tracking_uri=uri)}


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow falls back to sqlite:///<cwd>/mlflow.db in places (fluent calls): never let that be the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/stray.db")


@pytest.fixture
def exp() -> str:
    return f"exp-{uuid.uuid4().hex[:8]}"


def outputs(tmp_path: Path) -> list[Path]:
    (tmp_path / "responses.jsonl").write_text('{"prompt_id": "a"}\n')
    plots = tmp_path / "plots"
    plots.mkdir(exist_ok=True)
    (plots / "tok_s.png").write_bytes(b"\x89PNG fake")
    return [tmp_path / "responses.jsonl", plots]


def log(store: dict, exp: str, run_key: str, metrics: dict, tmp_path: Path, **kw) -> str:
    args = dict(tracking_uri=store["uri"], experiment=exp, run_key=run_key,
                params={"model": {"name": "tiny-w4"}, "sequence": {"max_new_tokens": 64}},
                metrics=metrics, tags={"device.kind": "virtual"}, artifacts=outputs(tmp_path))
    args.update(kw)
    return tracking.log_run(**args)


def runs(store: dict, exp: str) -> list:
    e = store["client"].get_experiment_by_name(exp)
    return store["client"].search_runs([e.experiment_id])


# ------------------------------------------------------------------------------------------ pure functions


def test_resolve_tracking_uri(tmp_path: Path) -> None:
    assert tracking.resolve_tracking_uri("sqlite:///mlflow.db", tmp_path) == f"sqlite:///{tmp_path}/mlflow.db"
    assert tracking.resolve_tracking_uri("sqlite:////abs/m.db", tmp_path) == "sqlite:////abs/m.db"
    assert tracking.resolve_tracking_uri("http://127.0.0.1:5000", tmp_path) == "http://127.0.0.1:5000"
    assert tracking.resolve_tracking_uri("https://mlflow.example/x", tmp_path) == "https://mlflow.example/x"
    for bad in ("", "mlruns", "file:///tmp/mlruns", "sqlite://mlflow.db"):
        with pytest.raises(TrackingError, match="tracking"):
            tracking.resolve_tracking_uri(bad, tmp_path)


def test_flatten() -> None:
    cfg = {"model": {"name": "tiny-w4", "quant": None, "params_b": 1.1, "chip": True},
           "prompts": {"ids": ["a", {"b": 2}], "empty": [], "none": {}}, "long": "x" * 10_000}
    flat = tracking.flatten(cfg)
    assert flat["model.name"] == "tiny-w4" and flat["model.quant"] == "null"
    assert flat["model.params_b"] == "1.1" and flat["model.chip"] == "true"
    assert flat["prompts.ids.0"] == "a" and flat["prompts.ids.1.b"] == "2"
    assert flat["prompts.empty"] == "[]" and flat["prompts.none"] == "{}"
    assert len(flat["long"]) == tracking.MAX_PARAM_VAL_LENGTH and flat["long"].endswith("[truncated]")
    assert tracking.flatten({"a": {"b": 1}}, sep="/") == {"a/b": "1"}


def test_limits_match_mlflow() -> None:
    from mlflow.utils import validation

    assert tracking.MAX_PARAM_VAL_LENGTH == validation.MAX_PARAM_VAL_LENGTH
    assert tracking.MAX_TAG_VAL_LENGTH == validation.MAX_TAG_VAL_LENGTH
    assert tracking.MAX_KEY_LENGTH == validation.MAX_ENTITY_KEY_LENGTH


def test_redact() -> None:
    d = {"hf_token": HF_SECRET, "scoring": {"judge": {"api_key": API_SECRET, "apiKey": API_SECRET,
                                                      "url": f"https://user:{API_SECRET}@judge.local/v1"}},
         "Authorization": "Bearer abcdefghijklmnop", "db.password": "pw", "HF_TOKEN": "x",
         "sequence.max_new_tokens": 64, "tokenizer": "bin", "token_f1": 0.5, "run_key": "abc",
         "note": f"used {HF_SECRET} once", "env": [f"HF_TOKEN={HF_SECRET}"]}
    r = redact(d)
    text = json.dumps(r)
    assert HF_SECRET not in text and API_SECRET not in text and "abcdefghijklmnop" not in text
    assert r["hf_token"] == r["HF_TOKEN"] == r["db.password"] == r["Authorization"] == "***"
    assert r["scoring"]["judge"]["url"] == "https://***@judge.local/v1"
    assert r["sequence.max_new_tokens"] == 64 and r["tokenizer"] == "bin" and r["token_f1"] == 0.5
    assert r["run_key"] == "abc" and r["note"] == "used hf_*** once"
    assert d["hf_token"] == HF_SECRET  # input untouched


# ------------------------------------------------------------------------------------------ real store


def test_log_twice_same_run_key_updates_one_run(store: dict, exp: str, tmp_path: Path) -> None:
    first = log(store, exp, "key-1", {"decode_tok_s.mean": 10.0, "ttft_s.mean": 0.5, "quality.score": None},
                tmp_path, run_name="tiny-w4")
    second = log(store, exp, "key-1", {"decode_tok_s.mean": 12.5, "ttft_s.mean": None, "quality.score": 0.7},
                 tmp_path, run_name="tiny-w4")
    assert first == second
    [run] = runs(store, exp)
    assert run.data.metrics["decode_tok_s.mean"] == 12.5
    assert run.data.metrics["quality.score"] == 0.7
    assert math.isnan(run.data.metrics["ttft_s.mean"])  # no stale 0.5 left behind
    assert run.data.tags["missing_metrics"] == "ttft_s.mean"
    assert run.data.tags[tracking.REVISION_TAG] == "2" and run.info.status == "FINISHED"
    history = store["client"].get_metric_history(first, "decode_tok_s.mean")
    assert [(m.step, m.value) for m in history] == [(1, 10.0), (2, 12.5)]
    assert run.data.params["model.name"] == "tiny-w4" and run.data.params["sequence.max_new_tokens"] == "64"
    log(store, exp, "key-2", {"decode_tok_s.mean": 1.0}, tmp_path)
    assert len(runs(store, exp)) == 2


def test_artifacts_and_table_not_duplicated(store: dict, exp: str, tmp_path: Path) -> None:
    rows = [{"prompt_id": "a", "decode_tok_s": 10.0, "eos": True}, {"prompt_id": "b", "decode_tok_s": None,
                                                                    "eos": False}]
    run_id = log(store, exp, "tbl", {"m": 1.0}, tmp_path, tables={"prompts": rows})
    rows2 = [dict(r, decode_tok_s=11.0) for r in rows]
    log(store, exp, "tbl", {"m": 2.0}, tmp_path, tables={"prompts": rows2})
    client = store["client"]
    top = {f.path for f in client.list_artifacts(run_id)}
    assert {"responses.jsonl", "plots", "tables"} <= top
    assert [f.path for f in client.list_artifacts(run_id, "plots")] == ["plots/tok_s.png"]
    # (client.load_table is not used: it searches runs through the *global* tracking URI, not the client's)
    table = pd.read_json(client.download_artifacts(run_id, "tables/prompts.json", dst_path=str(tmp_path / "t")),
                         orient="split")
    assert len(table) == 2 and list(table["decode_tok_s"]) == [11.0, 11.0]
    exp_id = client.get_run(run_id).info.experiment_id
    logged = json.loads(client.get_run(run_id).data.tags["mlflow.loggedArtifacts"])
    assert {"path": "tables/prompts.json", "type": "table"} in logged
    # the artifacts live next to the database (absolute), not under whatever the cwd was
    local = client.download_artifacts(run_id, "responses.jsonl", dst_path=str(tmp_path / "dl"))
    assert Path(local).read_text() == '{"prompt_id": "a"}\n'
    assert client.get_experiment(exp_id).artifact_location.startswith((store["root"] / "mlruns").as_uri())


def test_missing_artifact_skipped_and_tagged(store: dict, exp: str, tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="not found"):
        run_id = log(store, exp, "miss", {"m": 1.0}, tmp_path, artifacts=[tmp_path / "nope.csv"])
    assert store["client"].get_run(run_id).data.tags["missing_artifacts"] == str(tmp_path / "nope.csv")


def test_changed_param_does_not_fail(store: dict, exp: str, tmp_path: Path) -> None:
    run_id = log(store, exp, "pc", {"m": 1.0}, tmp_path)
    with pytest.warns(UserWarning, match="params"):
        log(store, exp, "pc", {"m": 1.0}, tmp_path, params={"model": {"name": "tiny-w8"}, "extra": 1})
    run = store["client"].get_run(run_id)
    assert run.data.params["model.name"] == "tiny-w4"  # MLflow params are immutable: first value kept
    assert run.data.params["extra"] == "1"  # new params still added
    assert json.loads(run.data.tags["params_changed"]) == {"model.name": "tiny-w8"}


def test_parent_and_two_children(store: dict, exp: str, tmp_path: Path) -> None:
    parent = tracking.get_or_create_parent(tracking_uri=store["uri"], experiment=exp, sweep_id="sw-1",
                                           params={"sweep": "model=a,b"}, tags={"git.commit": "abc"})
    assert tracking.get_or_create_parent(tracking_uri=store["uri"], experiment=exp, sweep_id="sw-1") == parent
    kids = [log(store, exp, f"child-{i}", {"m": float(i)}, tmp_path, parent_run_id=parent,
                tags={"sweep_id": "sw-1"}) for i in range(2)]
    # children carry the sweep_id too: the parent lookup must still find only the parent
    assert tracking.get_or_create_parent(tracking_uri=store["uri"], experiment=exp, sweep_id="sw-1") == parent
    e = store["client"].get_experiment_by_name(exp)
    found = store["client"].search_runs([e.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_id for r in found) == sorted(kids)
    assert len(runs(store, exp)) == 3
    assert store["client"].get_run(parent).data.params["sweep"] == "model=a,b"


def test_secrets_never_stored(store: dict, exp: str, tmp_path: Path) -> None:
    params = {"hub": {"token": HF_SECRET}, "scoring": {"judge": {"api_key": API_SECRET,
                                                                 "url": f"http://u:{API_SECRET}@127.0.0.1/v1"}},
              "note": f"token {HF_SECRET}"}
    run_id = log(store, exp, "sec", {"m": 1.0}, tmp_path, params=params,
                 tags={"authorization": f"Bearer {API_SECRET}", "cmd": f"HF_TOKEN={HF_SECRET} dvc repro"})
    run = store["client"].get_run(run_id)
    blob = json.dumps([run.data.params, run.data.tags])
    assert HF_SECRET not in blob and API_SECRET not in blob
    assert run.data.params["hub.token"] == "***"


def test_bad_run_key(store: dict, exp: str, tmp_path: Path) -> None:
    with pytest.raises(TrackingError, match="run_key"):
        log(store, exp, "x' or 1=1", {"m": 1.0}, tmp_path)


def test_sweep_id_with_hydra_dir_characters(store: dict, exp: str) -> None:
    odd = "model=a,b+seq=s256 x/y@1"  # a custom hydra.sweep.dir name
    p = tracking.get_or_create_parent(tracking_uri=store["uri"], experiment=exp, sweep_id=odd)
    assert tracking.get_or_create_parent(tracking_uri=store["uri"], experiment=exp, sweep_id=odd) == p
    assert tracking.get_or_create_parent(tracking_uri=store["uri"], experiment=exp, sweep_id="model=a") != p


def test_unreachable_server_raises_bounded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # our own bounds must apply (not the test suite's MLFLOW_HTTP_REQUEST_MAX_RETRIES=0)
    for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(k, raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(TrackingUnavailable) as ei:
        tracking.log_run(tracking_uri=uri, experiment="e", run_key="k", params={}, metrics={"m": 1.0}, tags={},
                         artifacts=[])
    msg = str(ei.value)
    assert uri in msg and "log later" in msg and "\n" not in msg
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # bounds restored afterwards
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # the user's setting wins over our bounds
    with pytest.raises(TrackingUnavailable):
        tracking.get_or_create_parent(tracking_uri=uri, experiment="e", sweep_id="s")


def test_unwritable_sqlite_location(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a directory")
    uri = tracking.resolve_tracking_uri("sqlite:///afile/sub/mlflow.db", tmp_path)
    with pytest.raises(TrackingUnavailable, match="afile"):
        tracking.log_run(tracking_uri=uri, experiment="e", run_key="k", params={}, metrics={}, tags={},
                         artifacts=[])


# ------------------------------------------------------------------------------------------ provenance


def test_provenance_tags_defensive_and_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    empty = tracking.provenance_tags({}, {}, {})
    assert set(empty) == {"device.kind", "device.model", "device.soc", "device.serial", "device.sandbox",
                          "app.manifest_sha256",
                          "model.manifest_sha256", "git.commit", "git.dirty", "dvc.exp_name", "sweep_id"}
    assert set(empty.values()) == {"unknown"}
    fetch = {"model": {"repo_id": "fwtan/x", "manifest_sha256": "m" * 64}, "app": {"manifest_sha256": "a" * 64}}
    push = {"device": {"kind": "real", "serial": "R5CX", "props": {"ro.product.model": "K70 Pro",
                                                                   "ro.board.platform": "pineapple"}}}
    run = {"device": {"kind": "real", "props": {}}, "git": {"commit": "c" * 40, "dirty": True}, "sweep_id": "s1"}
    tags = tracking.provenance_tags(run, fetch, push, dvc_exp_name="quick-fern")
    assert tags == {"device.kind": "real", "device.model": "K70 Pro", "device.soc": "pineapple",
                    "device.serial": "R5CX", "device.sandbox": "n/a", "app.manifest_sha256": "a" * 64,
                    "model.manifest_sha256": "m" * 64,
                    "git.commit": "c" * 40, "git.dirty": "true", "dvc.exp_name": "quick-fern", "sweep_id": "s1"}
    assert tracking.provenance_tags(run, fetch, {"device": None}, sweep_id="s2")["sweep_id"] == "s2"


def test_git_commit_and_dirty(tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None and git_dirty(tmp_path) is None
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@t")

    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True, text=True,
                              env=env).stdout.strip()

    git("init", "-q")
    assert git_commit(tmp_path) is None  # no commit yet
    (tmp_path / "f.txt").write_text("1")
    git("add", "f.txt")
    git("commit", "-q", "-m", "init")
    head = git("rev-parse", "HEAD")
    assert git_commit(tmp_path) == head and git_dirty(tmp_path) is False
    (tmp_path / "untracked.txt").write_text("x")
    assert git_dirty(tmp_path) is False
    (tmp_path / "f.txt").write_text("2")
    assert git_dirty(tmp_path) is True
    tags = tracking.provenance_tags({}, {}, {}, root=tmp_path)
    assert tags["git.commit"] == head and tags["git.dirty"] == "true"


def test_parallel_jobs_share_one_parent(store: dict, exp: str) -> None:
    """Sweep jobs start together (joblib launcher): the sqlite file lock must yield exactly one parent run."""
    from concurrent.futures import ThreadPoolExecutor

    def job(_: int) -> str:
        return tracking.get_or_create_parent(tracking_uri=store["uri"], experiment=exp, sweep_id="par")

    with ThreadPoolExecutor(4) as pool:
        ids = set(pool.map(job, range(4)))
    assert len(ids) == 1 and len(runs(store, exp)) == 1


def test_experiment_opens_on_runs_table(store: dict, exp: str, tmp_path: Path) -> None:
    """MLflow 3's UI opens an experiment on the runs table only when its kind tag says model development."""
    log(store, exp, "k-kind", {"quality.score": 0.5}, tmp_path)
    client = store["client"]
    got = client.get_experiment_by_name(exp)
    assert got.tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND == "custom_model_development"
    old = f"{exp}-old"  # created before odeval tagged experiments: tagged on the next log
    client.create_experiment(old)
    log(store, old, "k-old", {"quality.score": 0.5}, tmp_path)
    assert client.get_experiment_by_name(old).tags[tracking.EXPERIMENT_KIND_TAG] == tracking.EXPERIMENT_KIND
    view = json.loads(got.tags[tracking.SHARED_VIEW_TAG])  # ?viewStateShareKey=odeval: headline columns
    assert view["selectedColumns"][:2] == ["metrics.`decode_tok_s`", "metrics.`ttft_s`"]
    assert tracking.experiment_ui_path(store["uri"], exp) == \
        f"#/experiments/{got.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=odeval"
    chosen = f"{exp}-chosen"  # a kind a user picked in the UI is theirs to keep
    client.create_experiment(chosen, tags={tracking.EXPERIMENT_KIND_TAG: "genai_development"})
    log(store, chosen, "k-chosen", {"quality.score": 0.5}, tmp_path)
    assert client.get_experiment_by_name(chosen).tags[tracking.EXPERIMENT_KIND_TAG] == "genai_development"


def test_run_times_are_the_measured_run(store: dict, exp: str, tmp_path: Path) -> None:
    started, ended = "2024-05-01T10:00:00.250000+00:00", "2024-05-01T10:07:30+00:00"
    rid = log(store, exp, "k-times", {"quality.score": 0.5}, tmp_path, start_time_ms=tracking.iso_to_ms(started),
              end_time_ms=tracking.iso_to_ms(ended), description="**hello**")
    run = store["client"].get_run(rid)
    assert run.info.start_time == 1714557600250 and run.info.end_time == 1714558050000
    assert run.data.tags["mlflow.note.content"] == "**hello**"
    assert tracking.iso_to_ms("2024-05-01T10:00:00") == 1714557600000  # naive = UTC, as run.json writes
    assert tracking.iso_to_ms(None) is None and tracking.iso_to_ms("yesterday") is None


def test_headline_metrics_have_plain_names_and_are_rounded(store: dict, exp: str, tmp_path: Path) -> None:
    from pipeline.score.headline import headline, headline_metrics

    score = {"device_kind": "virtual", "throughput": {"decode_tok_s": {"mean": 1634.72346123}, "ttft_s": {"p50": 0.2}},
             "quality": {"score": 0.70012, "score_ci95": [0.61234, 0.78911], "on_topic_rate": 0.75},
             "failures": {"failed": 1}, "energy_j_per_token": None}
    head = headline_metrics(score)
    assert head == {"decode_tok_s": 1634.72, "ttft_s": 0.2, "quality": 0.7, "q_lo": 0.612, "q_hi": 0.789,
                    "on_topic": 0.75, "failed": 1, "j_per_tok": None}
    assert headline(score)["device"] == "virtual"
    from pipeline.tracking.views import flat_metrics

    flat = flat_metrics(score)
    rid = log(store, exp, "k-head", {**flat, **head}, tmp_path)
    run = store["client"].get_run(rid)
    assert {"decode_tok_s", "ttft_s", "quality", "on_topic", "quality.score"} <= set(run.data.metrics)
    assert run.data.metrics["throughput.decode_tok_s.mean"] == 1634.72346123  # full value in the detail set
    assert "j_per_tok" in run.data.tags["missing_metrics"].split(",")  # not measured: never invented
    text = tracking.run_description(score, head)
    assert "| energy J/token (`j_per_tok`) | not measured |" in text and "0.700" in text and "1634.72 |" in text


# ------------------------------------------------------------------------------------------ honest endings


def test_a_running_run_whose_process_is_gone_is_closed_as_killed_when_its_key_logs_again(store, exp, tmp_path):
    first = log(store, exp, "orphan", {"q": 0.5}, tmp_path)
    store["client"].update_run(first, status="RUNNING")  # what `kill -9` mid-log leaves behind
    second = log(store, exp, "orphan", {"q": 0.9}, tmp_path)
    assert second != first
    old, new = store["client"].get_run(first), store["client"].get_run(second)
    assert old.info.status == "KILLED" and "ended before it finished logging" in old.data.tags["odeval.killed"]
    assert new.info.status == "FINISHED" and new.data.metrics["q"] == 0.9
    assert log(store, exp, "orphan", {"q": 0.8}, tmp_path) == second  # re-logging updates the live run


def test_a_log_interrupted_by_ctrl_c_ends_killed_not_running(store, exp, tmp_path):
    def rows():
        yield {"prompt_id": "a"}
        raise KeyboardInterrupt  # Ctrl-C while the prompts table is being written

    with pytest.raises(KeyboardInterrupt):
        log(store, exp, "interrupted", {"q": 0.5}, tmp_path, tables={"prompts": rows()})
    (run,) = runs(store, exp)
    assert run.info.status == "KILLED" and run.data.tags["odeval.killed"] == "its logging was interrupted"
    again = log(store, exp, "interrupted", {"q": 0.5}, tmp_path)
    assert again != run.info.run_id and store["client"].get_run(again).info.status == "FINISHED"
