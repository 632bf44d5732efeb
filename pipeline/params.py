"""`python -m pipeline.params [overrides…]`: write params.yaml from conf/ exactly as `dvc exp run` composes it.

For `dvc repro` users who edited conf/ (dvc repro does not recompose) and for the committed default params.yaml.
`python -m pipeline.params --check` is dvc.yaml's first stage: it validates the whole params.yaml before anything
runs and writes `artifacts/params.ok` (the same bytes for every valid file, so it never re-runs a later stage).
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.config import ConfigError, compose, load_params, to_config

CHECKED = Path("artifacts/params.ok")


def write_params(overrides: list[str], out: Path = Path("params.yaml")) -> Path:
    raw = compose(overrides)
    to_config(raw)  # refuse to write an invalid params.yaml
    out.write_text(OmegaConf.to_yaml(raw))
    return out


def check(params: Path = Path("params.yaml"), out: Path = CHECKED) -> Path:
    """Validate params.yaml (ConfigError names each bad key and how to restore the file); mark it checked."""
    load_params(params)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("params.yaml is valid\n")
    return out


def main() -> None:
    args = sys.argv[1:]
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return
    try:
        print(f"wrote {check() if args == ['--check'] else write_params(args)}")
    except ConfigError as e:
        print(e, file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
