"""What makes two runs the same run, and what makes a finished row still valid.

WHY: resume keeps finished rows. A key that misses something that changes answers silently mixes old answers
into a new run — once the engine's code changed, `dvc repro` re-ran the stage and kept all 44 old answers. So:

- A run's **identity** has three parts, each recorded in ``run.json`` so a change can be *named*:
  ``config`` (the values of every config key the run stage reads: :data:`RUN_PARAMS`, equal to its ``params:`` in
  ``dvc.yaml`` — a test keeps them equal and traces the keys really read), ``device_files`` (the app and model
  manifests on the device, its serial and kind) and ``code`` (every file of the run stage's import closure, the
  code the device runs as the app declares it in ``app.json`` — the reference app's whole closure, engine and
  model loaders included — and the libraries and Python those run on). Another identity = a fresh run.
- A **row** is reused only while what was asked is unchanged (:func:`ask_keys`): the prompt, its sent line (the
  template applied), reference, keywords, rules and language; in a shared session also every earlier prompt of
  the pass (the app carries their context into the answer). Which prompts are in the set (``prompts.*``) is
  therefore not part of the identity: a row of a prompt that left the set is dropped, a new prompt is asked. A
  benchmark's prompt (``prompts=ifeval``) asks its whole row too (key, original prompt, instruction ids and kwargs:
  ``Prompt.to_item``), so an edited or re-pinned prompt file re-asks exactly the rows that changed; a prompt set that
  brings its own budget (``prompts.max_new_tokens`` …, :func:`pipeline.config.budget`) puts it in ``config``.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from pipeline.codehash import changed_files, code_files, library_versions, virtual_device_code
from pipeline.config import budget

RUN_STAGE_MODULE = "pipeline.stages.run"
# Config keys the run stage reads (its `params:` in dvc.yaml minus `prompts`, which only selects the rows). A
# section name stands for every key under it.
RUN_PARAMS = (
    "model.name", "model.quant", "model.format", "model.chip", "model.max_seq_len", "model.required_files",
    "app.name", "app.binary", "app.device_arg", "app.env", "app.template", "app.template_tokens",
    "app.past_end_token", "app.past_end_unwritten_id", "app.threads", "app.virtual_only", "app.required_files",
    "app.protocol", "app.bench_binary",
    "device.kind", "device.serial", "device.adb_host", "device.adb_port", "device.connect", "device.remote_root",
    "device.virtual",
    "sequence", "prompting", "session", "runtime",
)
# Host libraries whose behaviour enters rows (adb transport, re-tokenising answers).
HOST_LIBRARIES = ("adbutils", "tokenizers", "numpy")


def config_value(cfg: Any, key: str) -> Any:
    """The plain value of a dotted key of the config object (a section → a dict of its values)."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return _plain(value)


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunIdentity:
    """The three parts of a run's identity (module docstring); ``key`` is what resume and MLflow compare."""

    config: dict[str, Any]
    device_files: dict[str, Any]
    code: dict[str, str]

    @property
    def parts(self) -> dict[str, str]:
        return {"config": _hash(self.config), "device_files": _hash(self.device_files), "code": _hash(self.code)}

    @property
    def key(self) -> str:
        return _hash(self.parts)

    def to_record(self) -> dict[str, Any]:
        """What run.json keeps: the key, the part hashes and the values, so the next run can say what changed."""
        return {"key": self.key, "parts": self.parts, "config": self.config, "device_files": self.device_files,
                "code": self.code}


def run_identity(cfg: Any, fetch: dict[str, Any], push: dict[str, Any]) -> RunIdentity:
    """The identity of a run of ``cfg`` on the files fetch.json/push.json describe."""
    device = push["device"]
    code = {**code_files(RUN_STAGE_MODULE), **app_code(Path(fetch["app"]["local_dir"]))}
    code.update({f"library:{k}": v for k, v in library_versions(*HOST_LIBRARIES).items()})
    code["python"] = platform.python_version()
    if device.get("kind") == "virtual":  # the daemon's shell and services carry every byte (restarted on a change)
        code["virtual-device"] = virtual_device_code()
    config = {key: config_value(cfg, key) for key in RUN_PARAMS}
    b = budget(cfg)
    if any(k.startswith("prompts.") for k in b.keys):  # the prompt set's own budget changes answers (prompts=ifeval)
        config["budget"] = {"context": b.context, "max_new_tokens": b.max_new_tokens,
                            "prompt_timeout_s": b.prompt_timeout_s}
    return RunIdentity(
        config=config,
        device_files={"model": fetch["model"]["manifest_sha256"], "app": fetch["app"]["manifest_sha256"],
                      "serial": device.get("serial", ""), "kind": device.get("kind", "")},
        code=code)


def app_code(app_dir: Path) -> dict[str, str]:
    """The code the app declares it runs (``app.json`` of the built reference app: its import closure, libraries
    and Python); ``{}`` for any other app, whose code is its binary — the app manifest covers that."""
    try:
        info = json.loads((Path(app_dir) / "app.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(info, dict) or info.get("app") != "odeval-reference":
        return {}
    code = {str(k): str(v) for k, v in (info.get("code") or {}).items()}
    code.update({f"library:{k}": str(v) for k, v in (info.get("libraries") or {}).items()})
    if info.get("python"):
        code["python"] = str(info["python"])
    return code


def describe_change(old: dict[str, Any] | None, new: RunIdentity) -> str:
    """One line naming what differs between a recorded identity and ``new``: config keys, device files, code."""
    if not isinstance(old, dict) or "parts" not in old:
        return "the previous run recorded no identity (an older odeval made it)"
    said = []
    old_cfg, new_cfg = _flat(old.get("config") or {}), _flat(new.config)
    keys = [k for k in sorted(set(old_cfg) | set(new_cfg)) if old_cfg.get(k, _ABSENT) != new_cfg.get(k, _ABSENT)]
    if keys:
        said.append("config " + listed(keys))
    old_dev = old.get("device_files") or {}
    devs = [k for k in sorted(set(old_dev) | set(new.device_files)) if old_dev.get(k) != new.device_files.get(k)]
    if devs:
        said.append("device files " + listed(devs))
    files = changed_files(old.get("code") or {}, new.code)
    if files:
        said.append("code " + listed(files))
    return "changed: " + "; ".join(said) if said else "its identity differs"


_ABSENT = object()


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config values → ``{"runtime.max_output_bytes": 4096}`` (non-empty dicts are walked, the rest kept)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def listed(items: Sequence[str], n: int = 4) -> str:
    """``(a, b, c, d +3 more)``: names in a one-line message, bounded."""
    return "(" + ", ".join(items[:n]) + (f" +{len(items) - n} more" if len(items) > n else "") + ")"


def ask_keys(items: Sequence[dict[str, Any]], sent: Sequence[str], shared_session: bool) -> dict[str, str]:
    """``{prompt_id: key}`` of what each prompt asks: its scoring item (prompt, reference, keywords, rules, lang)
    and the line sent; in a shared session chained through every earlier prompt of the set (their answers are
    the context of this one)."""
    out: dict[str, str] = {}
    before = ""
    for item, line in zip(items, sent, strict=True):
        own = _hash({"item": item, "sent": line})
        key = _hash([before, own]) if shared_session else own
        out[str(item["id"])] = key
        before = key
    return out


def asked_digest(asks: dict[str, str]) -> str:
    """One hash of what a run asks (every prompt's ask key): with the identity key, what its results are of."""
    return _hash(sorted(asks.items()))
