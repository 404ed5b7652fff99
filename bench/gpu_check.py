"""The whole GPU check in one script, sized for one short device loan: ``make gpu-check``.

Runs, in this order, each under its own time limit and all within ``--budget`` seconds (checks that no longer fit
are listed as skipped, never left half-reported):

1. the GPU tests: CUDA graphs against the eager step, no host synchronisation in the hot loop;
2. ``bench/step_time.py --device cuda`` at batch 20 (vae and iwae) and at batch 100 (every suite);
3. ``bench/evaluate_is.py --device cuda``: the importance-sampled log-likelihood;
4. ``bench/step_time.py --device cuda --suite fit``: ``ppdgm.fit`` end to end against the hand-written loops.

Prints one table (check, exit status, seconds, the last line each printed) and writes it, with every check's full
output, to ``runs/gpu-check/gpu-check-<time>.md``. Without a CUDA device it says so and exits with status 1.

    python bench/gpu_check.py [--data-dir DIR] [--budget 420]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def checks(data_dir: str | None) -> list[tuple[str, list[str], int]]:
    """``(name, command, seconds allowed)`` of every check, in the order they run."""
    python = sys.executable
    data = ["--data-dir", data_dir] if data_dir else []
    step_time = [python, "bench/step_time.py", "--device", "cuda", *data]
    return [
        (
            "GPU tests (CUDA graphs, host syncs)",
            [
                python,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/test_compiled.py",
                "tests/test_hot_loop.py",
                "-k",
                "cuda or gpu",
            ],
            180,
        ),  # fmt: skip
        ("step time, batch 20 (vae, iwae)", [*step_time, "--rounds", "3", "--batch-size", "20", "--suite", "vae"], 90),
        ("step time, batch 100 (all suites)", [*step_time, "--rounds", "3", "--batch-size", "100"], 120),
        (
            "IS evaluation",
            [python, "bench/evaluate_is.py", "--device", "cuda", "--images", "2000", "--rounds", "2"],
            60,
        ),
        ("fit end to end", [*step_time, "--suite", "fit", "--rounds", "2", "--fit-epochs", "2"], 120),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None, help="folder holding binarized_mnist.npz (else random binary data)")
    parser.add_argument("--budget", type=float, default=420.0, help="seconds for all checks together")
    parser.add_argument("--out", default=str(ROOT / "runs" / "gpu-check"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu-check: no CUDA device here; nothing was run", file=sys.stderr)
        return 1
    card = torch.cuda.get_device_name(0)
    start = time.perf_counter()
    rows, outputs = [], []
    for name, command, allowed in checks(args.data_dir):
        left = args.budget - (time.perf_counter() - start)
        if left < min(allowed, 30):
            rows.append((name, "skipped (budget spent)", 0.0, ""))
            continue
        tic = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=min(allowed, left))
            status, text = (
                ("passed" if done.returncode == 0 else f"failed ({done.returncode})"),
                done.stdout + done.stderr,
            )
        except subprocess.TimeoutExpired as err:
            status = f"timed out after {min(allowed, left):.0f} s"
            text = (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or "")
        seconds = time.perf_counter() - tic
        last = next((line for line in reversed(text.strip().splitlines()) if line.strip()), "")
        rows.append((name, status, seconds, last))
        outputs.append(f"## {name}\n\n`{' '.join(command)}`: {status}, {seconds:.0f} s\n\n```\n{text.strip()}\n```\n")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    table = [
        f"GPU check {stamp} on {card}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s in all",
        "",
        "| check | status | seconds | last line |",
        "|---|---|---|---|",
        *(f"| {n} | {s} | {t:.0f} | {last.replace('|', '/')} |" for n, s, t, last in rows),
    ]
    print("\n".join(table))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text("\n".join(table) + "\n\n" + "\n".join(outputs))
    print(f"written to {path}")
    return 0 if all(s == "passed" for _, s, _, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
