"""Paper-style comparisons: methods x seeds on one model and data set -> a table, figures, a record.

The package by concern: :mod:`~ppdgm.compare.spec` (the spec and its validation), :mod:`~ppdgm.compare.runner`
(runs, resumable, in a pool or under torchrun), :mod:`~ppdgm.compare.metrics`, :mod:`~ppdgm.compare.report`
(tables and figures), :mod:`~ppdgm.compare.record` (what ran, to rerun it) and :mod:`~ppdgm.compare.catalogue`
(the shipped comparisons, TOML files in ``ppdgm/compare/toml/``).

A comparison is described by a spec (a TOML file, or the same structure as a dict)::

    name = "digits"
    output = "runs/compare-digits"
    seeds = [0, 1, 2]

    [data]
    name = "digits-binary"          # any ppdgm.data name; `dir = "..."` for a data directory

    [model]
    preset = "vae-mlp"              # a ppdgm.zoo name, or `factory = "module:function"`
    options = { z_dim = 10, hidden = [128] }   # returning (model, guide) from (x_dim, **options)

    [budget]
    epochs = 100                    # or steps = ...
    batch_size = 100
    lr = 3e-3

    [evaluation]
    metrics = ["log_likelihood", "elbo", "active_units"]
    num_samples = 1000              # importance samples for log_likelihood
    iwae_k = 50                     # k of the iwae_bound metric

    [[methods]]
    name = "vae"

    [[methods]]
    name = "iwae"
    label = "iwae k=5"
    options = { num_particles = 5 }

Every method x seed is an independent run (its own folder with config, history CSV, checkpoint,
parameters, samples and metrics), skipped when already complete, so an interrupted comparison
resumes where it stopped. ``--jobs N`` runs N at once in separate processes; a top-level
``nproc_per_run = N`` trains each run data-parallel on N ranks (``torchrun``; the same result as one
process to float tolerance, see :mod:`ppdgm.runtime.distributed`), then evaluates it on rank 0. The results table
(rows methods, columns metrics, mean ± std over seeds) is printed and written as Markdown, CSV and
JSON, beside learning curves, sample grids and a record (spec, spec hash, package versions, device,
git commit) that ``ppdgm compare --rerun RECORD`` repeats.
"""

from ppdgm.compare.catalogue import comparison_names, load_preset, preset_path, preset_spec
from ppdgm.compare.record import run_record, spec_from_record
from ppdgm.compare.report import format_table, summarise, write_results
from ppdgm.compare.runner import compare, run_one
from ppdgm.compare.spec import MethodSpec, Spec, SpecError, parse_spec, run_dir

__all__ = [
    "MethodSpec",
    "Spec",
    "SpecError",
    "compare",
    "comparison_names",
    "format_table",
    "load_preset",
    "parse_spec",
    "preset_path",
    "preset_spec",
    "run_dir",
    "run_one",
    "run_record",
    "spec_from_record",
    "summarise",
    "write_results",
]
