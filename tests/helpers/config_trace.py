"""An access tracer over the composed config object: which config keys does a stage really read?

WHY not a grep: keys are read through helpers (``open_device(cfg.device)``, ``RunOptions.from_config(cfg.runtime)``)
and on paths a grep cannot see. The tracer swaps the class of every dataclass node of a validated
:class:`pipeline.config.Config` for a subclass whose ``__getattribute__`` records the dotted path of every leaf
value read (a scalar, list or dict; reading a section object itself records nothing). ``dataclasses.replace`` of a
traced node makes a traced node (same class), so a stage that swaps a section keeps being traced.

Whole-config snapshots are not inputs of a result and are not recorded: ``pipeline.config.as_dict`` (the MLflow
params record of every key) runs with recording paused.
"""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from collections.abc import Iterator
from typing import Any

from pipeline.config import Config

_PAUSED = [0]


def _section_paths(cls: type, prefix: str = "", out: dict[type, str] | None = None) -> dict[type, str]:
    """Config dataclass → its dotted path (each schema class sits at one path; list items share their list's)."""
    out = {} if out is None else out
    out[cls] = prefix
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        node = tp if dataclasses.is_dataclass(tp) else (args[0] if args else None)
        if node is not None and node not in out:
            _section_paths(node, f"{prefix}{f.name}.", out)
    return out


class ConfigTrace:
    """Records ``section.key`` paths read from a traced config; ``reads`` is the set since the last ``reset``."""

    def __init__(self) -> None:
        self.reads: set[str] = set()
        self._classes: dict[type, type] = {}
        self._paths = _section_paths(Config)

    def traced(self, cfg: Config) -> Config:
        """Trace ``cfg`` in place (its nodes change class) and return it."""
        self._swap(cfg)
        return cfg

    def reset(self) -> set[str]:
        reads, self.reads = self.reads, set()
        return reads

    def _swap(self, node: Any) -> None:
        if dataclasses.is_dataclass(node) and not isinstance(node, type):
            base = type(node)
            if base in self._paths:
                node.__class__ = self._subclass(base)
            for f in dataclasses.fields(node):
                self._swap(object.__getattribute__(node, f.name))
        elif isinstance(node, list):
            for item in node:
                self._swap(item)

    def _subclass(self, base: type) -> type:
        if base not in self._classes:
            prefix, names, trace = self._paths[base], {f.name for f in dataclasses.fields(base)}, self

            def __getattribute__(obj: Any, name: str) -> Any:  # noqa: N807 - the hook itself
                value = object.__getattribute__(obj, name)
                if name in names and not _PAUSED[0] and not dataclasses.is_dataclass(value):
                    trace.reads.add(prefix + name)
                return value

            self._classes[base] = type(f"Traced{base.__name__}", (base,), {"__getattribute__": __getattribute__})
        return self._classes[base]


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Reads inside this block are not recorded (whole-config snapshots)."""
    _PAUSED[0] += 1
    try:
        yield
    finally:
        _PAUSED[0] -= 1


def covered(key: str, params: list[str]) -> bool:
    """True when a dvc.yaml ``params`` entry names ``key`` or a section above it."""
    return any(key == p or key.startswith(p + ".") for p in params)
