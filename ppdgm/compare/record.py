"""The record of a comparison: spec, spec hash, versions, device and git state; and reading it back to rerun."""

from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

import ppdgm
from ppdgm.compare.spec import Spec, SpecError


def _git_state() -> dict[str, Any]:
    """The commit of the checkout ppdgm runs from, and whether it had uncommitted changes."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"git_commit": commit or None, "git_dirty": bool(status) if status is not None else None}


def run_record(spec: Spec) -> dict:
    """Everything needed to rerun the comparison and to know what it ran on."""
    import pyro

    device = spec.device
    if device.startswith("cuda") and torch.cuda.is_available():
        device_name = torch.cuda.get_device_name(torch.device(device))
    else:
        device_name = platform.processor() or platform.machine()
    return {
        "spec": spec.to_dict(),
        "spec_hash": spec.digest(),
        "versions": {
            "ppdgm": ppdgm.__version__,
            "pyro": pyro.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "device": {"name": device, "detail": device_name, "torch_threads": torch.get_num_threads()},
        **_git_state(),
        "seeds": list(spec.seeds),
    }


def record_differences(path: str | Path, spec: Spec) -> list[str]:
    """What differs between the machine and versions a record ran on and this one's (for ``--rerun``): a rerun
    repeats the record bit for bit only where nothing does."""
    recorded = json.loads(Path(path).read_text())
    now = run_record(spec)
    lines = []
    for name, version in recorded.get("versions", {}).items():
        if now["versions"].get(name) != version:
            lines.append(f"{name} {version} when recorded, {now['versions'].get(name)} here")
    for key in ("name", "detail", "torch_threads"):
        before, here = recorded.get("device", {}).get(key), now["device"].get(key)
        if before != here:
            lines.append(f"device {key} {before!r} when recorded, {here!r} here")
    if recorded.get("git_commit") != now.get("git_commit"):
        lines.append(f"git commit {recorded.get('git_commit')} when recorded, {now.get('git_commit')} here")
    if now.get("git_dirty"):
        lines.append("this checkout has uncommitted changes")
    return lines or ["same versions, device and commit as recorded"]


def spec_from_record(path: str | Path, output: str | Path | None = None) -> Spec:
    """The spec stored in a ``record.json``, for ``ppdgm compare --rerun``."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SpecError(f"cannot read the comparison record {path}: {err}") from None
    if not isinstance(record, dict) or not {"spec", "spec_hash"} <= set(record):
        raise SpecError(f"{path} is not a comparison record (record.json of `ppdgm compare`)")
    spec = Spec.from_dict(record["spec"])
    if output is not None:
        spec = replace(spec, output=str(output))
    if spec.digest() != record["spec_hash"]:
        raise SpecError(f"{path}: the stored spec does not match its hash; the record was edited")
    return spec
