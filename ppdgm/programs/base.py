"""The base of :class:`~ppdgm.programs.pair.ProgramPair`: its fields, the inspection of a batch, the data side and
the scores of sites. The module docstring of :mod:`ppdgm.programs.pair` describes the pair."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Self, cast

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.enum_messenger import EnumMessenger
from pyro.poutine.trace_struct import Trace
from torch.distributions import constraints

from ppdgm.errors import UsageError
from ppdgm.programs.batch import Batch, Data, first_column
from ppdgm.programs.batch import batch_size as rows_of
from ppdgm.programs.handlers import StoreParams, unconstrained_params, value_of
from ppdgm.programs.inspection import inspect_pair
from ppdgm.programs.rows import (
    GENERATED_ROWS_HINT,
    PER_LAYOUT,
    data_layout,
    reduce_to_particles_by_data,
    site_score,
)
from ppdgm.programs.sides import PARTICLE_PLATE, Auxiliary, DataSide
from ppdgm.programs.sites import (
    ConventionError,
    GuideSites,
    ProgramError,
    Structure,
    accepts,
    arguments,
    column_label,
    enumerated,
    is_reparameterized,
    param_names,
    run_program,
    sample_sites,
)


@dataclass
class PairBase:
    """The fields, inspection and data side of :class:`~ppdgm.programs.pair.ProgramPair` (its base class)."""

    model: Callable
    guide: Callable | None
    obs_site: str | None = None
    data_plate: str | None = None
    partial_guide: bool = False
    arguments: Callable | None = None
    generated_rows: Callable | None = None
    auxiliary: tuple[Auxiliary, ...] = ()
    _structure: Structure | None = field(default=None, init=False, repr=False)
    #: rows of the whole minibatch per row this process holds (> 1 on a rank of a data-parallel fit):
    #: a global site's log-probability is shared by the global batch's datapoints, not the local ones
    row_scale: float = field(default=1.0, init=False)

    def __post_init__(self) -> None:
        if not callable(self.model):
            raise UsageError(f"model must be a callable Pyro program, got {type(self.model).__name__}")
        if self.guide is not None and not callable(self.guide):
            raise UsageError(f"guide must be a callable Pyro program or None, got {type(self.guide).__name__}")
        self.auxiliary = tuple(Auxiliary.of(pair) for pair in self.auxiliary)
        #: per auxiliary pair, whether its guide and its model name `batch_size`
        self._auxiliary_bs = tuple(
            (accepts(aux.guide, "batch_size", named=True), accepts(aux.model, "batch_size", named=True))
            for aux in self.auxiliary
        )
        if self.arguments is not None and not callable(self.arguments):
            raise UsageError(f"arguments must be a function of a batch's columns, got {type(self.arguments).__name__}")
        if self.generated_rows is not None and not callable(self.generated_rows):
            raise UsageError(
                "generated_rows must be a function of the generated observations and a batch's columns, got "
                f"{type(self.generated_rows).__name__}"
            )
        # only a program that names `batch_size` is passed it (an AutoGuide's **kwargs go on to the model)
        self._model_bs = accepts(self.model, "batch_size", named=True)
        self._guide_bs = self.guide is not None and accepts(self.guide, "batch_size", named=True)
        self._obs_site_given = self.obs_site
        self.local_params: dict[str, torch.Tensor] = {}
        #: names of the parameters the players own (set by the engine; ``None`` before there is one)
        self.owned: set[str] | None = None
        #: parameters the programs used that no player owns yet, with the program that used them first
        self.unowned: dict[str, str] = {}
        #: keyword arguments passed to both programs beside the batch (``fit(step_kwargs=...)``), this step's values
        self.step_kwargs: dict[str, Any] = {}
        #: what inspection learnt, per layout of the batch (:meth:`select`)
        self._layouts: dict[Hashable, dict[str, Any]] = {}
        self._layout: Hashable = None

    @contextlib.contextmanager
    def scaled_rows(self, row_scale: float) -> Iterator[None]:
        """Inside the block this process holds one row per ``row_scale`` rows of the minibatch (a rank's block of a
        data-parallel batch): a global site's log-probability is shared by the global batch's datapoints."""
        self.row_scale = row_scale
        try:
            yield
        finally:
            self.row_scale = 1.0

    @contextlib.contextmanager
    def stepping(self, step_kwargs: dict[str, Any]) -> Iterator[None]:
        """Inside the block the programs receive ``step_kwargs`` beside each batch; the previous ones after it."""
        given, self.step_kwargs = self.step_kwargs, step_kwargs
        try:
            yield
        finally:
            self.step_kwargs = given

    @classmethod
    def inspected(cls, model: Callable, guide: Callable | None, x: Data, **options: Any) -> Self:
        """The pair of ``model`` and ``guide`` (``options``: the other fields), inspected on the batch ``x``."""
        pair = cls(model, guide, **options)
        pair.inspect(x)
        return pair

    def param_tensors(self, names: Iterable[str]) -> list[torch.Tensor]:
        """The unconstrained tensors of parameters by name: the param store's, or a module's own
        (``pyro.settings.set(module_local_params=True)``)."""
        store = unconstrained_params()
        return [store[n] if n in store else self.local_params[n] for n in names]

    # ------------------------------------------------------------------ calling conventions
    def model_arguments(self, x: Data | None, batch_size: int) -> tuple[tuple, dict]:
        """The model's arguments for batch ``x`` (as ``SVI.step`` passes them), with this step's :attr:`step_kwargs`."""
        return self._arguments(x, batch_size, self._model_bs)

    def guide_arguments(self, x: Data, batch_size: int) -> tuple[tuple, dict]:
        """The guide's arguments for batch ``x``."""
        return self._arguments(x, batch_size, self._guide_bs)

    def _arguments(self, x: Data | None, batch_size: int, with_batch_size: bool) -> tuple[tuple, dict]:
        if self.arguments is None:
            args, kwargs = arguments(x, batch_size, with_batch_size)
        else:
            args, kwargs = self._built_arguments(x, batch_size, with_batch_size)
        return args, {**kwargs, **self.step_kwargs} if self.step_kwargs else kwargs

    def _refuse_built_arguments(self) -> None:
        if self.arguments is not None:
            raise ConventionError(
                "the model side generates the observed sites, but with arguments=... ppdgm cannot tell which of the "
                f"programs' arguments would carry them; {GENERATED_ROWS_HINT}"
            )

    def _built_arguments(self, x: Data | None, batch_size: int, with_batch_size: bool) -> tuple[tuple, dict]:
        """The programs' arguments from :attr:`arguments` applied to the batch's columns."""
        if x is None or (isinstance(x, Batch) and any(c is None for _, c in x.items())):
            self._refuse_built_arguments()
        columns, named = arguments(x, batch_size, False)
        built = cast(Callable, self.arguments)(*columns, **named)
        if isinstance(built, tuple | list):
            args, kwargs = tuple(built), {}
        elif isinstance(built, Mapping) and all(isinstance(k, str) for k in built):
            args, kwargs = (), dict(built)
        else:
            raise UsageError(
                f"arguments={getattr(self.arguments, '__name__', self.arguments)!r} must return a tuple of the "
                f"programs' positional arguments or a dict of their keyword arguments, got {type(built).__name__}"
            )
        if with_batch_size:
            kwargs["batch_size"] = batch_size
        return args, kwargs

    def vectorised(self, fn: Callable, num_particles: int) -> Callable:
        """``fn`` run inside the particle plate (none when K = 1), serving known parameters from the store.

        Parameters the players do not own yet (created after inspection, e.g. by a program that creates one at
        its third step) are noted in :attr:`unowned` with the program that used them, for the engine to adopt.
        """
        dim = self._structure.particle_dim if self._structure is not None else None
        program = "guide" if fn is self.guide else "model"

        def vectorised(*args, **kwargs):
            if num_particles == 1:
                with StoreParams(self.owned, self.unowned, program):
                    return fn(*args, **kwargs)
            with pyro.plate(PARTICLE_PLATE, num_particles, dim=dim), StoreParams(self.owned, self.unowned, program):
                return fn(*args, **kwargs)

        return vectorised

    # ------------------------------------------------------------------ inspection
    def select(self, x: Data) -> bool:
        """Make what is known of the pair that of ``x``'s layout (which columns it has): a fit that alternates
        labelled batches ``(xs, ys)`` and unlabelled ones ``xs`` (Pyro's ss-vae) calls ``model(xs, ys)`` and
        ``model(xs)``, whose traces hold different sites. Each layout is inspected on its first batch; returns
        ``True`` when ``x``'s layout was new (the method checks the pair again)."""
        layout = data_layout(x)
        if layout == self._layout:
            return False
        known = self._layouts.get(layout)
        if known is not None:
            vars(self).update(known)
            self._layout = layout
            return False
        self.inspect(x)
        return True

    def inspect(self, x: Data) -> Structure:
        """Trace the pair once on a batch, find the observed sites and check the pair can be run
        (:func:`ppdgm.programs.inspection.inspect_pair`). Raises :class:`ConventionError` naming the offending site."""
        batch_size = rows_of(x)
        self.example = x
        self._data_ndim = x.dim() if torch.is_tensor(x) else None
        self._structure = None
        found = inspect_pair(
            self.model,
            self.guide,
            x,
            model_args=self.model_arguments(x, batch_size),
            guide_args=None if self.guide is None else self.guide_arguments(x, batch_size),
            obs_site=self._obs_site_given,
            data_plate=self.data_plate,
            partial_guide=self.partial_guide,
        )
        structure, self.obs_site, self.observed_sites = found.structure, found.obs_site, found.observed_sites
        self._structure = self._with_auxiliary_params(structure, x) if self.auxiliary else structure
        self.known_guide_sites = GuideSites.of_structure(self._structure)
        self.local_params = found.local_params
        self.obs_distribution = self.observed_sites[self.obs_site]["fn"]
        self._generate_with_none = self._model_bs and self._runs_without_data(x)
        self._layout = data_layout(x)
        self._layouts[self._layout] = {name: getattr(self, name) for name in PER_LAYOUT}
        return self._structure

    def inspect_data(self, first: Data, splits: Iterable[Data], binary: bool = False) -> Structure:
        """:meth:`inspect` on ``first``, then :meth:`check_finite` and :meth:`check_support` on every split.

        A program that fails at inspection on bad data (NaN rows, say) is reported as the data's fault when it
        is: the pair is traced again with validation off to learn the observed site's name, the data checked.
        ``binary``: the caller has just found the rows to be 0s and 1s (finite, in a Bernoulli's support).
        """
        splits = list(splits)
        try:
            structure = self.inspect(first)
        except ProgramError:
            with contextlib.suppress(ProgramError), pyro.validation_enabled(False):
                self.inspect(first)
            for rows in splits:
                self.check_finite(rows)
            raise
        for rows in splits:
            if not binary:
                self.check_finite(rows)
            if rows_of(rows):
                self.check_support(rows, binary)
        return structure

    def _with_auxiliary_params(self, structure: Structure, x: Data) -> Structure:
        """The structure with the parameters only the auxiliary pairs use given to the model's and guide's players."""
        model_params, guide_params = list(structure.model_param_names), list(structure.guide_param_names)
        known = {*model_params, *guide_params, *structure.shared_param_names}
        with poutine.block(), torch.no_grad():
            for index in range(len(self.auxiliary)):
                guide_trace, model_trace = self._auxiliary_traces(index, x)
                for names, trace in ((guide_params, guide_trace), (model_params, model_trace)):
                    for name in param_names(trace):
                        if name not in known:
                            known.add(name)
                            names.append(name)
        return replace(structure, model_param_names=tuple(model_params), guide_param_names=tuple(guide_params))

    def _auxiliary_traces(self, index: int, x: Data) -> tuple[Trace, Trace]:
        """The guide trace of auxiliary pair ``index`` on batch ``x`` and its model replayed on it."""
        aux, (guide_bs, model_bs) = self.auxiliary[index], self._auxiliary_bs[index]
        batch_size = rows_of(x)
        args = self._arguments(x, batch_size, guide_bs)
        with StoreParams(self.owned, self.unowned, "guide"):
            guide_trace = run_program(aux.guide, args, "auxiliary guide", "data side", x)
        args = self._arguments(x, batch_size, model_bs)
        with StoreParams(self.owned, self.unowned, "model"):
            model_trace = run_program(
                poutine.replay(aux.model, trace=guide_trace), args, "auxiliary model", "data side", x
            )
        return guide_trace, model_trace

    def auxiliary_loss(self, x: Data) -> torch.Tensor | None:
        r"""The auxiliary pairs' loss on batch ``x``, per datapoint: :math:`-\sum_a w_a\,\mathrm{ELBO}_a(x) / B`
        (``None`` without auxiliary pairs). Each ELBO is Pyro's ``Trace_ELBO`` of one particle."""
        if not self.auxiliary:
            return None
        total: torch.Tensor | None = None
        for index, aux in enumerate(self.auxiliary):
            guide_trace, model_trace = self._auxiliary_traces(index, x)
            guide_sites = {n: site for n, site in sample_sites(guide_trace).items() if not site["is_observed"]}
            for name, site in guide_sites.items():
                if not is_reparameterized(site) or enumerated(site):
                    raise ConventionError(
                        f"the auxiliary guide's site {name!r} is not reparameterised: an auxiliary pair is scored "
                        "by its pathwise ELBO only (no score-function or enumeration terms)"
                    )
            scores = []  # log p of the model's sites, -log q of the guide's
            for name, site in sample_sites(model_trace).items():
                if not site["is_observed"] and name not in guide_sites:
                    raise ConventionError(
                        f"the auxiliary model's site {name!r} is neither observed nor sampled by its guide"
                    )
                scores.append(site_score(name, site).sum())
            scores += [-site_score(name, site).sum() for name, site in guide_sites.items()]
            if not scores:
                continue  # no sites for this batch (ss-vae's classifier on an unlabelled batch)
            value = torch.stack(scores).sum()
            term = -aux.weight * value / rows_of(x)
            total = term if total is None else total + term
        return total if total is not None else torch.zeros((), device=first_column(x)[1].device)

    def _runs_without_data(self, x: Data) -> bool:
        """Whether the model generates when called with its observed columns ``None`` and ``batch_size``.

        Tried once on two rows, the random state restored; when it fails the model side unconditions instead.
        """
        rows = x[:2]
        state = torch.get_rng_state()
        try:
            args, kwargs = self.model_arguments(self._without_observed(rows), rows_of(rows))
            with poutine.block(), torch.no_grad():
                self.model(*args, **kwargs)
            return True
        except Exception:
            return False
        finally:
            torch.set_rng_state(state)

    # ------------------------------------------------------------------ data checks
    def check_finite(self, data: Data) -> None:
        """Refuse data with NaN or infinite values, naming the observed site (or column) and the first bad rows."""
        items = data.items() if isinstance(data, Batch) else [(None, data)]
        for key, column in items:
            if column is None or not column.is_floating_point():
                continue
            if bool(torch.isfinite(column.sum())):  # NaN and infinities reach the sum: one pass where all is well
                continue
            finite = torch.isfinite(column)
            bad = ~(finite.flatten(1).all(-1) if column.dim() > 1 else finite)
            if bad.any():
                rows = torch.nonzero(bad).flatten()[:5].tolist()
                kind = "NaN" if torch.isnan(column).any() else "infinite values"
                if key is not None:
                    what = f"data column {column_label(key)}"
                else:
                    what = "data" if self.obs_site is None else f"data for site {self.obs_site!r}"
                raise UsageError(f"the {what} contain {kind} (first rows: {rows})")

    def check_support(self, data: Data, binary: bool = False) -> None:
        """Check the data lie in the support of the distributions of the observed sites that read them.

        NaN and infinite values are :meth:`check_finite`'s to report (it runs before tracing); a masked
        site (Pyro's ``obs_mask``) is not checked, as its missing entries may hold any placeholder, nor with
        ``binary`` (rows known to be 0s and 1s) a site whose support is boolean."""
        structure = self.structure
        traced_rows = rows_of(self.example)  # the batch the observed sites' values were traced on
        for key, name in structure.observed_columns:
            site = self.observed_sites[name]
            if site.get("mask") is not None:
                continue
            column = data.get(key) if isinstance(data, Batch) else data
            fn = site["fn"]
            if binary and getattr(fn.support, "base_constraint", fn.support) is constraints.boolean:
                continue
            if column is None or column[0].numel() * traced_rows != site["value"].numel():
                continue  # the site reads part of the column: Pyro's own checks name it in the first step
            try:
                value = column.reshape(column.shape[0], *site["value"].shape[1:]) if column.dim() else column
                ok = fn.support.check(value)
            except RuntimeError:  # a shape the support cannot broadcast: the site reads a transformed column
                continue
            if not bool(ok.all()):
                bad = ~ok.reshape(column.shape[0], -1).all(-1)
                rows = torch.nonzero(bad).flatten()[:5].tolist()
                kind = type(getattr(fn, "base_dist", fn)).__name__
                hint = " (values must be 0 or 1; binarise the data)" if "Bernoulli" in kind else ""
                raise UsageError(
                    f"the data lie outside the support of the {kind} likelihood at site {name!r}{hint}; "
                    f"first offending rows: {rows}"
                )

    # ------------------------------------------------------------------ the two sides
    def data_side(
        self,
        x: Data,
        num_particles: int = 1,
        *,
        guide_grad: bool = True,
        detach_latents: bool = False,
    ) -> DataSide:
        """Run the guide on ``x`` and replay the model on its latents, K particles at once.

        Args:
            guide_grad: build the guide's autograd graph (``False``: the guide runs under ``no_grad``,
                as in the wake-θ phase of wake-sleep, where only the model learns).
            detach_latents: score the latents at fixed values: no pathwise gradient flows through
                them into the guide or the model (reweighted wake-sleep's wake-φ phase, score-function
                estimators). Reparameterisable guides are re-run conditioned on the detached values so
                that later latents depend on earlier ones only through fixed values.
        """
        structure = self.structure
        batch_size = rows_of(x)
        guide = self.vectorised(self.guide_program, num_particles)
        model = self.vectorised(self.model, num_particles)
        if structure.enumerated:
            guide = EnumMessenger(first_available_dim=structure.particle_dim - 1)(guide)
            model = EnumMessenger()(model)  # allocates its dims left of the guide's
        guide_args = self.guide_arguments(x, batch_size)
        if guide_grad:
            guide_trace = run_program(guide, guide_args, "guide", "data side", x)
        else:
            with torch.no_grad():
                guide_trace = run_program(guide, guide_args, "guide", "data side", x)
        if detach_latents and guide_grad and structure.reparam_sites:
            guide_trace = run_program(
                poutine.replay(guide, trace=self.detached(guide_trace)), guide_args, "guide", "data side", x
            )
        replayed = poutine.replay(model, trace=guide_trace)
        model_trace = run_program(replayed, self.model_arguments(x, batch_size), "model", "data side", x)
        return DataSide(self, guide_trace, model_trace, num_particles, batch_size)

    def model_trace(self, x: Data) -> Trace:
        """The model run once with ``x`` observed (no guide): the trace of a fully observed model."""
        self._require_inspected()
        return run_program(self.vectorised(self.model, 1), self.model_arguments(x, rows_of(x)), "model", "data side", x)

    def _without_observed(self, rows: Data) -> Data | None:
        if torch.is_tensor(rows):
            return None
        return rows.replace({key: None for key, _ in self.structure.observed_columns})

    def detached(self, trace: Trace) -> Trace:
        """A trace holding the latent sites of ``trace`` at their values cut from the graph (for replay)."""
        fixed = Trace()
        for name in self.structure.latent_sites:
            site = trace.nodes[name]
            fixed.add_node(name, **{**site, "value": value_of(site).detach()})
        return fixed

    def log_prob(
        self,
        trace: Trace,
        num_particles: int,
        batch_size: int,
        sites: tuple[str, ...] | None = None,
        detach_params: bool = False,
        enum_rank: int = 0,
    ) -> torch.Tensor:
        """Sum of log-probabilities of ``sites`` (all sample sites when ``None``), per particle and datapoint.

        Returns shape ``(K, B)`` (``(E..., K, B)`` with ``enum_rank`` enumeration dims kept on the left).
        Plates other than the particle and data plates are summed out; a site outside the data plate (a
        global) contributes ``1/B`` of its log-probability to each datapoint, so that the sum over the
        batch is the joint log-probability (over the global batch, in a data-parallel fit: see ``row_scale``).
        With ``detach_params`` the distributions' parameters are cut from the graph while the
        sampled values keep theirs (the stop-gradient of doubly reparameterised estimators).
        """
        structure = self.structure
        rank = structure.max_plate_nesting + 1
        total = None
        names = sites if sites is not None else tuple(sample_sites(trace))
        for name in names:
            site = trace.nodes[name]
            lp = site_score(name, site, detach_params)
            total = reduce_to_particles_by_data(
                lp, site, structure.data_plate, rank, num_particles, batch_size, total, self.row_scale, enum_rank
            )
        if total is None:
            return torch.zeros(num_particles, batch_size)
        return total

    @property
    def guide_program(self) -> Callable:
        """The guide, refused by name when the pair has none (a guide-less method runs the model side only)."""
        if self.guide is None:
            raise UsageError("this pair has no guide (guide=None), but running it here needs one")
        return self.guide

    @property
    def primary_site(self) -> str:
        """The observed site that generative methods generate and discriminators see (``obs_site`` once inspected)."""
        if self.obs_site is None:
            raise UsageError("this pair has not been inspected on a batch yet: its observed site is not known")
        return self.obs_site

    @property
    def structure(self) -> Structure:
        """What inspection learnt of the pair on its batch's layout (:meth:`inspect`); refused before any batch was."""
        if self._structure is None:
            raise UsageError(
                "this pair has not been inspected on a batch yet: build it with ProgramPair.inspected(model, guide, x) "
                "or call programs.inspect(x) before running it"
            )
        return self._structure

    def _require_inspected(self) -> None:
        """Refuse to run a pair no batch has been inspected on (with :attr:`structure`'s message)."""
        _ = self.structure
