"""Checks the run stage makes before its first prompt: the right phone, every file the app needs, readable files.

WHY before the first prompt: a wrong chip (an 8 Gen 2 running the V75 libraries), a missing QNN library or a
corrupt tokenizer otherwise shows up as N crashed rows, a traceback, or — worst — numbers measured on the wrong
hardware. Each problem is one line naming what is wrong and what to do.

- chip: ``model.chip`` and ``app.device_arg`` against the SoC the device reports (``pipeline.socs``); skipped for
  ``chip: any`` / no device_arg, and when the device is the virtual host CPU (it runs any model on the host).
- required files: ``app.binary`` + ``app.required_files`` in the fetched app, ``model.required_files`` (or, when
  null, what the format implies) in the fetched model — checked against fetch.json's file list, which the run
  stage has just verified on the device.
- readable files: every file the run or the app parses (tokenizer.bin, tokenizer.json, config.json, meta.bin)
  that the model has, parsed on the host copy.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.socs import VIRTUAL_CHIP, chip_of, soc_of

# what an HF-format model dir needs (the reference app and the token counter read these); each is any-of
HF_REQUIRED: tuple[tuple[str, ...], ...] = (
    ("config.json",),
    ("*.safetensors", "pytorch_model*.bin", "*.gguf"),
    ("tokenizer.json", "tokenizer.bin"),
)


class PreflightError(ValueError):
    """The device, the app or the model cannot give honest results; the message is one line with the fix."""


def check_chip(props: Mapping[str, Any] | None, model_chip: str | None, device_arg: str | None, *,
               model_name: str, app_name: str) -> str | None:
    """Raise when the device's chip is not the one the model/app were built for; return the chip checked (None:
    skipped — virtual host CPU or nothing to check)."""
    wanted = [(f"model.chip={model_chip} (model={model_name})", model_chip)] if model_chip not in (None, "any") \
        else []
    wanted += [(f"app.device_arg={device_arg} (app={app_name})", device_arg)] if device_arg else []
    chip = chip_of(props)
    if not wanted or chip == VIRTUAL_CHIP:
        return None
    if chip is None:
        raise PreflightError(f"the device reports no SoC (ro.soc.model / ro.board.platform are empty), so "
                             f"{wanted[0][0]} cannot be checked; use a phone that reports its SoC")
    for what, value in wanted:
        if str(value).lower() != chip:
            raise PreflightError(f"{what} but the device is {soc_of(props)} ({chip}) — pick the model/app built for "
                                 f"{chip} (e.g. app=simple-app-{chip}) or connect a {value} phone")
    return chip


def _has(names: set[str], pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(n, pattern) for n in names) if any(c in pattern for c in "*?[") \
        else pattern in names


def missing_files(paths: Iterable[str], required: Iterable[str | tuple[str, ...]]) -> list[str]:
    """The required entries (a name/glob, or a tuple of alternatives) not present among ``paths``."""
    names = set(paths)
    out = []
    for req in required:
        alts = (req,) if isinstance(req, str) else req
        if not any(_has(names, a) for a in alts):
            out.append(" or ".join(alts))
    return out


def model_requirements(fmt: str, required: list[str] | None) -> list[str | tuple[str, ...]]:
    """``model.required_files`` when set, else what the format implies (QNN dirs must list theirs in conf/)."""
    if required is not None:
        return list(required)
    return list(HF_REQUIRED) if fmt == "hf" else []


def check_files(kind: str, name: str, entry: Mapping[str, Any], required: Iterable[str | tuple[str, ...]],
                key: str) -> None:
    """Raise naming the first missing file of the fetched ``kind`` (app/model) dir."""
    paths = [f["path"] for f in entry.get("files", [])]
    missing = missing_files(paths, required)
    if missing:
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])})" if len(missing) > 1 else ""
        raise PreflightError(f"{kind}={name}: {missing[0]} is missing from the fetched {kind} dir "
                             f"{entry.get('local_dir', '')}{more} — required by {key}; re-fetch it (check "
                             f"{kind}.allow_patterns / {kind}.path) or fix {key}")


def check_readable(model_dir: Path) -> list[str]:
    """Parse every file of the model dir that the run or the app reads; raise on the first bad one.

    Returns the names checked (recorded in run.json)."""
    model_dir = Path(model_dir)
    checked = []
    for name, check in _READERS:
        path = model_dir / name
        if not path.exists():
            continue
        try:
            check(path)
        except PreflightError:
            raise
        except Exception as e:  # noqa: BLE001 - any parser error becomes the one line below
            detail = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PreflightError(f"{path}: unreadable {name} ({detail}) — re-fetch the model "
                                 "(`dvc repro fetch` after deleting it from paths.cache)") from None
        checked.append(name)
    return checked


def _tokenizer_bin(path: Path) -> None:
    from pipeline.models.tokenizer_bin import TokenizerBin

    tb = TokenizerBin.load(path)
    if len(tb.pieces) < 3:
        raise PreflightError(f"{path}: a tokenizer.bin with {len(tb.pieces)} tokens (needs at least <unk> <s> </s>)"
                             " — re-fetch the model")


def _tokenizer_json(path: Path) -> None:
    from tokenizers import Tokenizer

    Tokenizer.from_file(str(path))


def _json_object(path: Path) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise PreflightError(f"{path}: {path.name} must hold a JSON object, found {type(data).__name__} — "
                             "re-fetch the model")


def _nonempty(path: Path) -> None:
    """meta.bin's layout is MobileQuant's (read only by simple_app): only its presence and size are checkable."""
    if path.stat().st_size == 0:
        raise PreflightError(f"{path}: meta.bin is empty — re-fetch the model")


_READERS = (("config.json", _json_object), ("tokenizer_config.json", _json_object), ("tokenizer.json", _tokenizer_json),
            ("tokenizer.bin", _tokenizer_bin), ("meta.bin", _nonempty))


def check_fetched(cfg: Any, fetch: Mapping[str, Any]) -> dict[str, Any]:
    """Required files of the fetched app and model, and every model file the run/app parses; what was checked."""
    a, m = cfg.app, cfg.model
    check_files("app", a.name, fetch["app"], [a.binary, *a.required_files], "app.binary / app.required_files")
    check_files("model", m.name, fetch["model"], model_requirements(m.format, m.required_files),
                "model.required_files" if m.required_files is not None else f"model.format={m.format}")
    return {"files": "present", "parsed": check_readable(Path(fetch["model"]["local_dir"]))}


def check_device(cfg: Any, props: Mapping[str, Any] | None, fetch: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The chip check against the props the device reports now, and the app's executables against the device's
    CPU (:func:`check_machine`); what was found."""
    chip = check_chip(props, cfg.model.chip, cfg.app.device_arg, model_name=cfg.model.name, app_name=cfg.app.name)
    out: dict[str, Any] = {"soc": soc_of(props), "chip_checked": chip}
    if fetch is not None:
        a = cfg.app
        names = [a.binary] + ([a.bench_binary] if a.bench_binary else [])
        out["machine"] = check_machine(Path(fetch["app"]["local_dir"]), names, props, a.name,
                                       require_elf=a.protocol != "simple_app")
    return out


# ELF e_machine values (the ELF header's bytes 18-19) and Android ABIs (ro.product.cpu.abi)
ELF_MACHINES = {3: "x86", 40: "arm", 62: "x86-64", 183: "aarch64"}
ABI_MACHINE = {"x86": "x86", "armeabi-v7a": "arm", "x86_64": "x86-64", "arm64-v8a": "aarch64"}


def elf_machine(path: Path) -> str | None:
    """The CPU an ELF executable is built for (``aarch64``, ``x86-64`` …), or None when the file is not ELF."""
    with open(path, "rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    number = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(number, f"e_machine {number}")


def check_machine(app_dir: Path, names: list[str], props: Mapping[str, Any] | None, app_name: str, *,
                  require_elf: bool) -> dict[str, str]:
    """Refuse an executable built for another CPU than the device's (an x86-64 build pushed to a phone, an arm64
    one to the virtual device) with one line naming both; a script launcher passes unless ``require_elf``."""
    abi = str((props or {}).get("ro.product.cpu.abi") or "")
    want = ABI_MACHINE.get(abi)
    found: dict[str, str] = {}
    for name in names:
        got = elf_machine(app_dir / name)
        if got is None:
            if require_elf:
                raise PreflightError(f"app={app_name}: {name} is not an ELF executable — fetch a build of it "
                                     f"(app.path / app.source)")
            continue
        found[name] = got
        if want is not None and got != want:
            raise PreflightError(f"app={app_name}: {name} is built for {got} but the device is {abi} ({want}) — "
                                 f"use a build for {want} (README: the NDK build lines for a phone)")
    return found
