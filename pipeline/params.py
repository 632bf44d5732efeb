"""`python -m pipeline.params [overrides…]`: write params.yaml from conf/ exactly as `dvc exp run` composes it.

For `dvc repro` users who edited conf/ (dvc repro does not recompose) and for the committed default params.yaml.
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import OmegaConf

from pipeline.config import ConfigError, compose, to_config


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
