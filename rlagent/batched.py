"""One training epoch for many small runs at once: stacked parameters under ``torch.func.vmap``.

A population of runs (:class:`rlagent.training.Trainer` objects, one per run) is trained one
epoch at a time by :func:`train_epochs`. Runs that can share one batched computation — same
architecture, optimiser config, batch size and training-set size, on the same device — form a
*group*; a group is trained either

* **batched**: parameters and buffers stacked with a leading member dimension, gradients from
  ``vmap(grad_and_value(functional_call ...))`` over the members, one stacked optimiser update
  (:class:`rlagent.batched_optim.BatchedOptimizer`, each member at its own learning rate); or
* **member by member**: each run's own ``Trainer.train_epoch``.

Both give the same results: the batched epoch draws each run's shuffling order from its own
generator, applies the same divergence check every 32 steps, measures the same gradient noise
scale and minibatch-loss statistics, and writes parameters, buffers and optimiser state back
into each run's model and ``torch.optim`` optimiser, so the next epoch may take either path.
Which path a group takes is decided by :class:`BatchPlanner` from timings of real epochs on
its device (a single member, a recurrent model (``nn.GRU``/``nn.LSTM`` have no ``vmap`` rule)
or an optimiser without a batched update always goes member by member). Dropout draws differ
between the two paths (``randomness="different"`` per member under ``vmap``).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from rlagent.alignment import alignment_window, descent_cosine
from rlagent.batched_optim import BatchedOptimizer, OptimizerConfig
from rlagent.training import NOISE_WINDOW, EpochStats, Trainer, seeded_global_rng

__all__ = ["MODES", "BatchPlanner", "architecture_key", "group_key", "train_batched", "train_epochs"]

logger = logging.getLogger(__name__)

MODES = ("auto", "batched", "sequential")
"""How :class:`BatchPlanner` trains a group: decided from timings, always batched, never batched."""
_CHECK_EVERY = 32  # as rlagent.training.Trainer: the divergence check and accuracy blocks


def architecture_key(model: nn.Module) -> Hashable | None:
    """What must be equal for two models to be trained in one ``vmap``; None: not batchable.

    Recurrent modules (no ``vmap`` batching rule for ``aten::gru``/``lstm``) and frozen
    parameters (``torch.optim`` skips them; the batched update would not) are not batchable.
    """
    if any(isinstance(m, nn.RNNBase) for m in model.modules()):
        return None
    params = [(n, tuple(p.shape), p.dtype, str(p.device)) for n, p in model.named_parameters()]
    if not params or not all(p.requires_grad for p in model.parameters()):
        return None
    buffers = [(n, tuple(b.shape), b.dtype) for n, b in model.named_buffers()]
    return (type(model).__module__, type(model).__qualname__, repr(model), tuple(params), tuple(buffers))


def group_key(trainer: Trainer) -> Hashable | None:
    """The key of the batched group ``trainer``'s next epoch belongs to; None: member by member."""
    arch = architecture_key(trainer.model)
    config = OptimizerConfig.of(trainer.optimizer)
    if arch is None or config is None or trainer.loss_fn is not nn.functional.cross_entropy:
        return None
    if [id(p) for p in trainer.optimizer.param_groups[0]["params"]] != [id(p) for p in trainer.model.parameters()]:
        return None
    x = trainer.train_split.x
    shape = (tuple(x.shape[1:]), x.dtype, str(x.device), len(trainer.train_split))
    return (arch, config, int(trainer.batch_size), shape, trainer.measure_noise, trainer.measure_alignment)


class BatchPlanner:
    """Decides, per group and group size, whether batched training is faster on this device.

    In ``auto`` mode it measures: a group key seen for the first time is trained batched, the
    next time member by member (both give the same results, so exploring costs no
    correctness), and from then on the faster way by the mean seconds per member-epoch of its
    last three epochs; every ``recheck_every``-th epoch of a key takes the other way once, so a
    change of load on the machine is noticed. Sizes are bucketed to powers of two. On a CUDA
    device ``auto`` is a cost rule instead: every group of ``min_members`` or more is batched.
    A tiny model's epoch on a GPU is bound by kernel launches, so K members trained as one
    computation cost about what one costs (measured on an H200: MLP draws, one env 5.8
    env-steps/s; populations of 64, 256 and 1,024 always batched 2.9x, 10.7x and 32x that), and
    timing the sequential way there costs a whole group's epochs at the launch-bound rate.

    Args:
        mode: One of :data:`MODES`.
        min_members: Groups smaller than this always go member by member (``vmap`` of one
            model is 2-3x slower than plain PyTorch; groups of 2-3 MNIST-1D MLPs gained little
            or lost here, and exploring them cost more than it won under a policy whose batch
            sizes spread the members over many small groups).
        recheck_every: Epochs of one key between re-measurements of the slower way (0: never).
        device: The device the groups train on; ``auto`` measures on a CPU and batches on CUDA.
    """

    def __init__(
        self, mode: str = "auto", *, min_members: int = 4, recheck_every: int = 25, device: str | torch.device = "cpu"
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode: got {mode!r}; expected one of {MODES}")
        if not isinstance(min_members, int) or min_members < 1:
            raise ValueError(f"min_members: got {min_members!r}; expected an integer >= 1")
        if not isinstance(recheck_every, int) or recheck_every < 0:
            raise ValueError(f"recheck_every: got {recheck_every!r}; expected an integer >= 0")
        self.mode = mode
        self.measures = torch.device(device).type != "cuda"
        """Whether ``auto`` measures both ways (CPU) or batches every large enough group (CUDA)."""
        self.min_members = min_members
        self.recheck_every = recheck_every
        self.timings: dict[tuple[Hashable, int, str], list[float]] = defaultdict(list)
        """Seconds per member-epoch by (group key, size bucket, way)."""
        self._uses: dict[tuple[Hashable, int], int] = defaultdict(int)
        self.batched_failures: set[Hashable] = set()
        """Group keys whose batched epoch raised (they go member by member from then on)."""

    @staticmethod
    def bucket(size: int) -> int:
        """The power of two at or above ``size``."""
        return 1 << (max(1, size) - 1).bit_length()

    def choose(self, key: Hashable | None, size: int) -> str:
        """``"batched"`` or ``"sequential"`` for a group of ``size`` members with key ``key``."""
        if key is None or key in self.batched_failures or self.mode == "sequential":
            return "sequential"
        if self.mode == "batched":
            return "batched"
        if size < self.min_members:
            return "sequential"
        if not self.measures:
            return "batched"
        slot = (key, self.bucket(size))
        self._uses[slot] += 1
        mean = {}
        for way in ("batched", "sequential"):
            seen = self.timings[(*slot, way)]
            if not seen:
                return way
            mean[way] = sum(seen[-3:]) / len(seen[-3:])
        best = min(mean, key=mean.__getitem__)
        if self.recheck_every and self._uses[slot] % self.recheck_every == 0:
            return "sequential" if best == "batched" else "batched"
        return best

    def record(self, key: Hashable | None, size: int, way: str, seconds_per_member: float) -> None:
        """Remember how long one member-epoch took in a group trained ``way``."""
        if key is not None:
            self.timings[(key, self.bucket(size), way)].append(seconds_per_member)


def train_epochs(trainers: Sequence[Trainer], planner: BatchPlanner | None = None) -> list[EpochStats]:
    """Train every trainer one epoch at its current LR and batch size; batched where it pays.

    Args:
        trainers: The runs; each keeps its own model, optimiser, data and generator.
        planner: Decides batched vs member by member per group (default: a fresh ``auto`` one,
            which then has no timings: keep one planner across epochs).

    Returns:
        Each trainer's :class:`EpochStats`, in order (``seconds``: the group's wall time
        divided by its size for a batched group).
    """
    planner = planner if planner is not None else BatchPlanner()
    groups: dict[Any, list[int]] = defaultdict(list)
    for i, t in enumerate(trainers):
        key = group_key(t)
        groups[key if key is not None else ("alone", i)].append(i)
    out: list[EpochStats | None] = [None] * len(trainers)
    for key, members in groups.items():
        real_key = None if key[0] == "alone" else key
        group = [trainers[i] for i in members]
        way = planner.choose(real_key, len(group))
        start = time.perf_counter()
        stats = None
        if way == "batched":
            try:
                stats = train_batched(group)
            except Exception:  # an op without a vmap rule: fall back, once and for all
                logger.warning("batched training failed for a group of %d; training it member by member",
                               len(group), exc_info=True)  # fmt: skip
                planner.batched_failures.add(real_key)
                way = "sequential"
        if stats is None:
            stats = [t.train_epoch() for t in group]
        planner.record(real_key, len(group), way, (time.perf_counter() - start) / len(group))
        logger.debug("trained a group of %d %s", len(group), way)
        for i, s in zip(members, stats):
            out[i] = s
    return out  # type: ignore[return-value]


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach() for t in tensors])


def train_batched(trainers: Sequence[Trainer]) -> list[EpochStats]:
    """One epoch of a group (equal :func:`group_key`) trained as one batched computation.

    Equal to ``[t.train_epoch() for t in trainers]`` up to float rounding (dropout draws
    aside; they are seeded from the members' generators, so reproducible). If it raises,
    every trainer is left as it was (generators included).

    Raises:
        ValueError: If the trainers do not share one group key.
    """
    keys = {group_key(t) for t in trainers}
    if len(keys) != 1 or None in keys:
        raise ValueError("train_batched: the trainers must share one group key (see group_key)")
    gen_states = [t.generator.get_state() for t in trainers]
    try:
        with seeded_global_rng([t.generator for t in trainers], trainers[0].train_split.x.device):
            stats = _train_batched(trainers)
    except BaseException:
        for t, state in zip(trainers, gen_states):
            t.generator.set_state(state)
        raise
    for t in trainers:
        t.set_epochs_trained(t.epochs_trained + 1)
    return stats


def _train_batched(trainers: Sequence[Trainer]) -> list[EpochStats]:
    start = time.perf_counter()
    k_members = len(trainers)
    models = [t.model for t in trainers]
    named_p = [dict(m.named_parameters()) for m in models]
    named_b = [dict(m.named_buffers()) for m in models]
    params = {n: _stack([d[n] for d in named_p]) for n in named_p[0]}
    buffers = {n: _stack([d[n] for d in named_b]) for n in named_b[0]}
    opt = BatchedOptimizer.from_torch([t.optimizer for t in trainers], named_p, params)
    lr = torch.tensor([float(t.step_lr) for t in trainers], dtype=torch.float64)

    first = trainers[0]
    device = first.train_split.x.device
    n, bs = len(first.train_split), int(first.batch_size)
    perms = [torch.randperm(n, generator=t.generator).to(device) for t in trainers]
    xs = torch.stack([t.train_split.x[p] for t, p in zip(trainers, perms)])
    ys = torch.stack([t.train_split.y[p] for t, p in zip(trainers, perms)])
    n_steps, full_steps = math.ceil(n / bs), n // bs
    window = range(0)
    if first.measure_noise and full_steps >= NOISE_WINDOW + 1:
        lo = (full_steps - NOISE_WINDOW) // 2
        window = range(lo, lo + NOISE_WINDOW)
    align = alignment_window(full_steps) if first.measure_alignment else range(0)
    before: dict[str, torch.Tensor] | None = None  # the parameters before the previous step
    cosines: list[torch.Tensor] = []  # [K] each

    base = copy.deepcopy(models[0]).to("meta").train()

    def loss_of(p: dict, b: dict, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = functional_call(base, (p, b), (x,))
        return nn.functional.cross_entropy(out, y), out

    step_fn = vmap(grad_and_value(loss_of, has_aux=True), randomness="different")

    losses: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    blocks: list[tuple[int, torch.Tensor]] = []  # (steps counted so far, correct per member)
    small_sq: list[torch.Tensor] = []
    grad_sum: dict[str, torch.Tensor] | None = None
    stop = [n_steps] * k_members  # steps each member took
    diverged = [False] * k_members
    snapshots: dict[int, tuple[dict, dict, dict]] = {}  # state of members stopped early
    counted = 0
    for step in range(n_steps):
        xb, yb = xs[:, step * bs : (step + 1) * bs], ys[:, step * bs : (step + 1) * bs]
        grads, (loss, out) = step_fn(params, buffers, xb, yb)
        if step in window:
            small_sq.append(sum(g.square().flatten(1).sum(1) for g in grads.values()))
            if grad_sum is None:
                grad_sum = {name: g.clone() for name, g in grads.items()}
            else:
                torch._foreach_add_(list(grad_sum.values()), list(grads.values()))
        if step in align:
            if before is not None:
                delta = {name: params[name] - before[name] for name in params}
                dot = sum((grads[name] * d).flatten(1).sum(1) for name, d in delta.items())
                grad_sq = sum(g.square().flatten(1).sum(1) for g in grads.values())
                delta_sq = sum(d.square().flatten(1).sum(1) for d in delta.values())
                cosines.append(descent_cosine(dot, grad_sq, delta_sq))
            before = {name: p.detach().clone() for name, p in params.items()} if step < align[-1] else None
        opt.step(params, grads, lr)
        losses.append(loss.detach())
        logits.append(out.detach())
        if step % _CHECK_EVERY == _CHECK_EVERY - 1:
            blocks.append((step + 1, (torch.cat(logits, 1).argmax(-1) == ys[:, counted * bs : (step + 1) * bs]).sum(1)))
            logits, counted = [], step + 1
            bad = (~torch.isfinite(loss)).tolist()
            for k in range(k_members):
                if bad[k] and not diverged[k]:
                    diverged[k], stop[k] = True, step + 1
                    snapshots[k] = (
                        {name: p[k].clone() for name, p in params.items()},
                        {name: b[k].clone() for name, b in buffers.items()},
                        opt.member_state(k),
                    )
            if all(diverged):
                break
    if logits:
        blocks.append((n_steps, (torch.cat(logits, 1).argmax(-1) == ys[:, counted * bs :]).sum(1)))

    with torch.no_grad():
        for k in range(k_members):
            p_src, b_src, _ = snapshots.get(k, ({n_: v[k] for n_, v in params.items()},
                                                {n_: v[k] for n_, v in buffers.items()}, None))  # fmt: skip
            for name, p in named_p[k].items():
                p.copy_(p_src[name])
            for name, b in named_b[k].items():
                b.copy_(b_src[name])
            models[k].train()
    opt.write_back([t.optimizer for t in trainers], named_p, {k: s[2] for k, s in snapshots.items()})

    seconds = (time.perf_counter() - start) / k_members
    loss_all = torch.stack(losses, 1).float()  # [K, steps run]
    window_done = bool(window) and len(small_sq) == NOISE_WINDOW
    stats = []
    for k in range(k_members):
        correct = sum(int(c[k]) for end, c in blocks if end <= stop[k])
        noise = None
        if window_done and grad_sum is not None and stop[k] > window[-1]:
            big_sq = sum(float(g[k].square().sum()) for g in grad_sum.values()) / NOISE_WINDOW**2
            small = float(torch.stack([s[k] for s in small_sq]).mean())
            noise = (small, big_sq, float(bs), float(bs * NOISE_WINDOW))
        alignment = None
        if align and len(cosines) == len(align) - 1 and stop[k] > align[-1]:
            alignment = float(torch.stack([c[k] for c in cosines]).mean())
        stats.append(
            _member_stats(loss_all[k, : stop[k]].contiguous(), correct, n, bs, noise, alignment, diverged[k], seconds)
        )
    return stats


def _member_stats(
    loss_t: torch.Tensor,
    correct: int,
    n: int,
    bs: int,
    noise: tuple[float, float, float, float] | None,
    alignment: float | None,
    diverged: bool,
    seconds: float,
) -> EpochStats:
    """One member's epoch statistics, computed as ``Trainer.train_epoch`` computes them."""
    sizes = torch.full((len(loss_t),), float(bs), device=loss_t.device)
    sizes[-1] = min(bs, n - (len(loss_t) - 1) * bs)
    seen = int(sizes.sum().item())
    train_loss = float((loss_t * sizes).sum() / sizes.sum())
    mean = float(loss_t.mean())
    loss_noise = float(loss_t.std()) / mean if len(loss_t) > 1 and mean > 0 else 0.0
    return EpochStats(
        train_loss=train_loss,
        train_acc=correct / seen,
        loss_noise=loss_noise if math.isfinite(loss_noise) else 0.0,
        steps=len(loss_t),
        samples=seen,
        seconds=seconds,
        noise=noise,
        alignment=alignment if alignment is not None and math.isfinite(alignment) else None,
        diverged=diverged or not math.isfinite(train_loss),
    )
