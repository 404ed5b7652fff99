"""Command line: ``ppdgm methods | train | evaluate | sample | compare | presets | demo`` (also ``python -m ppdgm``)."""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ppdgm import data as data_mod
from ppdgm import evaluate as evaluate_mod
from ppdgm.cli.demo import main as demo_main
from ppdgm.compare import compare, comparison_names, parse_spec, preset_path, preset_spec, spec_from_record
from ppdgm.compare.catalogue import describe
from ppdgm.compare.record import record_differences
from ppdgm.compare.runner import estimate
from ppdgm.data.transforms import get_transform
from ppdgm.errors import PpdgmError, UsageError
from ppdgm.evaluate.sampling import generate, plot_samples_2d, save_image_grid
from ppdgm.methods.base import available_methods
from ppdgm.programs.batch import batch_size
from ppdgm.programs.pair import ProgramPair
from ppdgm.runtime import distributed
from ppdgm.runtime import storage as checkpoints
from ppdgm.runtime.devices import resolve_device
from ppdgm.training.config import TrainingConfig
from ppdgm.training.fit import fit
from ppdgm.training.run import load_params
from ppdgm.zoo import ENCODERS, MODELS, build

CONFIG = "config.json"
PARAMS = "params.pt"


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _options(pairs: list[str]) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option takes KEY=VALUE, got {pair!r}")
        out[key.replace("-", "_")] = _literal(value)
    return out


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(h) for h in text.split(",") if h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes sizes like 200,200, got {text!r}") from None


def cmd_methods(_: argparse.Namespace) -> int:
    methods = sorted(available_methods().items())
    width = max(len(name) for name, _ in methods) + 2
    for name, cls in methods:
        summary = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        aliases = f" [alias: {', '.join(cls.aliases)}]" if cls.aliases else ""
        print(f"{name:<{width}}{summary}{aliases}")
    return 0


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {"z_dim": args.z_dim, "hidden": args.hidden, "layers": args.layers, "encoder": args.encoder}
    return {k: v for k, v in options.items() if v is not None}


COMPILE_CHOICES: dict[str, bool | str] = {"auto": "auto", "on": True, "off": False}


def cmd_train(args: argparse.Namespace) -> int:
    ctx = distributed.context(resolve_device(args.device))  # joins the job when started by torchrun
    main = ctx is None or ctx.is_main
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {str(out)!r} is a file; give a folder for the run")
    with checkpoints.writing(out) if main else contextlib.nullcontext(out):  # the run folder's one writer
        return _train(args, ctx, main, out)


def _train(args: argparse.Namespace, ctx: distributed.Context | None, main: bool, out: Path) -> int:
    dataset = data_mod.load(args.data, args.data_dir)
    model_options = _model_options(args)
    torch.manual_seed(args.seed)  # the initial networks are part of the run: --seed fixes them too
    model, guide = build(args.model, dataset.dim, **model_options)
    training = training_config(args)
    method_options = dict(training.method_options)
    config = {
        "model": args.model,
        "model_options": model_options,
        "data": args.data,
        "data_dir": args.data_dir,
        "method": args.method,
        "method_options": method_options,
        "epochs": args.epochs,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "device": args.device,
        "seed": args.seed,
        "precision": args.precision,
        "world_size": 1 if ctx is None else ctx.world_size,
        "transform": args.transform,
    }
    if main and not (out / CONFIG).exists():  # a new run folder; a resumed one keeps what it ran until this run ends
        checkpoints.write_text(out / CONFIG, json.dumps(config, indent=2), "run config")
    run = fit(model, guide, dataset, args.method, config=training)
    if not main:
        return 0
    checkpoints.write_text(out / CONFIG, json.dumps({**config, "fit": run.config}, indent=2, default=str))  # what ran
    run.save(out / PARAMS)
    run.save_history(out / "history.csv")
    last = run.history[-1]
    summary = ", ".join(f"{k}={v:.3f}" for k, v in last.items() if k.startswith(("train_", "valid_")))
    print(f"trained {args.method} for {last['step']} steps in {run.seconds:.1f}s: {summary}")
    if dataset.image_shape is not None:
        with run.params():
            path = save_image_grid(generate(model, 64), dataset.image_shape, out / "samples.png")
        print(f"samples: {path}")
    elif dataset.dim == 2 and dataset.log_density is not None:
        with run.params():
            samples = generate(model, 1000, mean=False)
        path = plot_samples_2d(
            [(args.method, samples)], dataset, out / "samples.png", title=f"{args.method} on {dataset.name}"
        )
        print(f"samples over the true density: {path}")
    print(f"run written to {out}")
    return 0


def training_config(args: argparse.Namespace) -> TrainingConfig:
    """The fit that ``ppdgm train`` runs, from its arguments (the run folder holds the checkpoints)."""
    method_options = _options(args.option)
    if args.num_particles is not None:
        method_options["num_particles"] = args.num_particles
    if args.guide_gradient is not None:
        method_options["guide_gradient"] = args.guide_gradient
    return TrainingConfig(
        epochs=args.epochs if args.steps is None else None,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        seed=args.seed,
        checkpoint_dir=args.out,
        checkpoint_every=args.checkpoint_every,
        transform=args.transform,
        progress=not args.quiet,
        precision=args.precision,
        resume="override" if args.override else True,
        compile=COMPILE_CHOICES[args.compile],
        method_options=method_options,
    )


def load_run(run_dir: Path):
    config_path = run_dir / CONFIG
    if not config_path.exists():
        raise UsageError(f"{run_dir} is not a ppdgm run folder (no {CONFIG}); train one with `ppdgm train --out DIR`")
    config = json.loads(config_path.read_text())
    if not {"data", "model", "model_options"} <= set(config):
        raise UsageError(
            f"{run_dir} holds a run of `ppdgm compare` (or another tool), not of `ppdgm train`; its parameters are in "
            f"{run_dir / PARAMS} and its metrics in result.json"
        )
    dataset = data_mod.load(config["data"], config.get("data_dir"))
    dataset.transform = get_transform(config.get("transform"))  # evaluation splits: one fixed draw
    model, guide = build(config["model"], dataset.dim, **config["model_options"])
    programs = ProgramPair(model, guide)
    load_params(run_dir / PARAMS, programs, dataset.rows("train", limit=100))
    return config, dataset, model, guide


def cmd_evaluate(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    config, dataset, model, guide = load_run(run_dir)
    torch.manual_seed(args.seed)
    x = dataset.rows(args.split, seed=args.seed)
    tic = time.perf_counter()
    if guide is None:  # a fully observed or energy model: its likelihood is exact
        estimate = evaluate_mod.exact_log_likelihood(model, x)
        how = "exact"
    else:
        estimate = evaluate_mod.log_likelihood(model, guide, x, num_samples=args.num_samples)
        how = f"{args.num_samples} IS samples"
    seconds = time.perf_counter() - tic
    print(f"{config['method']}: {args.split} log-likelihood ({how}) = {estimate}  [{seconds:.1f}s]")
    result = {
        "split": args.split,
        "num_samples": args.num_samples if guide is not None else None,
        "mean": estimate.mean,
        "stderr": estimate.stderr,
        "n": batch_size(x),
        "seed": args.seed,
    }
    checkpoints.write_text(run_dir / f"eval_{args.split}.json", json.dumps(result, indent=2), "evaluation")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    _, dataset, model, _ = load_run(run_dir)
    if dataset.image_shape is None:
        raise UsageError(f"data set {dataset.name!r} is not images; nothing to draw as a grid")
    torch.manual_seed(args.seed)
    path = save_image_grid(
        generate(model, args.n, mean=not args.binary), dataset.image_shape, args.png or run_dir / "samples.png"
    )
    print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:

    sources = [args.spec is not None, args.preset is not None, args.rerun is not None]
    if sum(sources) != 1:
        raise UsageError("give exactly one of SPEC.toml, --preset NAME or --rerun RECORD")
    if args.budget is not None and args.preset is None:
        raise UsageError(
            "--budget picks a budget of a preset (--preset NAME); a spec file or a record sets its own steps or epochs"
        )
    if args.rerun is not None:
        spec = spec_from_record(args.rerun, output=args.out)
        for line in record_differences(args.rerun, spec):
            print(f"rerun: {line}")
    else:
        raw = preset_spec(args.preset, args.budget or "small") if args.preset else args.spec
        spec = parse_spec(raw, output=args.out)
    if args.data_dir is not None:
        from dataclasses import replace

        spec = replace(spec, data_dir=args.data_dir)
    if args.estimate or (args.preset and args.budget == "full"):  # a full budget says what it will cost first
        _print_estimate(spec)
        if args.estimate:
            return 0
    compare(spec, jobs=args.jobs, progress=not args.quiet, tensorboard=args.tensorboard)
    print(f"results, figures and record in {spec.output}")
    return 0


def _print_estimate(spec: Any) -> None:
    """The spec's training time on this machine, measured from a few steps of each method."""

    rows = estimate(spec)
    print(f"{spec.name}: training time on this machine ({torch.get_num_threads()} threads), 20 steps measured")
    print("| method | ms/step | step path | steps a run | hours a run | hours, all seeds |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['method']} | {1000 * row['seconds_per_step']:.1f} | {row['step_path']} | {row['steps_per_run']} "
            f"| {row['hours_per_run']:.2f} | {row['hours_all_seeds']:.2f} |"
        )
    print(f"all methods: {sum(r['hours_all_seeds'] for r in rows):.2f} h of training, one run at a time", flush=True)


def cmd_presets(args: argparse.Namespace) -> int:

    if args.name is not None:  # the file, to copy and edit
        path = preset_path(args.name)
        print(f"# {path}\n{path.read_text()}", end="")
        return 0
    names = comparison_names()
    width = max(len(n) for n in names) + 2
    for name in names:
        description, runtime = describe(name)
        print(f"{name:<{width}}{description} (on 2 CPU cores: {runtime})")
    print("\n`ppdgm presets NAME` prints a preset's TOML file; `ppdgm compare --preset FILE.toml` runs an edited copy")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:

    return demo_main(out=Path(args.out), budget=args.budget)


def _add_train(sub: Any) -> None:
    """The ``train`` command's arguments."""
    t = sub.add_parser("train", help="train a preset model/guide pair")
    t.add_argument("--model", default="vae-mlp", choices=sorted(MODELS))
    t.add_argument("--data", default="digits-binary", choices=data_mod.available_datasets())
    t.add_argument("--data-dir", default=None, help="where data sets are read from and cached")
    t.add_argument("--method", default="vae")
    t.add_argument("--num-particles", type=int, default=None)
    t.add_argument("--guide-gradient", choices=["reparam", "dreg"], default=None)
    t.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="another method option")
    t.add_argument("--z-dim", type=int, default=None)
    t.add_argument("--hidden", type=_sizes, default=None, help="hidden sizes, e.g. 200,200 (empty: linear)")
    t.add_argument("--layers", type=_sizes, default=None, help="latent layer sizes of sbn/helmholtz, data upwards")
    t.add_argument("--encoder", choices=sorted(ENCODERS), default=None, help="encoder of gan-mlp/gan-image")
    budget = t.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, default=10)
    budget.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=100)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto (under torchrun: one GPU per rank)")
    t.add_argument(
        "--precision", default="fp32", choices=["fp32", "bf16"], help="bf16: autocast the networks to bfloat16"
    )
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--transform", choices=["binarize", "dequantize"], default=None, help="random transform of each batch"
    )
    t.add_argument("--checkpoint-every", type=int, default=None, help="also a checkpoint every N steps")
    t.add_argument("--out", required=True, help="run folder (config, checkpoint, params, history, samples)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument(
        "--compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="steps from recordings traced once per batch shape (auto: eager where a program cannot be; on: an error)",
    )
    t.add_argument(
        "--override",
        action="store_true",
        help="resume the run in --out with this command's learning rate, budget and precision (else refused)",
    )
    t.set_defaults(func=cmd_train)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ppdgm", description="Train deep generative models written as Pyro programs.")
    sub = p.add_subparsers(dest="command", required=True)

    sub.add_parser("methods", help="list the registered methods").set_defaults(func=cmd_methods)

    _add_train(sub)

    e = sub.add_parser("evaluate", help="importance-sampled log-likelihood of a trained run")
    e.add_argument("run")
    e.add_argument("--num-samples", type=int, default=5000)
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("sample", help="draw from a trained run's model into a PNG grid")
    s.add_argument("run")
    s.add_argument("--n", type=int, default=64)
    s.add_argument("--png", default=None, help="output file (default RUN/samples.png)")
    s.add_argument("--binary", action="store_true", help="draw binary samples instead of pixel means")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_sample)

    c = sub.add_parser("compare", help="run a comparison (methods x seeds) from a spec, a preset or a record")
    c.add_argument("spec", nargs="?", default=None, help="a comparison spec (TOML)")
    c.add_argument("--preset", default=None, help="a shipped comparison (`ppdgm presets` lists them)")
    c.add_argument("--budget", default=None, help="budget of a preset: small (default), full (digits also: demo)")
    c.add_argument("--rerun", default=None, metavar="RECORD", help="repeat the comparison of a record.json")
    c.add_argument("--out", default=None, help="output folder (default: the spec's)")
    c.add_argument("--data-dir", default=None, help="where data sets are read from")
    c.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    c.add_argument("--tensorboard", action="store_true", help="also write TensorBoard event files per run")
    c.add_argument("--quiet", action="store_true")
    c.add_argument(
        "--estimate", action="store_true", help="measure a few steps of each method and print the training time"
    )
    c.set_defaults(func=cmd_compare)

    pr = sub.add_parser("presets", help="list the shipped comparisons, or print one's TOML file")
    pr.add_argument("name", nargs="?", default=None, help="a shipped comparison: print its file")
    pr.set_defaults(func=cmd_presets)

    d = sub.add_parser("demo", help="the digits comparison preset (vae vs iwae), about a minute")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--budget", default="demo", help="budget of the digits preset (demo, small, full)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except PpdgmError as err:  # a user mistake ppdgm names; anything else is a bug and keeps its traceback
        print(f"ppdgm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:  # one line (with the checkpoint, during training), status 130
        print(f"ppdgm: {interrupt}" if str(interrupt) else "ppdgm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
