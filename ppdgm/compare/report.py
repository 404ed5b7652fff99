"""The results of a comparison: the table (mean ± std over seeds), its files, and the figures."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppdgm.compare.metrics import judge_line
from ppdgm.compare.spec import Spec, run_dir
from ppdgm.data.named import load
from ppdgm.evaluate.sampling import plot_samples_2d
from ppdgm.runtime.storage import atomic_path, write_text


def summarise(spec: Spec, results: Sequence[dict]) -> dict:
    """Mean and standard deviation (ddof=1; 0 for one seed) of every metric per method, over seeds."""
    rows = []
    for method in spec.methods:
        runs = sorted((r for r in results if r["label"] == method.label), key=lambda r: r["seed"])
        row: dict[str, Any] = {"method": method.label, "seeds": [r["seed"] for r in runs]}
        for metric in spec.metrics:
            values = np.array([r["metrics"][metric] for r in runs], dtype=np.float64)
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            row[metric] = {"mean": float(values.mean()), "std": std, "values": values.tolist()}
            errors = [r.get("stderr", {}).get(metric) for r in runs]
            if len(runs) == 1 and errors[0] is not None:
                row[metric]["stderr"] = errors[0]
        rows.append(row)
    summary: dict[str, Any] = {
        "name": spec.name,
        "spec_hash": spec.digest(),
        "metrics": list(spec.metrics),
        "rows": rows,
    }
    if spec.reference:
        summary["reference"] = spec.reference
    return summary


def format_table(summary: dict) -> str:
    metrics = summary["metrics"]
    reference = summary.get("reference")
    header = list(metrics) + ([f"{reference['metric']}: {reference['source']}"] if reference else [])
    lines = ["| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for row in summary["rows"]:
        cells = [_cell(row[m]) for m in metrics]
        if reference:
            value = reference.get("values", {}).get(row["method"])
            cells.append("—" if value is None else f"{value:.2f}" if abs(value) >= 10 else f"{value:.4g}")
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(entry: dict) -> str:
    """mean ± std over seeds; with one seed, mean ± standard error over the test set (or the mean alone)."""
    if len(entry["values"]) > 1:
        return f"{entry['mean']:.3f} ± {entry['std']:.3f}"
    if "stderr" in entry:
        return f"{entry['mean']:.3f} ± {entry['stderr']:.3f}"
    return f"{entry['mean']:.3f}"


def table_caption(spec: Spec) -> str:
    if len(spec.seeds) > 1:
        return f"{spec.name}: mean ± standard deviation over {len(spec.seeds)} seeds"
    subset = f"first {spec.test_size} " if spec.test_size else ""
    return f"{spec.name}: one seed; ± standard error over the {subset}test datapoints"


#: the tail of a learning curve whose change tells whether it has flattened: the last tenth of its epochs
CURVE_TAIL = 0.1
#: a curve is flat when its tail moved less than this share of its whole change
FLAT_SHARE = 0.01


def paper_verdict(summary: dict) -> str | None:
    """Whether the paper's gain reproduces: with a reference for two methods, the second's per-seed difference from
    the first in the reference metric (mean ± std over the seeds both ran), beside the paper's difference.

    "reproduces" when the signs agree and the mean difference exceeds its spread over seeds; "same direction, within
    the spread over seeds" when only the signs agree; "reversed" or "opposite direction, within the spread" else.
    """
    reference = summary.get("reference") or {}
    values = reference.get("values", {})
    rows = [row for row in summary["rows"] if row["method"] in values]
    metric = reference.get("metric")
    if len(rows) != 2 or any(metric not in row for row in rows):
        return None
    base, other = rows
    seeds = sorted(set(base["seeds"]) & set(other["seeds"]))
    if not seeds:
        return None
    per_seed = {row["method"]: dict(zip(row["seeds"], row[metric]["values"])) for row in rows}
    ours = np.array([per_seed[other["method"]][s] - per_seed[base["method"]][s] for s in seeds])
    paper = values[other["method"]] - values[base["method"]]
    mean = float(ours.mean())
    spread = float(ours.std(ddof=1)) if len(ours) > 1 else 0.0
    same = np.sign(mean) == np.sign(paper) and paper != 0
    clear = len(ours) > 1 and abs(mean) > spread
    if same:
        word = "reproduces" if clear else "same direction, within the spread over seeds"
    else:
        word = "reversed" if clear else "opposite direction, within the spread over seeds"
    ahead = int((np.sign(ours) == np.sign(paper)).sum()) if paper != 0 else 0
    return (
        f"paper's gain, {other['method']} − {base['method']} in {metric}: {paper:+.3g}; ours, paired over the same "
        f"{len(seeds)} seed(s): {mean:+.3g} ± {spread:.3g} (the paper's direction on {ahead} of {len(seeds)}): {word}"
    )


def objective_curves(runs: Sequence[dict]) -> tuple[str, np.ndarray]:
    """The validation objective (else the training one) of a method's runs: its history key and the values, one row
    per run, cut to the shortest run's epochs."""
    key = next((k for k in runs[0]["history"][-1] if k.startswith("valid_")), None)
    key = key or next(k for k in runs[0]["history"][-1] if k.startswith("train_"))
    length = min(len(r["history"]) for r in runs)
    return key, np.array([[row[key] for row in r["history"][:length]] for r in runs])


def convergence_line(spec: Spec, results: Sequence[dict]) -> str | None:
    """How much each method's validation objective (mean over seeds) moved over the last tenth of its epochs, beside
    its whole change: "flat" below :data:`FLAT_SHARE` of it, else "rising" or "falling"."""
    parts = []
    for method in spec.methods:
        runs = [r for r in results if r["label"] == method.label and r.get("history")]
        if not runs:
            continue
        key, values = objective_curves(runs)
        length = values.shape[1]
        if not key.startswith("valid_") or length < 10:
            return None
        curve = values.mean(0)
        tail = float(curve[-1] - curve[int(length * (1 - CURVE_TAIL))])
        whole = float(curve[-1] - curve[0])
        word = "flat" if abs(tail) < FLAT_SHARE * abs(whole) else "rising" if tail > 0 else "falling"
        parts.append(f"{method.label} {tail:+.3g} (of {whole:+.3g} in all): {word}")
    if not parts:
        return None
    return f"validation objective over the last {CURVE_TAIL:.0%} of the epochs, mean over seeds: " + "; ".join(parts)


def write_results(spec: Spec, summary: dict, results: Sequence[dict]) -> None:
    out = Path(spec.output)
    table = format_table(summary)
    judged = judge_line(spec)
    if judged is not None:
        summary["judge"] = judged
        table = f"{table}\n\n{judged}"
    for key, line in (("verdict", paper_verdict(summary)), ("convergence", convergence_line(spec, results))):
        if line is not None:
            summary[key] = line
            table = f"{table}\n\n{line}"
    print(f"\n{table_caption(spec)}\n{table}")
    write_text(out / "results.md", table + "\n", "results table")
    write_text(out / "results.json", json.dumps(summary, indent=2), "results")
    with atomic_path(out / "results.csv", "results") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method"] + [f"{m}_{s}" for m in summary["metrics"] for s in ("mean", "std")])
        for row in summary["rows"]:
            writer.writerow([row["method"]] + [row[m][s] for m in summary["metrics"] for s in ("mean", "std")])
    plot_learning_curves(spec, results, out / "learning_curves.png")
    plot_sample_grids(spec, out / "samples.png")
    plot_samples_over_density(spec, out / "samples_2d.png")


def plot_learning_curves(spec: Spec, results: Sequence[dict], path: Path) -> None:
    """The validation (or training) objective per method: mean over seeds with a min-max band,
    against steps and against wall-clock seconds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method in spec.methods:
        runs = [r for r in results if r["label"] == method.label]
        key, values = objective_curves(runs)
        length = values.shape[1]
        steps = np.array([row["step"] for row in runs[0]["history"][:length]])
        seconds = np.cumsum(np.array([[row["seconds"] for row in r["history"][:length]] for r in runs]), 1).mean(0)
        for ax, x in zip(axes, (steps, seconds)):
            ax.plot(x, values.mean(0), label=f"{method.label} ({key})")
            ax.fill_between(x, values.min(0), values.max(0), alpha=0.25)
    axes[0].set_xlabel("steps")
    axes[1].set_xlabel("wall-clock seconds")
    for ax in axes:
        ax.set_ylabel("objective (nats)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{spec.name}: mean over {len(spec.seeds)} seed(s), band min-max")
    fig.tight_layout()
    with atomic_path(path, "figure") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def plot_sample_grids(spec: Spec, path: Path) -> None:
    """One row of sample images per method (from each method's first seed), when the data are images."""
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    grids = [(m.label, run_dir(spec, m, spec.seeds[0]) / "samples.png") for m in spec.methods]
    grids = [(label, p) for label, p in grids if p.exists()]
    if not grids:
        return
    fig, axes = plt.subplots(1, len(grids), figsize=(3.2 * len(grids), 3.4), squeeze=False)
    for ax, (label, p) in zip(axes[0], grids):
        ax.imshow(mpimg.imread(p))
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    with atomic_path(path, "figure") as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


def plot_samples_over_density(spec: Spec, path: Path) -> None:
    """For 2-D data with a known density: each method's samples (first seed) over the true log density."""

    runs = [(m.label, run_dir(spec, m, spec.seeds[0]) / "samples.npy") for m in spec.methods]
    panels = [(label, torch.from_numpy(np.load(p))) for label, p in runs if p.exists()]
    dataset = load(spec.data, spec.data_dir)
    if not panels or dataset.log_density is None:
        return
    plot_samples_2d(panels, dataset, path, title=f"{spec.name}: samples (red) over the true density")
