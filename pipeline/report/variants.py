"""Which params make the selected runs different: the variant columns of the table and the factors of the analysis.

Why deduplicate: a Hydra group choice changes several params at once (``model=tiny-w4`` sets ``model.name`` and
``model.quant``; ``sequence=s512`` sets name, context and max_new_tokens). Params that split the runs into exactly
the same groups are one factor, not three: counting them separately would triple a factor in the ranking and
clutter the table. The factor keeps the most readable key (``model.name``, then ``*.name``) and lists the rest as
aliases.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pipeline.report.runs import RunRecord

# Params that differ between runs without describing the variant (where outputs/logs went).
DEFAULT_IGNORE = ("tracking.", "paths.", "hydra.", "device.virtual.root", "device.virtual.port")
MISSING = "(unset)"


@dataclass
class Factor:
    """A param that varies across the selected runs, its levels (naturally sorted) and same-partition aliases."""

    key: str
    levels: list[str]
    aliases: list[str] = field(default_factory=list)


def natural_key(value: str) -> tuple:
    """Sort numbers numerically ("64" < "512"), then text: sequence budgets and quant bits read in order."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(value))


def value(rec: RunRecord, key: str) -> str:
    return rec.params.get(key, MISSING)


def _ignored(key: str, ignore: Iterable[str]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in ignore)


def varying_keys(records: Sequence[RunRecord], ignore: Iterable[str] = DEFAULT_IGNORE) -> list[str]:
    """Param keys with more than one value across ``records`` (a key absent from some runs counts as a value)."""
    keys = sorted({k for r in records for k in r.params})
    return [k for k in keys if not _ignored(k, ignore) and len({value(r, k) for r in records}) > 1]


def _partition(records: Sequence[RunRecord], key: str) -> tuple[int, ...]:
    """Canonical labelling of the runs by this key's value: equal tuples ⇔ the keys group runs identically."""
    first: dict[str, int] = {}
    return tuple(first.setdefault(value(r, key), len(first)) for r in records)


def _priority(key: str) -> tuple[int, str]:
    return (0 if key == "model.name" else 1 if key.endswith(".name") else 2, key)


def factors(records: Sequence[RunRecord], ignore: Iterable[str] = DEFAULT_IGNORE) -> list[Factor]:
    """The distinct factors among the varying params, ``model.name`` first, then by key."""
    groups: dict[tuple[int, ...], list[str]] = {}
    for k in varying_keys(records, ignore):
        groups.setdefault(_partition(records, k), []).append(k)
    out = []
    for keys in groups.values():
        keys = sorted(keys, key=_priority)
        levels = sorted({value(r, keys[0]) for r in records}, key=natural_key)
        out.append(Factor(key=keys[0], levels=levels, aliases=keys[1:]))
    return sorted(out, key=lambda f: _priority(f.key))


def variant_columns(records: Sequence[RunRecord], facs: Sequence[Factor]) -> list[str]:
    """Table columns: model.name always (even when constant), then every factor key."""
    keys = [f.key for f in facs]
    return keys if "model.name" in keys else ["model.name", *keys]


def variant_label(rec: RunRecord, facs: Sequence[Factor]) -> str:
    """Short plot label: the run's level of every factor ('tiny-w4 · hf-chat'); the model name when none vary."""
    parts = [value(rec, f.key) for f in facs]
    return " · ".join(parts) if parts else value(rec, "model.name")


def sort_records(records: Sequence[RunRecord], facs: Sequence[Factor]) -> list[RunRecord]:
    """Rows in factor order with natural sorting, so a 2×2 design reads as a grid."""
    return sorted(records, key=lambda r: ([natural_key(value(r, f.key)) for f in facs], r.start_time))
