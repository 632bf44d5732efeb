"""dvc.yaml is the map in its second half too: every config key a stage reads is in its ``params:``.

WHY: a key a stage reads but DVC does not know makes `dvc exp run -S key=value` skip the stage and keep the old
outputs (``model.max_seq_len`` once did exactly that for `run`). The keys are recorded on a real run of the four
stage functions (virtual device, real adb, tiny model, a real MLflow store) by an access tracer over the composed
config object (tests/helpers/config_trace.py) — not by a grep. A key on :data:`ALLOWED` cannot change a stage's
outputs; each says why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import pipeline.config
import pipeline.tracking.scored as scored_log
from pipeline.run.identity import RUN_PARAMS
from tests.helpers.config_trace import ConfigTrace, covered, paused
from tests.helpers.pipeline import REPO, run_stages, stage_config

pytestmark = pytest.mark.timeout(300)
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

# stage -> {key: why it cannot change the stage's outputs}
ALLOWED: dict[str, dict[str, str]] = {
    "fetch": {"paths.artifacts": "where outputs are written: DVC tracks the outputs themselves"},
    "push": {"paths.artifacts": "where outputs are written: DVC tracks the outputs themselves"},
    "run": {"paths.artifacts": "where outputs are written: DVC tracks the outputs themselves",
            "device.lease_timeout_s": "how long to wait for the device, not what runs on it",
            "device.pool": "which pool device is leased: run is pinned to the one push used, whose serial is part "
                           "of the run's identity (push.json)",
            "device.require": "as device.pool: it only selects the device push then pinned"},
    "score": {"paths.artifacts": "where inputs are read from: DVC tracks them as deps",
              "paths.metrics": "where outputs are written: DVC tracks the outputs themselves"},
}


def params_of(stage: str) -> list[str]:
    return [p if isinstance(p, str) else next(iter(p)) for p in STAGES[stage].get("params", [])]


def uncovered(reads: set[str], params: list[str], allowed: dict[str, str]) -> list[str]:
    return sorted(k for k in reads if not covered(k, params) and k not in allowed)


@pytest.fixture(scope="module")
def stage_reads(_virtual_device_session, tmp_path_factory, stage_cache) -> dict[str, set[str]]:
    """The keys each stage read on one real run (fetch → push → run → score, MLflow on)."""
    vd = _virtual_device_session
    vd.set_faults()
    work = tmp_path_factory.mktemp("traced")
    trace = ConfigTrace()
    cfg = trace.traced(stage_config(vd, work, "prompts.limit=2", cache=stage_cache))
    trace.reset()
    real_as_dict = pipeline.config.as_dict

    def as_dict(c):  # a whole-config snapshot (MLflow params), not an input of a result
        with paused():
            return real_as_dict(c)

    reads: dict[str, set[str]] = {}
    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline.config, "as_dict", as_dict)
    mp.setattr(scored_log, "as_dict", as_dict)
    try:
        for stage in ("fetch", "push", "run", "score"):
            run_stages(cfg, work, stage)
            reads[stage] = trace.reset()
    finally:
        mp.undo()
    return reads


@pytest.mark.parametrize("stage", ["fetch", "push", "run", "score"])
def test_every_key_a_stage_reads_is_in_its_dvc_params(stage, stage_reads):
    missing = uncovered(stage_reads[stage], params_of(stage), ALLOWED[stage])
    assert not missing, (f"dvc.yaml stage {stage!r} reads config keys its params do not list: {missing} — add them "
                         "to its `params:` (or to ALLOWED here, with the reason they cannot change its outputs)")


def test_the_trace_sees_the_keys_run_reads_through_helpers(stage_reads):
    """The check fails when a key is removed from dvc.yaml: these are read only inside helpers and the app env."""
    reads = stage_reads["run"]
    for key in ("model.max_seq_len", "app.virtual_only", "app.past_end_unwritten_id", "device.virtual.faults",
                "runtime.prompt_timeout_s"):
        assert key in reads, key
        params = [p for p in params_of("run") if p != key and not key.startswith(p + ".")]
        assert key in uncovered(reads, params, ALLOWED["run"])


def test_run_identity_holds_the_keys_of_its_dvc_params():
    """The run's identity (resume, MLflow) hashes exactly the keys DVC re-runs it for (prompts: per row)."""
    assert set(params_of("run")) == set(RUN_PARAMS) | {"prompts"}


def test_allowed_keys_are_not_also_params():
    for stage, allowed in ALLOWED.items():
        both = [k for k in allowed if covered(k, params_of(stage))]
        assert not both, f"{stage}: {both} are in dvc.yaml params and on the allowlist — keep one"


def test_the_tracer_records_leaf_reads_only(tmp_path: Path):
    from pipeline.config import compose, to_config

    trace = ConfigTrace()
    cfg = trace.traced(to_config(compose([])))
    trace.reset()
    _ = cfg.model  # a section: nothing read yet
    _ = cfg.device.virtual.faults
    _ = cfg.runtime.repeats
    assert trace.reset() == {"device.virtual.faults", "runtime.repeats"}


GROUPS = sorted(p.name for p in (REPO / "conf").iterdir() if p.is_dir() and p.name not in ("hydra", "local"))


@pytest.mark.parametrize("group", [g for g in GROUPS if g != "experiment"])
def test_every_group_option_spells_every_dvc_param_of_its_group(group):
    """DVC refuses to run a stage whose listed param is absent from params.yaml ("missing from 'params.yaml'"), and
    params.yaml is what conf/ composes to: every option of a group must spell out every key a stage lists under
    that group (null is fine)."""
    from omegaconf import OmegaConf

    keys = sorted({p.split(".", 1)[1] for stage in STAGES for p in params_of(stage) if p.startswith(group + ".")})
    missing = {f.name: [k for k in keys if OmegaConf.select(OmegaConf.load(f), k, default="<absent>") == "<absent>"]
               for f in sorted((REPO / "conf" / group).glob("*.yaml"))}
    assert not any(missing.values()), f"conf/{group}: dvc.yaml params absent: {missing}"


@pytest.mark.parametrize("experiment", [None] + sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_every_dvc_param_exists_in_each_experiments_params_yaml(experiment):
    from omegaconf import OmegaConf

    from pipeline.config import compose

    composed = compose([f"experiment={experiment}"] if experiment else [])
    missing = [p for stage in STAGES for p in params_of(stage)
               if OmegaConf.select(composed, p, default="<absent>") == "<absent>"]
    assert not missing, f"experiment={experiment}: dvc.yaml params absent from the composed config: {missing}"
