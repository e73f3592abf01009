"""Optimisers over K stacked models: one update for all members, each with its own learning rate.

:class:`BatchedOptimizer` holds the state of K same-shaped ``torch.optim`` optimisers as tensors
with a leading member dimension and updates all K members with one set of tensor operations.
Each family follows the single-tensor code path of its ``torch.optim`` counterpart operation by
operation, so one member's trajectory equals ``torch.optim``'s for that run (to float rounding,
~1e-7): Adam and AdamW (no AMSGrad), SGD (momentum, dampening, Nesterov, weight decay) and
RMSprop (momentum, centred, weight decay). State moves in and out of real optimisers with
:meth:`BatchedOptimizer.from_torch` and :meth:`BatchedOptimizer.write_back`, so a population can
switch between batched and member-by-member training at any epoch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

__all__ = ["FAMILIES", "BatchedOptimizer", "OptimizerConfig"]

FAMILIES = ("adam", "adamw", "sgd", "rmsprop")
"""Optimiser families with a batched update."""


@dataclass(frozen=True)
class OptimizerConfig:
    """The hyperparameters (all but the learning rate) that K batched members share."""

    family: str
    """One of :data:`FAMILIES`."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam/AdamW moment decay rates."""
    eps: float = 1e-8
    """Adam/AdamW/RMSprop denominator term."""
    weight_decay: float = 0.0
    """L2 penalty (decoupled for AdamW)."""
    momentum: float = 0.0
    """SGD/RMSprop momentum."""
    dampening: float = 0.0
    """SGD dampening."""
    nesterov: bool = False
    """SGD Nesterov momentum."""
    alpha: float = 0.99
    """RMSprop smoothing constant."""
    centered: bool = False
    """RMSprop: normalise by the centred second moment."""

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"OptimizerConfig.family: got {self.family!r}; expected one of {FAMILIES}")

    @classmethod
    def of(cls, optimizer: torch.optim.Optimizer) -> OptimizerConfig | None:
        """The config of a ``torch.optim`` optimiser, or None if it has no batched equivalent.

        None for other classes and for options without a batched update here (several param
        groups, AMSGrad, ``maximize``, a tensor learning rate, ``capturable``/``differentiable``).
        """
        if len(optimizer.param_groups) != 1:
            return None
        g = optimizer.param_groups[0]
        if g.get("maximize") or g.get("amsgrad") or g.get("capturable") or g.get("differentiable"):
            return None
        if isinstance(g.get("lr"), torch.Tensor):
            return None
        kind = type(optimizer)
        if kind is torch.optim.AdamW or (kind is torch.optim.Adam and g.get("decoupled_weight_decay")):
            return cls("adamw", betas=tuple(g["betas"]), eps=g["eps"], weight_decay=g["weight_decay"])
        if kind is torch.optim.Adam:
            return cls("adam", betas=tuple(g["betas"]), eps=g["eps"], weight_decay=g["weight_decay"])
        if kind is torch.optim.SGD:
            return cls(
                "sgd", weight_decay=g["weight_decay"], momentum=g["momentum"],
                dampening=g["dampening"], nesterov=g["nesterov"],
            )  # fmt: skip
        if kind is torch.optim.RMSprop:
            return cls(
                "rmsprop", eps=g["eps"], weight_decay=g["weight_decay"], momentum=g["momentum"],
                alpha=g["alpha"], centered=g["centered"],
            )  # fmt: skip
        return None

    def state_keys(self) -> tuple[str, ...]:
        """Per-parameter state tensors (besides ``step``), named as in ``torch.optim``."""
        if self.family in ("adam", "adamw"):
            return ("exp_avg", "exp_avg_sq")
        if self.family == "sgd":
            return ("momentum_buffer",) if self.momentum != 0 else ()
        keys = ["square_avg"]
        if self.momentum > 0:
            keys.append("momentum_buffer")
        if self.centered:
            keys.append("grad_avg")
        return tuple(keys)

    @property
    def counts_steps(self) -> bool:
        """Whether ``torch.optim`` keeps a ``step`` count for this family."""
        return self.family != "sgd"


def _per_member(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (shape ``[K]``) shaped to broadcast against ``like`` (shape ``[K, ...]``)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


class BatchedOptimizer:
    """The state of K optimisers of one family over K stacked models, updated together.

    Args:
        config: The shared hyperparameters.
        params: Stacked parameters, ``name -> [K, ...]`` (updated in place by :meth:`step`).
        state: Stacked state, ``name -> {key -> [K, ...]}``; None: fresh (as a new optimiser).
        steps: Steps taken by each member (``[K]``); None: zeros.
        has_buffer: SGD with momentum: whether each member's buffer exists yet (``torch.optim``
            starts it as a copy of the first gradient); None: none has one.
    """

    def __init__(
        self,
        config: OptimizerConfig,
        params: Mapping[str, torch.Tensor],
        state: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
        *,
        steps: torch.Tensor | None = None,
        has_buffer: torch.Tensor | None = None,
    ) -> None:
        self.config = config
        names = list(params)
        first = params[names[0]]
        k, device = first.shape[0], first.device
        if state is None:
            state = {n: {key: torch.zeros_like(p) for key in config.state_keys()} for n, p in params.items()}
        self.state = {n: dict(state[n]) for n in names}
        self.steps = steps.clone() if steps is not None else torch.zeros(k, dtype=torch.float64)
        self.has_buffer = has_buffer.clone() if has_buffer is not None else torch.zeros(k, dtype=torch.bool)
        self.device = device

    # ------------------------------------------------------------------------ torch.optim state

    @classmethod
    def from_torch(
        cls,
        optimizers: Sequence[torch.optim.Optimizer],
        params: Sequence[Mapping[str, torch.nn.Parameter]],
        stacked: Mapping[str, torch.Tensor],
    ) -> BatchedOptimizer:
        """Stack the states of K ``torch.optim`` optimisers (all with the same :class:`OptimizerConfig`).

        Args:
            optimizers: One optimiser per member, over that member's ``params``.
            params: Each member's named parameters (the keys of ``stacked``).
            stacked: The members' parameters stacked, ``name -> [K, ...]``.

        Raises:
            ValueError: If the optimisers have no batched equivalent or differ in config.
        """
        configs = {OptimizerConfig.of(o) for o in optimizers}
        if len(configs) != 1 or None in configs:
            raise ValueError(f"optimizers: got configs {configs}; expected one shared batched-able config")
        config = configs.pop()
        names = list(stacked)
        states = [[o.state.get(member[n], {}) for n in names] for o, member in zip(optimizers, params)]
        state: dict[str, dict[str, torch.Tensor]] = {}
        for j, n in enumerate(names):
            state[n] = {}
            for key in config.state_keys():
                parts = [s[j].get(key) for s in states]
                state[n][key] = torch.stack(
                    [p.detach() if p is not None else torch.zeros_like(stacked[n][0]) for p in parts]
                )
        steps = torch.tensor([float(s[0]["step"]) if s[0].get("step") is not None else 0.0 for s in states])
        has_buffer = torch.tensor([s[0].get("momentum_buffer") is not None for s in states])
        return cls(config, stacked, state, steps=steps.double(), has_buffer=has_buffer)

    def member_state(self, k: int) -> dict[str, dict[str, torch.Tensor]]:
        """Member ``k``'s state as ``name -> {key -> tensor}`` copies (with ``step``)."""
        out: dict[str, dict[str, torch.Tensor]] = {}
        for n, entries in self.state.items():
            out[n] = {}
            if self.config.counts_steps:
                out[n]["step"] = torch.tensor(float(self.steps[k]), dtype=torch.float32)
            for key, value in entries.items():
                if key == "momentum_buffer" and self.config.family == "sgd" and not self.has_buffer[k]:
                    continue
                out[n][key] = value[k].clone()
        return out

    def write_back(
        self,
        optimizers: Sequence[torch.optim.Optimizer],
        params: Sequence[Mapping[str, torch.nn.Parameter]],
        member_states: Mapping[int, dict[str, dict[str, torch.Tensor]]] | None = None,
    ) -> None:
        """Put each member's state into its ``torch.optim`` optimiser (``member_states`` overrides)."""
        for k, (opt, member) in enumerate(zip(optimizers, params)):
            chosen = (member_states or {}).get(k) or self.member_state(k)
            for n, entries in chosen.items():
                if entries:
                    opt.state[member[n]] = {key: value.to(member[n].device) for key, value in entries.items()}

    # ------------------------------------------------------------------------ the update

    @torch.no_grad()
    def step(self, params: Mapping[str, torch.Tensor], grads: Mapping[str, torch.Tensor], lr: torch.Tensor) -> None:
        """One update of every member's parameters (in place), member ``k`` at ``lr[k]``.

        Args:
            params: Stacked parameters, ``name -> [K, ...]``.
            grads: Their gradients, same shapes.
            lr: Learning rates, ``[K]`` float64 (as Python floats in ``torch.optim``).
        """
        c = self.config
        if c.counts_steps:
            self.steps += 1
        names = list(params)
        ps, gs = [params[n] for n in names], [grads[n] for n in names]
        st = {key: [self.state[n][key] for n in names] for key in c.state_keys()}
        if c.family in ("adam", "adamw"):
            self._adam(ps, gs, st, lr)
        elif c.family == "sgd":
            self._sgd(ps, gs, st, lr)
        else:
            self._rmsprop(ps, gs, st, lr)
        if c.family == "sgd" and c.momentum != 0:
            self.has_buffer[:] = True

    def _cast(self, values: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``values`` (``[K]``) as a broadcastable tensor of each of ``like``'s dtype and device."""
        flat = values.to(device=like[0].device, dtype=like[0].dtype)
        return [_per_member(flat, t) for t in like]

    def _adam(self, ps: list, gs: list, st: dict[str, list], lr: torch.Tensor) -> None:
        c = self.config
        beta1, beta2 = c.betas
        if c.weight_decay != 0:
            if c.family == "adamw":
                torch._foreach_mul_(ps, self._cast(1 - lr * c.weight_decay, ps))
            else:
                gs = torch._foreach_add(gs, ps, alpha=c.weight_decay)
        exp_avg, exp_avg_sq = st["exp_avg"], st["exp_avg_sq"]
        torch._foreach_lerp_(exp_avg, gs, 1 - beta1)
        torch._foreach_mul_(exp_avg_sq, beta2)
        torch._foreach_addcmul_(exp_avg_sq, gs, gs, value=1 - beta2)
        step_size = self._cast(lr / (1 - beta1**self.steps), ps)
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, self._cast((1 - beta2**self.steps) ** 0.5, ps))
        torch._foreach_add_(denom, c.eps)
        update = torch._foreach_mul(exp_avg, step_size)
        torch._foreach_div_(update, denom)
        torch._foreach_sub_(ps, update)

    def _sgd(self, ps: list, gs: list, st: dict[str, list], lr: torch.Tensor) -> None:
        c = self.config
        if c.weight_decay != 0:
            gs = torch._foreach_add(gs, ps, alpha=c.weight_decay)
        if c.momentum != 0:
            bufs = st["momentum_buffer"]
            torch._foreach_mul_(bufs, c.momentum)
            torch._foreach_add_(bufs, gs, alpha=1 - c.dampening)
            if not bool(self.has_buffer.all()):  # torch.optim starts a buffer as the first gradient
                for buf, g, has in zip(bufs, gs, self._cast(self.has_buffer, ps)):
                    buf.copy_(torch.where(has.bool(), buf, g))
            gs = torch._foreach_add(gs, bufs, alpha=c.momentum) if c.nesterov else bufs
        torch._foreach_addcmul_(ps, gs, self._cast(-lr, ps))

    def _rmsprop(self, ps: list, gs: list, st: dict[str, list], lr: torch.Tensor) -> None:
        c = self.config
        if c.weight_decay != 0:
            gs = torch._foreach_add(gs, ps, alpha=c.weight_decay)
        square_avg = st["square_avg"]
        torch._foreach_mul_(square_avg, c.alpha)
        torch._foreach_addcmul_(square_avg, gs, gs, value=1 - c.alpha)
        if c.centered:
            grad_avg = st["grad_avg"]
            torch._foreach_lerp_(grad_avg, gs, 1 - c.alpha)
            avg = torch._foreach_addcmul(square_avg, grad_avg, grad_avg, value=-1)
            torch._foreach_sqrt_(avg)
        else:
            avg = torch._foreach_sqrt(square_avg)
        torch._foreach_add_(avg, c.eps)
        neg_lr = self._cast(-lr, ps)
        if c.momentum > 0:
            bufs = st["momentum_buffer"]
            torch._foreach_mul_(bufs, c.momentum)
            torch._foreach_addcdiv_(bufs, gs, avg)
            torch._foreach_addcmul_(ps, bufs, neg_lr)
        else:
            update = torch._foreach_mul(gs, self._cast(lr, ps))
            torch._foreach_div_(update, avg)
            torch._foreach_sub_(ps, update)
