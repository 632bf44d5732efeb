"""Under `dvc exp run` only: params.yaml is validated when DVC composes it, and a bad override reaches the user as
one line — a value the schema refuses (``-S sequence.max_new_tokens=abc``) or Hydra's own error (a group typo) —
instead of DVC's "unexpected error" with a support link, or a params.yaml that fails every later stage.

DVC composes params.yaml in its own process and first imports every module under ``hydra_plugins/`` (its
``hydra.plugins_path``, the repo root): that import is the one hook DVC offers. The composition then fails before
params.yaml is written, so nothing is poisoned. Outside the dvc command this module does nothing.
"""

from __future__ import annotations

import sys


def one_line(message: str) -> str:
    """Hydra's multi-line message on one line: the error, then the available options comma-separated (the config
    search path that follows is for plugin authors, not for someone who mistyped a group option)."""
    head: list[str] = []
    options: list[str] = []
    for line in (x.strip() for x in message.strip().splitlines()):
        if line.startswith("Config search path"):
            break
        if not line:
            continue
        (options if head and head[-1].startswith("Available options") else head).append(line)
    text = "; ".join(h.rstrip(".") for h in head)
    return f"{text} {', '.join(options)}" if options else text or "invalid override"


def _odeval_checkout() -> bool:
    """Whether the DVC repo this dvc command works in is an odeval checkout (or a DVC copy of one): the plugin is
    installed with the package, so other DVC projects in the same venv load it too and must be left alone."""
    from pathlib import Path

    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / ".dvc").is_dir():
            return (d / "pipeline" / "config.py").is_file() and (d / "conf" / "config.yaml").is_file()
    return False


def _install() -> None:
    # only inside the dvc command (Hydra's own apps print Hydra's errors well), and only for this project
    if "dvc.cli" not in sys.modules or not _odeval_checkout():
        return
    from dvc.exceptions import InvalidArgumentError
    from hydra._internal.hydra import Hydra
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from pipeline.config import ConfigError, to_config  # importable now: DVC put the repo root on sys.path

    compose = Hydra.compose_config
    if getattr(compose, "odeval_wrapped", False):  # Hydra's plugin scan may execute this module twice
        return

    def compose_config(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            cfg = compose(self, *args, **kwargs)
            composed = OmegaConf.create(OmegaConf.to_container(cfg))  # a copy: DVC dumps cfg itself
            with open_dict(composed):
                composed.pop("hydra", None)  # as hydra.compose() does before DVC sees it
            OmegaConf.resolve(composed)
            to_config(composed, source="the composed params.yaml")
        except ConfigError as e:
            raise InvalidArgumentError("; ".join(e.problems) + " — params.yaml is unchanged") from None
        except (HydraException, OmegaConfBaseException) as e:
            raise InvalidArgumentError(f"{one_line(str(e))} — params.yaml is unchanged") from None
        return cfg

    compose_config.odeval_wrapped = True  # type: ignore[attr-defined]
    Hydra.compose_config = compose_config  # type: ignore[method-assign]


_install()
