"""Comparison presets shipped with ppdgm as TOML files: ``ppdgm compare --preset NAME [--budget small|full]``.

Each file in ``ppdgm/compare/toml/`` holds a ``description``, the ``runtime`` of each budget, a ``spec``
(see :mod:`ppdgm.compare`) and ``budgets``: each budget's table is merged over the spec. ``small``
finishes in a minute or two on 2 CPU cores (it is what CI runs), ``full`` is the comparison worth
reading. ``--preset`` also takes the path of such a file, so a copy can be edited and run.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

from ppdgm.compare.spec import SpecError, read_toml
from ppdgm.errors import UsageError

FOLDER = Path(__file__).resolve().parent / "toml"
PRESET_FIELDS = ("description", "runtime", "spec", "budgets")


@cache
def _shipped() -> dict[str, dict[str, Any]]:
    return {path.stem: read_preset(path) for path in sorted(FOLDER.glob("*.toml"))}


def comparison_names() -> list[str]:
    """The names of the shipped comparisons."""
    return sorted(_shipped())


def read_preset(path: str | Path) -> dict[str, Any]:
    """A preset file's contents, checked for its four fields."""
    preset = read_toml(path, "preset")
    unknown = sorted(set(preset) - set(PRESET_FIELDS))
    missing = [key for key in ("spec", "budgets") if not isinstance(preset.get(key), dict)]
    if unknown or missing:
        raise SpecError(f"{path}: a preset holds {', '.join(PRESET_FIELDS)}; unknown {unknown}, missing {missing}")
    return preset


def load_preset(name_or_path: str | Path) -> tuple[str, dict[str, Any]]:
    """A shipped preset by name, or a preset file by path: its name and contents."""
    shipped = _shipped()
    if str(name_or_path) in shipped:
        return str(name_or_path), copy.deepcopy(shipped[str(name_or_path)])
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        return path.stem, read_preset(path)
    raise UsageError(f"unknown comparison preset {str(name_or_path)!r}; known: {', '.join(shipped)}")


def preset_path(name: str) -> Path:
    """The file of a shipped preset (to copy and edit)."""
    load_preset(name)
    return FOLDER / f"{name}.toml"


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def preset_spec(name: str | Path, budget: str = "small") -> dict[str, Any]:
    """The raw spec of preset ``name`` (a shipped name or a file) at ``budget`` (``"small"``, ``"full"``...)."""
    name, preset = load_preset(name)
    if budget not in preset["budgets"]:
        raise UsageError(f"preset {name!r} has budgets {sorted(preset['budgets'])}, not {budget!r}")
    spec = _merge(preset["spec"], preset["budgets"][budget])
    spec["name"] = f"{name}-{budget}"
    return spec


def describe(name: str) -> tuple[str, str]:
    """A shipped preset's description and its budgets' run times."""
    preset = _shipped()[name]
    return preset.get("description", ""), ", ".join(f"{b}: {t}" for b, t in preset.get("runtime", {}).items())
