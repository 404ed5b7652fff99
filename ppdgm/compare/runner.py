"""Running a comparison: every method x seed as an independent, resumable run, in this process, a pool or torchrun."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from tqdm.auto import tqdm

import ppdgm
from ppdgm.compare.metrics import CLASSIFIER_METRICS, JUDGE_VERSION, evaluate_run
from ppdgm.compare.record import run_record
from ppdgm.compare.report import summarise, write_results
from ppdgm.compare.spec import MethodSpec, Spec, SpecError, parse_spec, run_dir
from ppdgm.data.named import load
from ppdgm.data.streams import materialize
from ppdgm.data.transforms import get_transform
from ppdgm.errors import UsageError
from ppdgm.evaluate.fidelity import check_inception
from ppdgm.evaluate.sampling import generate, sample_rows, save_image_grid
from ppdgm.evaluate.tensorboard import TensorBoardLogger
from ppdgm.runtime import distributed
from ppdgm.runtime.devices import device_context
from ppdgm.runtime.storage import atomic_path, write_text, writing
from ppdgm.training.loop import validation_objective
from ppdgm.zoo import build

if TYPE_CHECKING:
    from ppdgm.data.dataset import Dataset

RESULT = "result.json"


def build_pair(spec: Spec, x_dim: int) -> tuple[Callable, Callable | None]:
    """A fresh (model, guide) pair for the spec: a preset, or a user factory ``module:function``."""
    if ":" in spec.model:
        module_name, function_name = spec.model.split(":", 1)
        factory = getattr(importlib.import_module(module_name), function_name)
        return factory(x_dim, **spec.model_options)

    return build(spec.model, x_dim, **spec.model_options)


def load_dataset(spec: Spec) -> Dataset:
    """The spec's data set with its columns, and its transform for the training batches and evaluation splits."""

    dataset = load(spec.data, spec.data_dir, **spec.data_options)
    dataset.transform = get_transform(spec.transform)
    return dataset


def run_one(spec_dict: dict, method_index: int, seed: int, tensorboard: bool = False) -> dict:
    """Train and evaluate one method x seed (in this process); skip it when its result exists."""
    spec = Spec.from_dict(spec_dict)
    method = spec.methods[method_index]
    folder = run_dir(spec, method, seed)
    check_run_folder(spec, method, seed, folder)  # before a stored result is reused: it may be another run's
    done = folder / RESULT
    if done.exists():
        result = json.loads(done.read_text())
        if reusable(result, spec):
            return result
    folder.mkdir(parents=True, exist_ok=True)
    if spec.nproc_per_run > 1:
        return _launch_distributed(spec, method_index, seed, folder, tensorboard)
    return deterministic_run(spec, method, seed, folder, tensorboard)


#: spec fields that do not change how a run trains: a run folder trained under another value is resumed or
#: re-evaluated, not refused (the budget only grows: see :func:`check_run_folder`)
_NOT_TRAINING = (
    "name", "output", "seeds", "methods", "reference", "metrics", "num_samples", "test_size", "iwae_k", "steps",
    "epochs", "inception_weights",
)  # fmt: skip


def training_identity(spec: Spec, method: MethodSpec, seed: int) -> dict[str, Any]:
    """Everything that decides how one run trains: the spec's training fields, the method and the seed."""
    fields = {k: v for k, v in spec.to_dict().items() if k not in _NOT_TRAINING}
    if spec.data_options.get("columns") == "x,y,labelled":
        # the validation history is scored on these rows: before 2026-12-05 they were marked labelled, and scored
        # with the classification term (see ppdgm.data.images.evaluation_mask); such runs are not resumed
        fields["validation_and_test_rows"] = "unlabelled"
    return json.loads(
        json.dumps({**fields, "method": method.name, "options": method.options, "seed": seed}, default=str)
    )


def reusable(result: Mapping[str, Any], spec: Spec) -> bool:
    """Whether a run's stored result is this spec's: the same spec, and, where samples are judged, the same judge (a
    result judged by another is evaluated again, from the run's finished checkpoint)."""
    judged = bool(set(spec.metrics) & set(CLASSIFIER_METRICS)) and not spec.inception_weights
    return result.get("spec_hash") == spec.digest() and (not judged or result.get("judge") == JUDGE_VERSION)


def check_run_folder(spec: Spec, method: MethodSpec, seed: int, folder: Path) -> None:
    """Refuse a run folder holding a run trained otherwise than ``spec`` trains it (another model, rate, data...):
    resuming its checkpoint would evaluate one spec's parameters under another's name. A longer budget resumes it; a
    shorter one is refused too."""
    config_path = folder / "config.json"
    if not config_path.exists():
        return
    try:
        saved = json.loads(config_path.read_text())
    except (OSError, ValueError):
        saved = {}
    before = saved.get("training")
    if before is None:  # a run of an older ppdgm: its checkpoint's own checks apply
        return
    now = training_identity(spec, method, seed)
    changes = [
        f"{k}: {before.get(k)!r} -> {now.get(k)!r}"
        for k in sorted(set(before) | set(now))
        if before.get(k) != now.get(k)
    ]
    budget = saved.get("budget", {})
    for key in ("steps", "epochs"):
        old, new = budget.get(key), getattr(spec, key)
        if old is not None and (new is None or new < old):
            changes.append(f"{key}: {old!r} -> {new!r} (a shorter budget)")
    if changes:
        raise SpecError(
            f"{folder} holds a run trained otherwise ({'; '.join(changes)}): resuming it under this spec would mix "
            f"two comparisons. Give this spec another output folder, or delete {folder} to train it afresh"
        )


def deterministic_run(spec: Spec, method: MethodSpec, seed: int, folder: Path, tensorboard: bool) -> dict:
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _train_and_evaluate(spec, method, seed, folder, tensorboard)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def _launch_distributed(spec: Spec, method_index: int, seed: int, folder: Path, tensorboard: bool) -> dict:
    """Train one run on ``spec.nproc_per_run`` ranks with torchrun (rank 0 evaluates), then read its result."""
    spec_file = folder / "spec.json"
    write_text(spec_file, json.dumps(spec.to_dict(), default=str), "spec")
    threads = max(1, torch.get_num_threads() // spec.nproc_per_run)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(spec.nproc_per_run),
        "-m", "ppdgm.compare.worker", str(spec_file), str(method_index), str(seed),
        *(["--tensorboard"] if tensorboard else []),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log = folder / "torchrun.log"
    with open(log, "w") as out:
        code = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    if code != 0 or not (folder / RESULT).exists():
        tail = "".join(log.read_text().splitlines(keepends=True)[-20:])
        where = f"the {spec.nproc_per_run}-process run in {folder}"
        raise RuntimeError(f"{where} failed (exit {code}); {log} ends:\n{tail}")
    return json.loads((folder / RESULT).read_text())


def _train_and_evaluate(spec: Spec, method: MethodSpec, seed: int, folder: Path, tensorboard: bool) -> dict:

    done = folder / RESULT
    dataset = load_dataset(spec)
    torch.manual_seed(seed)  # the same initial networks for every method of a seed
    model, guide = build_pair(spec, dataset.dim)
    config = {
        "method": method.name,
        "label": method.label,
        "options": method.options,
        "seed": seed,
        "spec_hash": spec.digest(),
        "training": training_identity(spec, method, seed),
        "budget": {"steps": spec.steps, "epochs": spec.epochs},
    }
    main = distributed.is_main()
    if main:
        write_text(folder / "config.json", json.dumps(config, indent=2, default=str), "run config")
    callbacks = []
    if tensorboard and main:
        callbacks.append(TensorBoardLogger(folder / "tensorboard", model=model, image_shape=dataset.image_shape))
    training = spec.training_config(method, seed, checkpoint_dir=folder, progress=False, callbacks=callbacks)
    run = ppdgm.fit(model, guide, dataset, method.name, config=training)
    for callback in callbacks:
        callback.close()
    if distributed.world_size() > 1:  # trained data-parallel: rank 0 evaluates alone
        torch.distributed.destroy_process_group()
        if not main:
            return {}
    run.save(folder / "params.pt")
    run.save_history(folder / "history.csv")
    torch.manual_seed(seed)
    test = dataset.rows("test", spec.test_size, seed)
    metrics, stderr = evaluate_run(spec, model, guide, test, run.history)
    if "objective" in spec.metrics:  # the method's own objective on the test split (e.g. -cycle error)
        with run.params():
            objective = validation_objective(run.method, run.programs, test.to(run.device))
            metrics["objective"] = float("nan") if objective is None else objective
    torch.manual_seed(seed)
    if dataset.image_shape is not None:
        save_image_grid(sample_rows(run, 64, mean=True), dataset.image_shape, folder / "samples.png")
    elif dataset.dim == 2:
        with atomic_path(folder / "samples.npy", "samples") as tmp:
            np.save(tmp, generate(model, 1000, mean=False).reshape(1000, 2).cpu().numpy())
    result = {
        "label": method.label,
        "seed": seed,
        "metrics": metrics,
        "stderr": stderr,
        "history": run.history,
        "step_path": run.config.get("step_path"),
        "optimizers": run.config.get("optimizers"),
        "judge": JUDGE_VERSION,
        "spec_hash": spec.digest(),
    }
    write_text(done, json.dumps(result, indent=2), "run result")
    return result


def compare(
    spec: Spec | Mapping[str, Any] | str | Path,
    *,
    jobs: int = 1,
    progress: bool = True,
    on_run_done: Callable[[dict], Any] | None = None,
    tensorboard: bool = False,
) -> dict:
    """Run every method x seed of ``spec`` (skipping completed runs) and write the results.

    Returns the results dict that is also written as ``results.json``.
    """
    spec = spec if isinstance(spec, Spec) else parse_spec(spec)
    if jobs < 1:
        raise UsageError(f"jobs must be at least 1, got {jobs}")
    with writing(spec.output, "comparison folder"):
        return _compare(spec, jobs, progress, on_run_done, tensorboard)


def _compare(
    spec: Spec, jobs: int, progress: bool, on_run_done: Callable[[dict], Any] | None, tensorboard: bool
) -> dict:
    out = Path(spec.output)
    if spec.inception_weights and set(spec.metrics) & {"inception_score", "fid"}:
        check_inception(spec.inception_weights)  # missing weights are said before any run trains, not after the first
    for i, seed in ((i, seed) for i in range(len(spec.methods)) for seed in spec.seeds):  # before anything is written
        check_run_folder(spec, spec.methods[i], seed, run_dir(spec, spec.methods[i], seed))
    write_text(out / "record.json", json.dumps(run_record(spec), indent=2), "comparison record")
    grid = [(i, seed) for i in range(len(spec.methods)) for seed in spec.seeds]
    spec_dict = spec.to_dict()
    results: list[dict] = []
    bar = tqdm(total=len(grid), desc=f"compare {spec.name}", unit="run", disable=not progress, file=sys.stderr)
    if jobs == 1:
        for i, seed in grid:
            bar.set_postfix_str(f"{spec.methods[i].label} seed {seed}")
            results.append(run_one(spec_dict, i, seed, tensorboard))
            bar.update(1)
            if on_run_done is not None:
                on_run_done(results[-1])
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)  # jobs x threads within the cores: no oversubscription
        with ProcessPoolExecutor(
            max_workers=jobs, mp_context=get_context("spawn"), initializer=torch.set_num_threads, initargs=(threads,)
        ) as pool:
            futures = [pool.submit(run_one, spec_dict, i, seed, tensorboard) for i, seed in grid]
            for future in futures:
                results.append(future.result())
                bar.update(1)
                if on_run_done is not None:
                    on_run_done(results[-1])
    bar.close()
    summary = summarise(spec, results)
    write_results(spec, summary, results)
    return summary


def estimate(spec: Spec, steps: int = 20) -> list[dict]:
    """Training time of every run of ``spec`` on this machine, from ``steps`` measured steps per method.

    Each method trains on the spec's data, model and batch size in this process (nothing is written): 5 steps of
    ``fit`` (validation, the compiled step's recording and check), then ``steps`` more steps on one batch, timed;
    their mean times the budget's steps is one run's training time, times the seeds the method's. Reading batches,
    evaluation, and ``--jobs`` running several at once, are not in it. Returns one dict per method.
    """

    dataset = load_dataset(spec)
    per_epoch = -(-len(dataset.train) // spec.batch_size)
    total = spec.steps if spec.steps is not None else cast(int, spec.epochs) * per_epoch  # one of them is set
    warmup = 5  # the first steps (validation on, the recording and its check) are not what a long run spends a step

    def timed(method: MethodSpec) -> tuple[float, str]:
        """Seconds a step after the warm-up, and the path the steps took (compiled or eager)."""
        import pyro

        torch.manual_seed(0)
        model, guide = build_pair(spec, dataset.dim)
        config = spec.training_config(
            method, 0, epochs=None, steps=warmup, lr_schedule=None, transform=dataset.transform, progress=False,
            validate_every=0,
        )  # fmt: skip
        run = ppdgm.fit(model, guide, dataset.train, method.name, config=config)
        x = materialize(dataset.train, spec.batch_size, transform=dataset.transform).to(run.device)
        sync = torch.cuda.synchronize if run.device.type == "cuda" else (lambda: None)
        with run.params(), pyro.validation_enabled(False), device_context(run.device):
            run.stepper(x)  # a batch of the same shape as the warm-up's: its recording is ready
            sync()
            tic = time.perf_counter()
            for _ in range(steps):
                run.stepper(x)
            sync()
            seconds = time.perf_counter() - tic
        return seconds / steps, run.stepper.path

    rows = []
    for method in spec.methods:
        per_step, path = timed(method)
        rows.append(
            {
                "method": method.label,
                "step_path": path,
                "seconds_per_step": per_step,
                "steps_per_run": total,
                "hours_per_run": per_step * total / 3600,
                "hours_all_seeds": per_step * total * len(spec.seeds) / 3600,
            }
        )
    return rows
