"""Players, the engine that steps them, the base class of every method, and the method registry.

A *player* is a group of parameters with its own torch optimizer: the model's θ, the guide's φ,
later a discriminator's ψ. A method's step is a sequence of phases; each phase ends in
:meth:`Engine.update`, which back-propagates one loss and steps only the players that the phase
moves — a player whose phase did not run keeps its parameters *and* its optimizer state.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, cast

import torch

from ppdgm.errors import UsageError
from ppdgm.methods.optimizers import OptimizerSpec, Player, host_step_counters, make_optimizer, refused_option
from ppdgm.programs.handlers import constraint_name, create_param, unconstrained_params
from ppdgm.programs.pair import ConventionError, ProgramPair


def _per_player(value: Any, player: str, default: Any) -> Any:
    if isinstance(value, Mapping):
        return value.get(player, default)
    return default if value is None else value


class Engine:
    """Runs the phases of one method on one program pair: owns the players and their optimizers.

    Args:
        programs: the model/guide pair (already inspected).
        players: parameter names per player, e.g. ``{"model": (...), "guide": (...)}``.
        optimizer: a name, class or factory, or a mapping from player name to one.
        lr: learning rate, or a mapping from player name to one.
        optimizer_options: extra keyword arguments for the optimizer (or a mapping per player).
    """

    def __init__(
        self,
        programs: ProgramPair,
        players: Mapping[str, Iterable[str]],
        *,
        optimizer: OptimizerSpec | Mapping[str, OptimizerSpec] = "adam",
        lr: float | Mapping[str, float] = 1e-3,
        optimizer_options: Mapping[str, Any] | None = None,
        extra_params: Mapping[str, list[torch.Tensor]] | None = None,
        grad_sync: Any = None,
        skip_nonfinite: bool = False,
    ) -> None:
        self.programs = programs
        known = sorted({*players, *(extra_params or {})})
        for label, value in (("lr", lr), ("optimizer", optimizer), ("optimizer_options", optimizer_options)):
            _check_players(label, value, known, nested=label == "optimizer_options")
        self.players: dict[str, Player] = {}
        for name, param_names in players.items():
            param_names = tuple(param_names)
            params = programs.param_tensors(param_names)
            params += list((extra_params or {}).get(name, ()))
            if not params:
                continue
            rate = _per_player(lr, name, 1e-3)
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < float("inf"):
                raise UsageError(f"lr must be a positive finite number (or a mapping per player), got {rate!r}")
            if rate == 0 and not isinstance(lr, Mapping):  # 0 in a mapping freezes that player on purpose
                raise UsageError(
                    "lr must be a positive finite number, got 0 (freeze a player with lr={'model': 0, ...})"
                )
            kind, options = _per_player(optimizer, name, "adam"), _per_player_options(optimizer_options, name)
            try:
                opt = make_optimizer(params, kind, rate, options)
            except UsageError:
                raise
            except (TypeError, ValueError) as err:
                culprit = refused_option(kind, rate, options)
                which = f"option {culprit}={options[culprit]!r}" if culprit is not None else f"options {options}"
                raise UsageError(f"the optimizer of player {name!r} refuses its {which}: {err}") from None
            self.players[name] = Player(name, param_names, params, opt)
        self._base_lrs = {name: [g["lr"] for g in p.optimizer.param_groups] for name, p in self.players.items()}
        self._lr_factor = 1.0
        #: per player, how many parameters it had when made (later ones were created during training)
        self._first_late = {name: len(p.param_names) for name, p in self.players.items()}
        #: how many times players have adopted parameters created after inspection (a recording's parameters change)
        self.param_version = 0
        programs.owned = {n for player in self.players.values() for n in player.param_names}
        programs.unowned.clear()
        #: called on the moving parameters between backward and step (a distributed fit averages gradients there)
        self.grad_sync: Any = grad_sync  # a distributed.GradientSync in a data-parallel fit
        self._counters_hosted: set[str] = set()
        #: skip an update whose loss or gradients are not finite (as GradScaler does), instead of applying it
        self.skip_nonfinite = skip_nonfinite
        self.skipped_updates = 0
        #: set by :meth:`recording` while a step is traced: takes each phase's loss instead of back-propagating it
        self.recorder: Callable[[torch.Tensor, list[Player], list[torch.Tensor]], None] | None = None

    @contextlib.contextmanager
    def local(self) -> Iterator[None]:
        """Inside the block, updates are not averaged over the ranks (a step traced or checked on one rank)."""
        sync, self.grad_sync = self.grad_sync, None
        try:
            yield
        finally:
            self.grad_sync = sync

    @contextlib.contextmanager
    def recording(self, recorder: Callable[[torch.Tensor, list[Player], list[torch.Tensor]], None]) -> Iterator[None]:
        """Inside the block each phase's update goes to ``recorder`` instead of being applied (a step being traced by
        :mod:`ppdgm.compile`: gradients recorded as operations, the optimizer step as one opaque call)."""
        self.recorder = recorder
        try:
            yield
        finally:
            self.recorder = None

    def scale_learning_rates(self, factor: float) -> None:
        """Set every player's learning rates to ``factor`` times their initial values."""
        self._lr_factor = factor
        for name, player in self.players.items():
            for group, base in zip(player.optimizer.param_groups, self._base_lrs[name]):
                group["lr"] = base * factor

    def apply_settings(self, optimizer_options: Mapping[str, Any] | None) -> None:
        """After loading a checkpoint's optimizer states: this fit's learning rates and optimizer options apply."""
        for name, player in self.players.items():
            options = _per_player_options(optimizer_options, name)
            for group, base in zip(player.optimizer.param_groups, self._base_lrs[name]):
                group["lr"] = base
                for key, value in options.items():
                    if key in group:
                        group[key] = tuple(value) if isinstance(group[key], tuple) else value

    def update(self, loss: torch.Tensor, players: Iterable[str]) -> None:
        """Back-propagate ``loss`` and step the optimizers of ``players`` only."""
        if self.programs.unowned and self.recorder is None:
            self.adopt_new_parameters()
        moving = [self.players[p] for p in players if p in self.players]
        if not moving:
            return
        # gradients only for the players that move: a generator's loss need not fill the discriminator's
        params = [p for player in moving for p in player.params]
        if self.recorder is not None:  # a step being traced (ppdgm.compile.step): gradients recorded, the step a call
            self.recorder(loss, moving, params)
            return
        for player in moving:
            player.optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=params)
        self.apply_gradients(loss, moving, params)

    def _recreate_late_parameters(self, player: Player, saved: Mapping) -> None:
        """Parameters the saved run's programs created during training: created again and adopted, so that the
        checkpoint's tensors and optimizer state fit (a new process has not run those steps)."""
        late = [n for n in saved.get("names", ()) if n not in player.param_names]
        for n in late:
            constraint = saved.get("constraints", {}).get(n)
            if constraint is None:
                raise UsageError(
                    f"the checkpoint holds parameter {n!r}, created during training with a constraint ppdgm cannot "
                    "create again (not one of pyro.distributions.constraints' singletons); resume=False starts fresh"
                )
            value = saved["params"][saved["names"].index(n)]
            if n not in unconstrained_params():
                create_param(n, value.to(player.params[0].device if player.params else value.device), constraint)
            self.programs.unowned[n] = player.name
        if late:
            self.adopt_new_parameters()
        names = list(saved.get("names", player.param_names))
        if names != list(player.param_names) and sorted(names) == sorted(player.param_names):
            self._regroup(player, names, saved["optimizer"]["param_groups"])
        if "names" in saved:  # the saved run's late parameters stay late: later checkpoints can create them again
            self._first_late[player.name] = len(player.param_names) - len(saved.get("constraints", {}))

    def _regroup(self, player: Player, names: list[str], groups: list[dict]) -> None:
        """Order ``player``'s parameters and optimizer groups as a checkpoint has them (a parameter the saved run
        created during training may have been there from the start in this process)."""
        by_name = dict(zip(player.param_names, player.params))
        player.param_names, player.params = tuple(names), [by_name[n] for n in names]
        optimizer = player.optimizer
        options = {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}
        first, *rest = [[player.params[i] for i in group["params"]] for group in groups]
        player.optimizer = type(optimizer)(first, **options)
        for params in rest:
            player.optimizer.add_param_group({"params": params})
        self._base_lrs[player.name] = [options["lr"] / self._lr_factor] * len(groups)

    def adopt_new_parameters(self) -> list[str]:
        """Give the parameters the programs created after inspection to the player of the program that made them
        (the model's, for one both use), as Pyro's ``SVI`` steps every parameter it has seen.

        Each joins its player's optimizer as a new parameter group at the player's current learning rate.
        """
        programs, adopted = self.programs, []
        store = unconstrained_params()
        for name, program in list(programs.unowned.items()):
            if name not in store and name not in programs.local_params:
                continue  # asked for, never created (the program raised on the way)
            player = self.players.get(program) or self.players.get("model")
            if player is None:
                raise ConventionError(f"parameter {name!r} was created during training, but no player can own it")
            tensor = programs.param_tensors([name])[0]
            player.param_names = (*player.param_names, name)
            player.params.append(tensor)
            player.optimizer.add_param_group({"params": [tensor]})
            group = player.optimizer.param_groups[-1]
            self._base_lrs[player.name].append(group["lr"])
            group["lr"] = group["lr"] * self._lr_factor
            cast(set, programs.owned).add(name)  # set once the players exist: adoption runs after
            adopted.append(name)
        programs.unowned.clear()
        if adopted:
            self.param_version += 1
        return adopted

    def apply_gradients(self, loss: torch.Tensor, moving: list[Player], params: list[torch.Tensor]) -> None:
        """Average gradients over ranks, skip a non-finite update if asked, and step the moving players."""
        if self.grad_sync is not None:
            self.grad_sync(params)
        if self.skip_nonfinite and not self._finite(loss, params):  # one host read per phase: skipping's price
            for player in moving:
                player.optimizer.zero_grad(set_to_none=True)
            self.skipped_updates += 1
            return
        for player in moving:
            player.optimizer.step()
            if player.name not in self._counters_hosted and player.optimizer.state:
                host_step_counters(player.optimizer)  # once, after the step that created the state
                self._counters_hosted.add(player.name)

    @staticmethod
    def _finite(loss: torch.Tensor, params: list[torch.Tensor]) -> bool:
        grads = [p.grad for p in params if p.grad is not None]
        checks = [torch.isfinite(loss.detach()).all(), *(torch.isfinite(g).all() for g in grads)]
        return bool(torch.stack(checks).all())

    def state_dict(self) -> dict:
        return {
            name: {
                "params": [p.detach().clone() for p in player.params],
                "optimizer": player.optimizer.state_dict(),
                "names": list(player.param_names),
                # how to create again a parameter a program made during training, before its optimizer state loads
                "constraints": {n: constraint_name(n) for n in player.param_names[self._first_late[name] :]},
            }
            for name, player in self.players.items()
        }

    def load_state_dict(self, state: Mapping) -> None:
        for name, player in self.players.items():
            saved = state[name]
            self._recreate_late_parameters(player, saved)
            if len(saved["params"]) != len(player.params):
                raise UsageError(
                    f"checkpoint has {len(saved['params'])} tensors for player {name!r}, expected "
                    f"{len(player.params)}: was it written for another model or guide?"
                )
            with torch.no_grad():
                for p, v in zip(player.params, saved["params"]):
                    if p.shape != v.shape:
                        raise UsageError(
                            f"checkpoint tensor of shape {tuple(v.shape)} for player {name!r} does "
                            f"not fit a parameter of shape {tuple(p.shape)}"
                        )
                    p.copy_(v)
            player.optimizer.load_state_dict(saved["optimizer"])


def _check_players(label: str, value: Any, players: list[str], nested: bool = False) -> None:
    """Refuse a per-player mapping that names no player of this fit (a typo would silently use the default)."""
    if not isinstance(value, Mapping):
        return
    if nested and not any(isinstance(v, Mapping) for v in value.values()):
        return  # the same options for every player
    unknown = [k for k in value if k not in players]
    if unknown:
        close = {k: difflib.get_close_matches(str(k), players, n=1) for k in unknown}
        hints = "; ".join(f"{k!r}: did you mean {c[0]!r}?" for k, c in close.items() if c)
        raise UsageError(
            f"{label} names unknown player(s) {unknown} (this fit's players: {players}){'; ' + hints if hints else ''}"
        )


def _per_player_options(options: Mapping[str, Any] | None, player: str) -> Mapping[str, Any]:
    if not options:
        return {}
    if any(isinstance(v, Mapping) for v in options.values()):
        return options.get(player, {})
    return options
