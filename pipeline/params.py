"""params.yaml, written and read. `python -m pipeline.params [overrides…]` writes it from conf/ exactly as
`dvc exp run` composes it (for `dvc repro` users who edited conf/, and the committed default); :func:`load_params`
is the loader every DVC stage uses: it validates, names the way back from a bad composition, and warns when the
file no longer matches conf/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from pipeline.config import CONF_DIR, Config, ConfigError, compose, group_choices, to_config


def load_params(path: str | os.PathLike = "params.yaml") -> Config:
    """The loader every DVC stage uses. Warns (does not fail) when params.yaml looks stale against conf/."""
    p = Path(path)
    if not p.exists():
        raise ConfigError([f"{p}: not found — run `dvc exp run` (composes it from conf/) or `make params`"], str(p))
    try:
        cfg = to_config(OmegaConf.load(p), source=str(p))
    except ConfigError as e:
        raise ConfigError([*e.problems, restore_hint(p)], str(p)) from None
    warn_if_stale(p, cfg)
    return cfg


def restore_hint(params: Path) -> str:
    """What to do about an invalid params.yaml: it is a composition (conf/ + `-S` overrides), which `dvc repro`
    reads as it is, so a bad value stays until the file is restored."""
    return (f"{params} is composed from conf/ (`dvc exp run -S …`, `make params`) and `dvc repro` reads it as it is:"
            f" the bad value came from a previous composition. Restore it: `git checkout -- {params}` (the committed"
            " defaults) or `python -m pipeline.params <your overrides>` (recompose), then re-run")


def warn_if_stale(params_path: Path, cfg: Config) -> list[str]:
    """`dvc repro` reads params.yaml as it is: tell the user when conf/ says something else for the same choices.

    params.yaml written with an experiment preset (`python -m pipeline.params experiment=offline-demo`, as
    `make demo` does) sets keys outside the groups (app.template, tag): it is compared with each preset too
    (the one named like its `tag` first) and counts as fresh when one of them reproduces it exactly."""
    current = OmegaConf.to_container(OmegaConf.load(params_path))
    diffs = _stale_diffs(current, group_choices(cfg))
    if diffs:
        presets = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
        presets.sort(key=lambda name: name != cfg.tag)
        for name in presets:
            d = _stale_diffs(current, [*group_choices(cfg), f"experiment={name}"])
            if d is not None and len(d) < len(diffs):
                diffs = d
            if not diffs:
                break
    if diffs:
        shown = "; ".join(f"{k} (params.yaml {b!r}, conf/ {a!r})" for k, a, b in diffs[:5])
        print(
            f"warning: {params_path} differs from conf/ for the same group choices: {shown}. Fine if you set these"
            " with `dvc exp run -S`; if you edited conf/, note that `dvc repro` does not recompose — run"
            " `dvc exp run` (or `make params`)."
        )
    return [k for k, _, _ in diffs or []]


def _stale_diffs(current: Any, overrides: list[str]) -> list[tuple[str, Any, Any]] | None:
    """Differences between params.yaml and conf/ composed with ``overrides``; None when they do not compose."""
    try:
        fresh = OmegaConf.to_container(compose(overrides))
    except Exception:  # an unknown group name etc.: the params were set by hand; nothing to compare against
        return None
    return _diff(fresh, current)


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [(prefix.rstrip("."), a, b)]


def write_params(overrides: list[str], out: Path = Path("params.yaml")) -> Path:
    raw = compose(overrides)
    to_config(raw)  # refuse to write an invalid params.yaml
    out.write_text(OmegaConf.to_yaml(raw))
    return out


def main() -> None:
    args = sys.argv[1:]
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    try:
        print(f"wrote {write_params(args)}")
    except ConfigError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
