"""Compiled training steps: a method's step traced once per input shape into a flat graph of tensor operations.

Every run of a Pyro program costs handlers, distribution objects and trace bookkeeping, whatever the
size of the networks (~0.6 ms a program on a 2-core CPU). A step of a method is, underneath, a fixed
sequence of tensor operations: guide and model networks, random draws, log-densities, weights,
gradients, then each player's optimizer step. :class:`CompiledStep` records that sequence once below
autograd (:mod:`~ppdgm.compile.tracer`: the recording run is a real step on real tensors), straight
through Pyro's handlers, and replays the recording on later steps without Python-level Pyro.

What a recording holds:

* the phases of the step: each phase's loss, its gradients over the moving players' parameters
  (``torch.autograd.grad``, recorded as explicit backward operations), then an opaque
  ``ppdgm::apply_update`` call that sets those gradients and steps the players' optimizers with the
  engine's own code (gradient averaging, skipping non-finite updates, the optimizer step itself) —
  so a later phase sees the parameters the earlier one moved, as in the eager step;
* the random draws, as random operations: every replay draws fresh noise from torch's generator,
  the same numbers the eager step would draw from the same generator state;
* the method's state (:meth:`Method.state_dict`: baselines, persistent chains, the generator's last
  metrics) as inputs and outputs, so running statistics carry over from step to step.

A recording is made per *key*: the shapes, dtypes and devices of the batch's columns and of the
method's state, :meth:`Method.compiled_key` (e.g. whether this step is a generator turn), autocast
and the caller's context (the global batch size of a data-parallel fit). A new key — the last,
partial batch of an epoch, another K — is traced once and cached.

**Safety.** A new recording is checked twice: the recording run from the state the step was recorded
from must give what the recorded step (itself a real step through the programs) gave, and its first
replay is run beside the eager step (Pyro's argument checks on) from the same parameters, optimizer
states, method state and generator state; both must give the same metrics, parameters, method state and
module buffers (``torch.allclose`` with ``rtol=1e-5, atol=1e-6``). Re-checks against the eager step
recur on a schedule (:meth:`CompiledStep.due`). A recording that fails to trace or disagrees — a host read (``.item()``,
``bool(tensor)``, an ``if`` on a tensor), an operation whose output shape depends on values
(``nonzero``, boolean masks), a parameter created mid-run, Python state the recording cannot
replay — is dropped: the fit goes on eagerly, with one :class:`CompileWarning` naming the cause
and the line of the program.

**Replay.** The traced graph is simplified (``detach`` dropped, negations moved onto the smaller
tensor, work on constants done once) and turned into one straight-line Python function calling
each operator's C++ entry point. On a GPU the whole step is then captured as a CUDA graph
(:class:`CapturedStep`). :class:`RecordedFunction` applies the same recording, check and capture
to gradient-free functions (the chunks of an importance-sampled log-likelihood).
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Hashable
from typing import Any

import torch

from ppdgm.compile.failures import CompileError, CompileWarning, Uncompilable
from ppdgm.compile.recording import (
    CapturedStep,
    Recording,
    first_run,
    hashable,
    make_capturable,
    param_state_paths,
    record_graph,
)
from ppdgm.compile.state import (
    Observed,
    Snapshot,
    all_close,
    all_params,
    batchable,
    data_leaves,
    data_signature,
    first_difference,
    leaves,
    param_labels,
    signature_of,
)
from ppdgm.compile.updates import RecordingUpdates
from ppdgm.errors import UsageError
from ppdgm.programs.batch import Data
from ppdgm.programs.handlers import unconstrained_params

#: recordings kept per compiled step (least recently used dropped first)
MAX_RECORDINGS = 16


#: steps between re-checks of a recording against the eager step, once its early re-checks are done
RECHECK_EVERY = 600


COMPILE_MODES = ("auto", True, False)


def check_compile_mode(value: Any) -> None:
    """Refuse anything but ``"auto"``, ``True`` or ``False`` (``1`` equals ``True`` but is not a mode)."""
    if value not in COMPILE_MODES or not isinstance(value, bool | str):
        raise UsageError(f"compile must be 'auto', True or False, got {value!r}")


# ---------------------------------------------------------------------------------------------- the step
class CompiledStep:
    """A method's training step, run from recordings where possible (module docstring).

    Args:
        method, engine: the method and the engine that owns its players.
        compile: ``"auto"`` (recordings, falling back to the eager step with a :class:`CompileWarning`),
            ``True`` (raise :class:`CompileError` when a step cannot be compiled) or ``False`` (eager).
        eager_steps: steps run eagerly before the first recording (lazily created state: optimizer
            moments, baselines, a generator's first metrics).
        start_step: steps the run had taken before this fit (a resumed fit).
        validate_all: every step eager, with Pyro's argument checks.
        recheck_every: steps between re-checks of the recordings against the eager step (see :meth:`due`).
    """

    def __init__(
        self,
        method: Any,
        engine: Any,
        compile: bool | str = "auto",
        eager_steps: int = 1,
        cuda_graphs: bool = True,
        recheck_every: int = RECHECK_EVERY,
        start_step: int = 0,
        validate_all: bool = False,
    ) -> None:
        check_compile_mode(compile)
        self.method, self.engine, self.mode = method, engine, compile
        self.eager_steps = eager_steps
        #: steps the fit had taken before this one started (a resumed fit): the first ``eager_steps`` of the *run*
        #: are eager, so that a resumed fit takes each step on the path an uninterrupted one takes
        self.start_step = start_step
        #: every step eager, with Pyro's argument checks (``fit(validate=True)``); otherwise a step under checks is
        #: checked by the eager half of its recording's first re-check
        self.validate_all = validate_all
        self.recheck_every = recheck_every
        #: replays of each recording since it was made (re-checked on its first replay, see :meth:`due`)
        self.uses: dict[Hashable, int] = {}
        self.rechecks = 0
        self.since_check = 0
        #: set by the training loop before an epoch's first step: re-check then if one is due soon
        self.epoch_start = False
        self.recordings: collections.OrderedDict[Hashable, Recording] = collections.OrderedDict()
        self.fallback: str | None = None if method.compilable is True else method.compilable
        self.steps = 0
        self.compiled_steps = 0
        self.traces = 0
        #: captured CUDA graphs by recording key and learning rates (None: not on a GPU, or why not)
        self.cuda_graphs: str | None = None if cuda_graphs else "switched off"
        self.captured: collections.OrderedDict[Hashable, CapturedStep] = collections.OrderedDict()
        self.captured_steps = 0
        self._pool: Any = None

    @property
    def path(self) -> str:
        """``"compiled"`` when the last steps ran from recordings, else ``"eager"``."""
        if self.mode is False or self.fallback is not None or not self.compiled_steps:
            return "eager"
        return "cuda-graph" if self.captured_steps else "compiled"

    def describe(self) -> dict[str, Any]:
        """What ran, for run records."""
        return {
            "path": self.path,
            "compile": self.mode,
            "compiled_steps": self.compiled_steps,
            "eager_steps": self.steps - self.compiled_steps,
            "traces": self.traces,
            "fallback": self.fallback,
            "cuda_graph_steps": self.captured_steps,
            "cuda_graphs_off": self.cuda_graphs,
            "rechecks": self.rechecks,
        }

    def __call__(self, x: Data, context: Hashable = ()) -> dict[str, torch.Tensor]:
        """One step on ``x``; ``context``: what else the step's operations depend on (part of the key)."""
        self.steps += 1
        eager_now = self.start_step + self.steps <= self.eager_steps or self.validate_all
        if self.mode is False or self.fallback is not None or eager_now:
            if self.mode is True and self.fallback is not None:
                raise CompileError(f"method {self.method.name!r} cannot be compiled: {self.fallback}")
            return self.method.step(self.engine, x)
        state = self.method.state_dict()  # read once a step: the key and the recording's inputs
        fed, others = self._step_arguments()
        extra = self._extra(fed, x)
        key = self._key(x, context, state, (tuple((k, hashable(v)) for k, v in zip(fed, extra)), others))
        recording = self.recordings.get(key)
        if recording is None:
            return self._first_use(key, x, fed, extra)
        self.recordings.move_to_end(key)
        uses = self.uses[key] = self.uses.get(key, 0) + 1
        self.since_check += 1
        if self.due(uses):
            return self._recheck(recording, x, extra)
        self.compiled_steps += 1
        if self.cuda_graphs is None and self._on_gpu():
            return self._captured(key, recording, x, state, extra)
        return recording(self.method, x, state, extra)

    def due(self, uses: int) -> bool:
        """Whether this replay re-checks its recording against the eager step: on the recording's first replay, then
        every ``recheck_every`` steps, and at an epoch's first step once half of that has passed. What a recording
        cannot see — Python state a program reads (a global schedule, a call counter), a parameter created late — is
        caught there, at a cost bounded by the schedule (docs/performance.md, 'Re-checks')."""
        epoch_start, self.epoch_start = self.epoch_start, False
        if uses == 1:
            return True
        return self.since_check >= self.recheck_every or (epoch_start and 2 * self.since_check >= self.recheck_every)

    def _step_arguments(self) -> tuple[dict[str, Any], tuple]:
        """The programs' per-step keyword arguments (``fit(step_kwargs=...)``): floats and tensors, fed to recordings
        as tensor inputs, and the other values (ints, flags, names), part of the key (a new value, a new recording)."""
        given = self.engine.programs.step_kwargs
        if not given:
            return {}, ()
        fed = {k: v for k, v in given.items() if isinstance(v, float | torch.Tensor)}
        others = tuple((k, hashable(v)) for k, v in given.items() if k not in fed)
        return fed, others

    @staticmethod
    def _extra(fed: dict[str, Any], x: Data) -> tuple[torch.Tensor, ...]:
        if not fed:
            return ()
        device = data_leaves(x)[0].device
        return tuple(
            v if isinstance(v, torch.Tensor) else torch.tensor(v, dtype=torch.float64, device=device)
            for v in fed.values()
        )

    def _on_gpu(self) -> bool:
        if self._pool is None:
            reason = make_capturable(self.engine) if torch.cuda.is_available() else "no CUDA device"
            if reason is not None:
                self.cuda_graphs = reason
                return False
            self._pool = torch.cuda.graph_pool_handle()
        return True

    def _captured(
        self, key: Hashable, recording: Recording, x: Data, state: dict, extra: tuple[torch.Tensor, ...]
    ) -> dict[str, torch.Tensor]:
        """The step from its CUDA graph, captured on first use per key and learning rates (baked into the kernels)."""
        rates = tuple(group["lr"] for player in self.engine.players.values() for group in player.optimizer.param_groups)
        captured = self.captured.get((key, rates))
        if captured is not None:
            self.captured.move_to_end((key, rates))
            self.captured_steps += 1
            return captured(self.method, x, state, extra)
        captured = CapturedStep(recording, x, extra)
        metrics = captured.warm_up(self.method)  # this step's update
        try:
            captured.capture(self._pool)
        except Exception as err:  # the step has run: replay recordings without CUDA graphs from now on
            self.cuda_graphs = f"capture failed with {type(err).__name__}: {err}"
            warnings.warn(f"ppdgm steps without CUDA graphs: {self.cuda_graphs}", CompileWarning, stacklevel=3)
            return metrics
        self.captured[(key, rates)] = captured
        if len(self.captured) > MAX_RECORDINGS:
            self.captured.popitem(last=False)
        return metrics

    def _key(self, x: Data, context: Hashable, state: dict, arguments: Hashable = ()) -> Hashable:
        signature = tuple((path, signature_of(leaf)) for path, leaf in leaves(state))
        autocast = tuple(
            (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)) for device in ("cpu", "cuda")
        )
        method = (repr(self.method.options()), self.method.compiled_key())  # another K is another recording
        params = self.engine.param_version  # parameters adopted since: another recording
        return (method, data_signature(x), signature, autocast, torch.is_grad_enabled(), context, arguments, params)

    def _first_use(
        self, key: Hashable, x: Data, fed: dict[str, Any], extra: tuple[torch.Tensor, ...]
    ) -> dict[str, torch.Tensor]:
        """Record the step (itself a real step through the programs), then run the recording from the same point and
        compare the two (:meth:`_checked`). The first replay compares the recording with the eager step
        (:meth:`due`), with Pyro's argument checks on."""
        engine = self.engine
        start = Snapshot.take(engine, self.method)
        try:
            with engine.local():  # the traced step stays local to each rank
                recording, traced = self._trace(x, fed, extra)
            after_traced = Observed.copied(engine, self.method)
        except Uncompilable as cause:
            start.restore(engine, self.method)
            self._give_up(str(cause))
            return self.method.step(engine, x)
        self.recordings[key] = recording
        if len(self.recordings) > MAX_RECORDINGS:
            self.uses.pop(self.recordings.popitem(last=False)[0], None)
        self.uses[key] = 0
        return self._checked(recording, x, extra, start, (traced, after_traced, "the step it was recorded from"))

    def _recheck(self, recording: Recording, x: Data, extra: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        """The eager step, then the recording's from the same point, compared (:meth:`_checked`)."""
        engine, method = self.engine, self.method
        start = Snapshot.take(engine, method)
        owned = {n for player in engine.players.values() for n in player.param_names}
        version = engine.param_version
        with engine.local():  # the check's steps stay local to each rank
            eager = method.step(engine, x)
        if engine.param_version != version:  # the eager step created parameters: it was this step's real one
            created = {n for player in engine.players.values() for n in player.param_names} - owned
            self._give_up(
                f"the step created parameter(s) {sorted(created)} after the first step (the recording cannot create "
                "them)"
            )
            return eager
        return self._checked(recording, x, extra, start, (eager, Observed.copied(engine, method), "the eager step"))

    def _checked(
        self,
        recording: Recording,
        x: Data,
        extra: tuple[torch.Tensor, ...],
        start: Snapshot,
        reference: tuple[dict[str, torch.Tensor], Observed, str],
    ) -> dict[str, torch.Tensor]:
        """The recording's step from ``start``, compared with a step through the programs from the same point
        (``reference``: its metrics, what it left, and what it was). The recording's step is then the real one, so
        which steps a check falls on does not change the result (a resumed fit, whose checks fall elsewhere, continues
        bit for bit). In a data-parallel fit, whose checks run locally, the recording takes the real step again from
        the same point, with its gradients averaged over the ranks."""
        engine, method = self.engine, self.method
        self.since_check = 0
        self.rechecks += 1
        self.captured.clear()  # restoring optimizer states below gives them new tensors, which captures point at
        start.restore(engine, method)
        try:
            with engine.local():
                compiled = first_run(recording, method, x, None, extra)
            self._compare(compiled, Observed.live(engine, method), *reference)
        except Uncompilable as cause:
            start.restore(engine, method)
            self._give_up(str(cause))
            return method.step(engine, x)
        self.compiled_steps += 1
        if engine.grad_sync is None:
            return compiled
        start.restore(engine, method)
        return recording(method, x, None, extra)

    def _trace(
        self, x: Data, fed: dict[str, Any], extra: tuple[torch.Tensor, ...]
    ) -> tuple[Recording, dict[str, torch.Tensor]]:
        """The step recorded while it runs for real; the recording and the step's metrics."""
        engine, method = self.engine, self.method
        params = all_params(engine)
        state = method.state_dict()
        state_paths = param_state_paths(state, params)
        live = dict(leaves(state))
        state_inputs = [live[path] for path in state_paths]
        known = set(unconstrained_params())
        engine.programs.unowned.clear()
        recorder = RecordingUpdates(engine)

        traced: dict[str, torch.Tensor] = {}

        def step() -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
            metrics = method.step(engine, x)
            traced.update(metrics)
            after = dict(leaves(method.state_dict()))
            return metrics, [after[path] for path in state_paths]

        programs = engine.programs
        fed_kwargs = {**programs.step_kwargs, **dict(zip(fed, extra))}  # the recording reads them as its inputs
        self.traces += 1
        with engine.recording(recorder), programs.stepping(fed_kwargs):
            graph = record_graph(step, [*params, *data_leaves(x), *extra, *state_inputs])
        created = sorted((set(unconstrained_params()) - known) | set(engine.programs.unowned))
        if created:
            raise Uncompilable(f"the step created parameter(s) {created} after the first step")
        after = method.state_dict()
        if [p for p, _ in leaves(after)] != [p for p, _ in leaves(state)]:
            raise Uncompilable("the method's state changed its structure during the step")
        recording = Recording(graph, params, state_paths)
        recording.updates = list(recorder.updates.values())
        return recording, traced

    def _compare(
        self, compiled: dict, after_compiled: Observed, eager: dict, after_eager: Observed, eager_name: str
    ) -> None:
        checks: list[tuple[str, Any, Any]] = []
        if sorted(compiled) != sorted(eager):
            raise Uncompilable(f"the recording returns metrics {sorted(compiled)}, {eager_name} {sorted(eager)}")
        checks += [(f"metric {k!r}", compiled[k], eager[k]) for k in eager]
        labels = param_labels(self.engine)
        params = zip(labels, after_compiled.params, after_eager.params)
        checks += [(f"parameter {label}", a, b) for label, a, b in params]
        eager_state = dict(leaves(after_eager.state))
        checks += [
            (f"method state {'/'.join(map(str, path))}", value, eager_state.get(path))
            for path, value in leaves(after_compiled.state)
        ]
        buffers = zip(after_compiled.buffers, after_eager.buffers)
        checks += [(f"module buffer #{i}", a, b) for i, (a, b) in enumerate(buffers)]
        floats = [(a, b) for _, a, b in checks if batchable(a, b)]
        if all_close(floats):  # then only the other values need a look
            checks = [(label, a, b) for label, a, b in checks if not batchable(a, b)]
        for label, a, b in checks:
            difference = first_difference(label, a, b)
            if difference is not None:
                raise Uncompilable(
                    f"the recorded step disagrees with {eager_name}: {difference} (Python-side effects or state "
                    "the recording cannot replay)"
                )

    def _give_up(self, cause: str) -> None:
        self.fallback = cause
        self.recordings.clear()
        if self.mode is True:
            raise CompileError(f"method {self.method.name!r} cannot be compiled: {cause}")
        warnings.warn(
            f"ppdgm runs the {self.method.name!r} step eagerly (compile='auto'): {cause}. See docs/performance.md, "
            "'Compiled steps', for what a program must avoid to be compiled.",
            CompileWarning,
            stacklevel=3,
        )
