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

    import ppdgm

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
