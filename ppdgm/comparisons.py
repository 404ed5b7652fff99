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
        "runtime": {"small": "about 15 s", "demo": "about 1 minute", "full": "about 4 minutes"},
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
            "demo": {"seeds": [0], "budget": {"epochs": 200}, "evaluation": {"num_samples": 1000}},
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
    "iwae-table": {
        "description": "Burda et al. (2016) on statically binarized MNIST: VAE and IWAE k=5, 50, iwae-1layer "
        "networks, the paper's Adam settings and schedule, published numbers beside ours",
        "runtime": {
            "small": "about 1 minute",
            "full": "estimated 17 h (vae), 24 h (iwae k=5) and 62 h (iwae k=50) of training: measured step times "
            "at batch 20 x 2,500 steps x 3,280 epochs; a GPU is advised",
        },
        "spec": {
            "name": "iwae-table",
            "data": {"name": "binarized-mnist"},
            "model": {"preset": "iwae-1layer"},
            "budget": {"lr": 1e-3, "optimizer_options": {"betas": [0.9, 0.999], "eps": 1e-4}},
            "evaluation": {"metrics": ["log_likelihood", "active_units", "seconds_per_epoch"]},
            "methods": [
                {"name": "vae", "label": "vae (iwae k=1)"},
                {"name": "iwae", "label": "iwae k=5", "options": {"num_particles": 5}},
                {"name": "iwae", "label": "iwae k=50", "options": {"num_particles": 50}},
            ],
            "reference": {
                "metric": "log_likelihood",
                "source": "Burda et al. 2016, App. D (static binarization)",
                "values": {"vae (iwae k=1)": -88.71, "iwae k=5": -87.63, "iwae k=50": -87.10},
            },
        },
        "budgets": {
            "small": {
                "seeds": [0],
                "budget": {"steps": 100, "batch_size": 100},
                "evaluation": {"num_samples": 50, "test_size": 500},
            },
            "full": {
                "seeds": [0],
                "budget": {"epochs": 3280, "batch_size": 20, "lr_schedule": "burda2016"},
                "evaluation": {"num_samples": 5000},
            },
        },
    },
}


def _modes_preset(data: str, noise_scale: float, runtime_full: str) -> dict[str, Any]:
    """Mode missing vs mode covering (Hu et al. 2018): six methods, one generator network, a 2-D mixture."""
    return {
        "description": f"mode missing vs covering on {data}: vae, gan, wgan-gp, bigan, iwgan, aavae with one "
        "generator network (gan-mlp, Normal x site); modes covered, high-quality samples, KL(true || model)",
        "runtime": {"small": "about 1 minute", "full": runtime_full},
        "spec": {
            "name": f"modes-{data}",
            "data": {"name": data},
            "model": {"preset": "gan-mlp", "options": {"z_dim": 2, "hidden": [256, 256], "noise_scale": noise_scale}},
            "budget": {"batch_size": 256, "lr": 1e-3, "optimizer_options": {"betas": [0.5, 0.999]}},
            "evaluation": {"metrics": ["mode_coverage", "high_quality_fraction", "kl_true_model"]},
            "methods": [
                {"name": "vae"},
                {"name": "gan"},
                {"name": "wgan-gp", "options": {"gradient_penalty": 0.1}},
                {"name": "bigan"},
                {"name": "iwgan", "label": "iwgan k=5", "options": {"num_particles": 5}},
                {"name": "aavae"},
            ],
        },
        "budgets": {
            "small": {"seeds": [0], "budget": {"steps": 200}},
            "full": {"seeds": [0, 1, 2], "budget": {"steps": 6000}},
        },
    }


PRESETS["iwgan-digits"] = {
    "description": "IWGAN (k=5) vs GAN on the embedded digits: classifier (inception) score and classes covered",
    "runtime": {"small": "about 1 minute", "full": "about 10 minutes with --jobs 2"},
    "spec": {
        "name": "iwgan-digits",
        "data": {"name": "digits"},
        "model": {"preset": "gan-image", "options": {"z_dim": 16, "hidden": [128, 128]}},
        "budget": {"batch_size": 64, "lr": 1e-3, "optimizer_options": {"betas": [0.5, 0.999]}},
        "evaluation": {"metrics": ["inception_score", "class_coverage"]},
        "methods": [{"name": "gan"}, {"name": "iwgan", "label": "iwgan k=5", "options": {"num_particles": 5}}],
    },
    "budgets": {
        "small": {"seeds": [0], "budget": {"steps": 200}},
        "full": {"seeds": [0, 1, 2], "budget": {"steps": 4000}},
    },
}

PRESETS["aavae-mnist"] = {
    "description": "AAVAE vs VAE on statically binarized MNIST, iwae-1layer networks, test log-likelihood (IS)",
    "runtime": {"small": "about 1 minute", "full": "about 25 minutes with --jobs 2"},
    "spec": {
        "name": "aavae-mnist",
        "data": {"name": "binarized-mnist"},
        "model": {"preset": "iwae-1layer"},
        "budget": {"batch_size": 100, "lr": 1e-3},
        "evaluation": {"metrics": ["log_likelihood", "elbo"]},
        "methods": [{"name": "vae"}, {"name": "aavae"}],
    },
    "budgets": {
        "small": {"seeds": [0], "budget": {"steps": 100}, "evaluation": {"num_samples": 50, "test_size": 200}},
        "full": {"seeds": [0, 1, 2], "budget": {"epochs": 10}, "evaluation": {"num_samples": 5000, "test_size": 1000}},
    },
}

PRESETS["pixelcnn-mnist"] = {
    "description": "PixelCNN by maximum likelihood on statically binarized MNIST, exact test log-likelihood",
    "runtime": {"small": "about 1 minute", "full": "about 15 minutes per epoch on 2 CPU cores; a GPU is advised"},
    "spec": {
        "name": "pixelcnn-mnist",
        "data": {"name": "binarized-mnist"},
        "model": {"preset": "pixelcnn", "options": {"channels": 32, "layers": 4, "kernel_size": 5}},
        "budget": {"batch_size": 100, "lr": 1e-3},
        "evaluation": {"metrics": ["exact_log_likelihood", "seconds_per_epoch"]},
        "methods": [{"name": "mle"}],
    },
    "budgets": {
        "small": {
            "seeds": [0],
            "model": {"options": {"channels": 8, "layers": 2, "kernel_size": 3}},
            "budget": {"steps": 30, "batch_size": 50},
            "evaluation": {"test_size": 200},
        },
        "full": {"seeds": [0], "budget": {"epochs": 10}},
    },
}

PRESETS["rbm-digits"] = {
    "description": "RBM (16 hidden units) on the binary digits: CD-1 vs CD-10 vs PCD-1, exact test log-likelihood",
    "runtime": {"small": "about 10 s", "full": "about 2 minutes"},
    "spec": {
        "name": "rbm-digits",
        "data": {"name": "digits-binary"},
        "model": {"preset": "rbm", "options": {"n_hidden": 16}},
        "budget": {"batch_size": 100, "lr": 0.01},
        "evaluation": {"metrics": ["exact_log_likelihood", "seconds_per_epoch"]},
        "methods": [
            {"name": "cd", "label": "cd-1"},
            {"name": "cd", "label": "cd-10", "options": {"k": 10}},
            {"name": "pcd", "label": "pcd-1"},
        ],
    },
    "budgets": {
        "small": {"seeds": [0], "budget": {"epochs": 2}},
        "full": {"seeds": [0, 1, 2], "budget": {"epochs": 100}},
    },
}

PRESETS["dbn-digits"] = {
    "description": "a deep belief net (64-32-12) pre-trained by CD-1, then fine-tuned by ws vs rws; IS log-likelihood",
    "runtime": {"small": "about 30 s", "full": "about 5 minutes"},
    "spec": {
        "name": "dbn-digits",
        "data": {"name": "digits-binary"},
        "model": {"preset": "dbn", "options": {"hidden": [32, 12], "pretrain_epochs": 20}},
        "budget": {"batch_size": 100, "lr": 1e-3},
        "evaluation": {"metrics": ["log_likelihood"]},
        "methods": [{"name": "ws"}, {"name": "rws", "label": "rws k=5", "options": {"num_particles": 5}}],
    },
    "budgets": {
        "small": {
            "seeds": [0],
            "model": {"options": {"pretrain_epochs": 2}},
            "budget": {"epochs": 1},
            "evaluation": {"num_samples": 50},
        },
        "full": {"seeds": [0, 1, 2], "budget": {"epochs": 20}, "evaluation": {"num_samples": 1000}},
    },
}

PRESETS["cyclegan-digits"] = {
    "description": "CycleGAN between the digits and inverted digits, cycle weight 10 vs 1; test cycle error",
    "runtime": {"small": "about 20 s", "full": "about 10 minutes"},
    "spec": {
        "name": "cyclegan-digits",
        "data": {"name": "digits-inverted"},
        "model": {"preset": "cyclegan"},
        "budget": {"batch_size": 64, "lr": 1e-3, "optimizer_options": {"betas": [0.5, 0.999]}},
        "evaluation": {"metrics": ["objective"]},
        "methods": [
            {"name": "cyclegan", "label": "cyclegan λ=10"},
            {"name": "cyclegan", "label": "cyclegan λ=1", "options": {"cycle_weight": 1.0}},
        ],
    },
    "budgets": {
        "small": {"seeds": [0], "budget": {"steps": 20}},
        "full": {"seeds": [0, 1, 2], "budget": {"steps": 800}},
    },
}

PRESETS["modes-ring8"] = _modes_preset("ring8", 0.02, "about 25 minutes with --jobs 2")
PRESETS["modes-grid25"] = _modes_preset("grid25", 0.05, "about 25 minutes with --jobs 2")


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
