"""Checkpoints of a fit: what they hold, and resuming one with the settings it must agree on."""

from __future__ import annotations

from pathlib import Path

from ppdgm.runtime import storage as checkpoints
from ppdgm.runtime.storage import CheckpointError
from ppdgm.training.run import Run

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(run: Run, path: Path, epoch: int, step: int, partial: dict | None) -> None:
    """Write the training state; ``partial`` is the progress within epoch ``epoch`` (``None`` at an epoch's end,
    where ``epoch`` counts the completed epochs)."""
    checkpoints.save(
        {
            "epoch": epoch,
            "step": step,
            "partial": partial,
            "engine": run.engine.state_dict(),
            "method": run.method.state_dict(),
            "rng": checkpoints.rng_state(),
            "history": run.history,
            "seconds": run.seconds,
            "config": run.config,
        },
        path,
    )


#: what a checkpoint must agree on with the fit that resumes it (the run would be another run otherwise)
_FIXED = (
    "method", "method_options", "data", "columns", "obs_site", "batch_size", "seed", "optimizer", "shuffle",
    "transform", "arguments", "generated_rows", "auxiliary",
)  # fmt: skip


#: training settings a resumed fit may change with ``resume="override"`` (the new values then apply)
_OVERRIDABLE = ("lr", "optimizer_options", "lr_schedule", "precision", "step_kwargs")


def _data_change(saved: dict | None, current: dict | None) -> str:
    """What differs between two data fingerprints (:meth:`ppdgm.data.streams.Source.fingerprint`), in words; ``""`` when
    nothing does or the checkpoint has none (written before fingerprints). The saved sample hash may be in either of
    its forms (``sample_v1``: checkpoints written before 2026-12-05)."""
    if saved is None or current is None:
        return ""
    saved, current = dict(saved), dict(current)
    if saved.get("sample") == current.get("sample_v1"):
        saved["sample"] = current.get("sample")
    saved.pop("sample_v1", None)
    current.pop("sample_v1", None)
    if saved == current:
        return ""
    if saved.get("kind") != current.get("kind") or "sources" in saved or "sources" in current:
        if len(saved.get("sources", ())) == len(current.get("sources", ())) and "sources" in saved:
            parts = [_data_change(a, b) for a, b in zip(saved["sources"], current["sources"])]
            return "; ".join(f"source {i}: {p}" for i, p in enumerate(parts) if p)
        return f"{saved.get('kind')} -> {current.get('kind')}"
    words = []
    if saved.get("rows") != current.get("rows"):
        words.append(f"rows: {saved.get('rows')} -> {current.get('rows')}")
    if saved.get("columns") != current.get("columns"):
        words.append(f"columns: {saved.get('columns')} -> {current.get('columns')}")
    elif saved.get("sample") != current.get("sample"):
        words.append("other values in the sampled rows")
    if saved.get("sampling") != current.get("sampling"):
        words.append(f"sampler: {saved.get('sampling')} -> {current.get('sampling')}")
    return ", ".join(words) or "another data source"


def restore(run: Run, path: Path, override: bool) -> tuple[int, int, dict | None]:
    state = checkpoints.load(path, "checkpoint", "delete it, or pass resume=False (CLI: a new --out), to start fresh")
    saved, current = state["config"], run.config
    fixed = [k for k in _FIXED if saved.get(k) != current.get(k)]
    if fixed:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in fixed)
        raise CheckpointError(
            f"the checkpoint {path} belongs to another run ({changes}); use another checkpoint_dir or resume=False"
        )
    changed = [k for k in _OVERRIDABLE if saved.get(k) != current.get(k)]
    if current["steps"] < state["step"] or current["steps"] < saved.get("steps", 0):
        changed.append("steps")
    data_change = _data_change(saved.get("data_identity"), current.get("data_identity"))
    if data_change and not override:
        raise CheckpointError(
            f"resuming {path} with other training data ({data_change}); pass resume='override' (CLI: --override) "
            "to continue on these data, or resume=False to start fresh"
        )
    if changed and not override:
        changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise CheckpointError(
            f"resuming {path} with other training settings ({changes}); only a longer budget resumes as is. Pass "
            "resume='override' (CLI: --override) to continue with the new settings, or resume=False to start fresh"
        )
    run.engine.load_state_dict(state["engine"])
    run.engine.apply_settings(current["optimizer_options"])
    run.method.load_state_dict(state["method"])
    checkpoints.set_rng_state(state["rng"])
    run.history[:] = state["history"]
    run.seconds = state["seconds"]
    partial = state.get("partial")
    if partial is not None and partial.get("recorded") and state["step"] < current["steps"]:
        run.seconds -= run.history.pop()["seconds"]  # the budget ended inside this epoch: continue its record
    return state["epoch"], state["step"], partial
