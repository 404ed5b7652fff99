"""Comparison presets shipped with ppdgm: ``ppdgm compare --preset NAME [--budget small|full]``.

Each preset is a spec (see :mod:`ppdgm.compare`) with two budgets: ``small`` finishes in a minute
or two on 2 CPU cores (it is what CI runs), ``full`` is the comparison worth reading.
"""

from __future__ import annotations

import copy
from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "digits": {
        "description": "VAE vs IWAE (k=5) vs IWAE-DReG on the embedded binary digits, vae-mlp networks",
        "runtime": {"small": "about 15 s", "full": "about 4 minutes"},
        "spec": {
            "name": "digits",
            "data": {"name": "digits-binary"},
            "model": {"preset": "vae-mlp", "options": {"z_dim": 10, "hidden": [128]}},
            "budget": {"batch_size": 100, "lr": 3e-3},
            "evaluation": {"metrics": ["log_likelihood", "elbo", "active_units", "seconds_per_epoch"]},
            "methods": [
                {"name": "vae"},
                {"name": "iwae", "label": "iwae k=5", "options": {"num_particles": 5}},
                {"name": "iwae", "label": "iwae k=5 dreg", "options": {"num_particles": 5, "guide_gradient": "dreg"}},
            ],
        },
        "budgets": {
            "small": {"seeds": [0, 1], "budget": {"epochs": 5}, "evaluation": {"num_samples": 100}},
            "full": {"seeds": [0, 1, 2], "budget": {"epochs": 200}, "evaluation": {"num_samples": 1000}},
        },
    },
    "wake-sleep": {
        "description": "WS vs RWS vs NVIL-VAE vs IWAE (VIMCO) on a 12-latent sigmoid belief net, exact likelihood",
        "runtime": {"small": "about 25 s", "full": "about 1 minute"},
        "spec": {
            "name": "wake-sleep",
            "data": {"name": "digits-binary"},
            "model": {"preset": "sbn", "options": {"layers": [12], "hidden": [64]}},
            "budget": {"batch_size": 100, "lr": 3e-3},
            "evaluation": {"metrics": ["exact_log_likelihood", "log_likelihood", "seconds_per_epoch"]},
            "methods": [
                {"name": "ws"},
                {"name": "rws", "label": "rws k=5", "options": {"num_particles": 5}},
                {"name": "vae", "label": "vae (nvil)"},
                {"name": "iwae", "label": "iwae k=5 (vimco)", "options": {"num_particles": 5}},
            ],
        },
        "budgets": {
            "small": {"seeds": [0, 1], "budget": {"epochs": 2}, "evaluation": {"num_samples": 100}},
            "full": {"seeds": [0, 1, 2], "budget": {"epochs": 30}, "evaluation": {"num_samples": 1000}},
        },
    },
}


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def preset_spec(name: str, budget: str = "small") -> dict[str, Any]:
    """The raw spec of preset ``name`` at ``budget`` (``"small"`` or ``"full"``)."""
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown comparison preset {name!r}; known: {', '.join(sorted(PRESETS))}") from None
    if budget not in preset["budgets"]:
        raise ValueError(f"preset {name!r} has budgets {sorted(preset['budgets'])}, not {budget!r}")
    spec = _merge(preset["spec"], preset["budgets"][budget])
    spec["name"] = f"{name}-{budget}"
    return spec
