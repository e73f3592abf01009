"""Environment specs: the ``envs/*.toml`` files, as frozen dataclasses validated on load.

A spec file maps one to one onto :class:`EnvSpec`; its tables ``[episode]``, ``[reward]`` and
``[workloads]`` onto :class:`EpisodeSpec`, :class:`RewardSpec` and :class:`WorkloadSet`, and each
``[workloads.define.NAME]`` table onto a :class:`rlagent.workloads.WorkloadSpec`; a training
set drawn by a sampler, ``train = { sampler = "procedural", exclude = {...} }``, onto a
:class:`rlagent.procedural.ProceduralSpec`. Anything
missing, mistyped, unknown or out of range is refused with a :class:`SpecError` naming the field
and the value.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from rlagent.errors import SpecError
from rlagent.hparams import SCHEDULES, Envelope
from rlagent.procedural import ProceduralSpec, Task, sample_task
from rlagent.workloads import (
    BUILTIN_WORKLOADS,
    DEFAULT_BATCH_SIZE_RANGE,
    DEFAULT_LR_RANGE,
    WorkloadSpec,
    check_factory_args,
    check_range,
)

ACTIONS = ("discrete", "continuous", "discrete-wide", "discrete-rollback", "discrete-coupled")
REWARDS = ("val_acc", "val_acc_change", "best_improvement", "final")
COST_UNITS = ("steps", "seconds")


_PROBE_STREAM = 0x9B0BE  # seeds the probe-or-own-start coin of a draw


def _check_type(name: str, value: Any, types_: tuple[type, ...], allowed: str) -> None:
    if (isinstance(value, bool) and bool not in types_) or not isinstance(value, types_):
        raise SpecError(name, value, allowed)


def _check_weight(name: str, value: Any) -> None:
    """A reward weight: a finite number >= 0."""
    _check_type(name, value, (int, float), "a finite number >= 0")
    if not (value >= 0 and math.isfinite(value)):
        raise SpecError(name, value, "a finite number >= 0")


@dataclass(frozen=True)
class EpisodeSpec:
    """How one episode (one training run) goes."""

    epochs: int | None = None
    """Epochs per episode; None uses each workload's own budget."""
    action: str = "discrete"
    """``discrete``: MultiDiscrete([5, 3]), LR ×{¼,½,1,2,4} and batch size ×{½,1,2}; ``continuous``:
    Box(-1, 1, (2,)), LR ×4^a and batch size ×2^b; ``discrete-wide``: MultiDiscrete([7, 3]), LR
    ×{1/16,¼,½,1,2,4,16}, batch size as ``discrete``; ``discrete-rollback``: MultiDiscrete([5, 3, 2]),
    ``discrete`` plus a choice to roll the run back to its best epoch and its LR (:mod:`rlagent.rollback`);
    ``discrete-coupled``: MultiDiscrete([5, 2]), LR ÷ batch size ×{¼,½,1,2,4}, taken by the LR or
    partly by the batch size (:func:`rlagent.env.coupled_factors`)."""
    lr_range: tuple[float, float] | None = None
    """Learning-rate range the agent moves within; None uses each workload's own."""
    batch_size_range: tuple[int, int] | None = None
    """Batch-size range the agent moves within; None uses each workload's own."""
    init_lr: float | str = 1e-3
    """Learning rate of the first epoch, ``"sample"`` for log-uniform in the range (a procedural
    draw brings its own), or ``"probe"``: a short LR range test on a copy of the run picks it
    (:mod:`rlagent.probe`), for procedural draws too."""
    init_batch_size: int | str = 32
    """Batch size of the first epoch, or ``"sample"`` for a power of two in the range (a
    procedural draw brings its own)."""
    probe_fraction: float = 1.0
    """With ``init_lr = "probe"``: the share of procedural draws that start from the probe; the
    others keep the draw's own start (LR and batch size), so one policy trains from both the
    probe's LR and from LRs it is given. Which draws probe is fixed by the episode seed."""
    schedule: str = "constant"
    """A schedule fixed in advance under the LR the agent chooses (:class:`rlagent.hparams.Envelope`):
    ``constant``, none; ``cosine``, each epoch trains at the chosen LR × half a cosine over the
    episode, from 1 in the first epoch to ``schedule_floor`` in the last. The agent sees and moves
    the chosen LR, so holding it follows the cosine and its moves are deviations from it."""
    schedule_floor: float = 0.01
    """With ``schedule = "cosine"``: the multiplier of the last epoch, in (0, 1]."""

    def __post_init__(self) -> None:
        if self.epochs is not None:
            _check_type("episode.epochs", self.epochs, (int,), "an integer >= 1")
            if self.epochs < 1:
                raise SpecError("episode.epochs", self.epochs, "an integer >= 1")
        if self.action not in ACTIONS:
            raise SpecError("episode.action", self.action, f"one of {ACTIONS}")
        if self.lr_range is not None:
            check_range("episode.lr_range", self.lr_range, positive=True)
            object.__setattr__(self, "lr_range", tuple(float(v) for v in self.lr_range))
        if self.batch_size_range is not None:
            check_range("episode.batch_size_range", self.batch_size_range, positive=True, integer=True)
            object.__setattr__(self, "batch_size_range", tuple(self.batch_size_range))
        if self.init_lr not in ("sample", "probe"):
            allowed = "a number > 0, 'sample' or 'probe'"
            _check_type("episode.init_lr", self.init_lr, (int, float), allowed)
            if not (self.init_lr > 0 and math.isfinite(self.init_lr)):
                raise SpecError("episode.init_lr", self.init_lr, allowed)
            if self.lr_range and not self.lr_range[0] <= self.init_lr <= self.lr_range[1]:
                raise SpecError("episode.init_lr", self.init_lr, f"a value inside lr_range {self.lr_range}")
        _check_type("episode.probe_fraction", self.probe_fraction, (int, float), "a number in [0, 1]")
        if not 0.0 <= self.probe_fraction <= 1.0:
            raise SpecError("episode.probe_fraction", self.probe_fraction, "a number in [0, 1]")
        if self.probe_fraction != 1.0 and self.init_lr != "probe":
            raise SpecError(
                "episode.probe_fraction", self.probe_fraction, '1 unless init_lr = "probe" (it splits probe starts)'
            )
        if self.schedule not in SCHEDULES:
            raise SpecError("episode.schedule", self.schedule, f"one of {SCHEDULES}")
        _check_type("episode.schedule_floor", self.schedule_floor, (int, float), "a number in (0, 1]")
        if not 0.0 < self.schedule_floor <= 1.0:
            raise SpecError("episode.schedule_floor", self.schedule_floor, "a number in (0, 1]")
        if self.init_batch_size != "sample":
            _check_type("episode.init_batch_size", self.init_batch_size, (int,), "an integer >= 1 or 'sample'")
            if self.init_batch_size < 1:
                raise SpecError("episode.init_batch_size", self.init_batch_size, "an integer >= 1 or 'sample'")
            bs = self.batch_size_range
            if bs and not bs[0] <= self.init_batch_size <= bs[1]:
                raise SpecError(
                    "episode.init_batch_size", self.init_batch_size, f"a value inside batch_size_range {bs}"
                )

    def envelope(self, epochs: int) -> Envelope | None:
        """The schedule under the chosen LR for a run of ``epochs`` epochs; None for ``constant``."""
        return None if self.schedule == "constant" else Envelope(self.schedule, epochs, float(self.schedule_floor))

    def probes(self, episode_seed: int) -> bool:
        """Whether a procedural draw with this episode seed starts from the probe's LR."""
        if self.init_lr != "probe":
            return False
        if self.probe_fraction >= 1.0:
            return True
        # A stream of its own: the draw (and the run) from the same seed are unchanged by it.
        return bool(np.random.default_rng([int(episode_seed), _PROBE_STREAM]).random() < self.probe_fraction)


@dataclass(frozen=True)
class RewardSpec:
    """What the agent is paid for."""

    mode: str = "val_acc"
    """``val_acc``: validation accuracy every epoch (area under the curve);
    ``val_acc_change``: its change over each epoch (sums to final − initial: the final accuracy
    as a dense reward; use γ = 1);
    ``best_improvement``: increase of the best validation accuracy (sums to the final best);
    ``final``: validation accuracy at the last epoch only."""
    cost_weight: float = 0.0
    """Subtracted per epoch: ``cost_weight × cost``; 0 ignores compute."""
    cost_unit: str = "steps"
    """``steps``: optimiser steps / 100 (deterministic); ``seconds``: epoch wall time."""
    reversal_cost: float = 0.0
    """Subtracted for each epoch whose LR move reverses the previous epoch's (a raise right after
    a cut or a cut right after a raise; a hold, or a move clipping cancelled, is no move)."""

    def __post_init__(self) -> None:
        if self.mode not in REWARDS:
            raise SpecError("reward.mode", self.mode, f"one of {REWARDS}")
        _check_weight("reward.cost_weight", self.cost_weight)
        _check_weight("reward.reversal_cost", self.reversal_cost)
        if self.cost_unit not in COST_UNITS:
            raise SpecError("reward.cost_unit", self.cost_unit, f"one of {COST_UNITS}")


@dataclass(frozen=True)
class WorkloadSet:
    """Which workloads the agent trains on and which it must never see."""

    train: tuple[str, ...] | ProceduralSpec
    """Workloads episodes are drawn from during training: a list of names, or a sampler that
    draws a fresh workload per episode (``{ sampler = "procedural", exclude = {...} }``)."""
    heldout: tuple[str, ...] = ()
    """Workloads kept for evaluation only; never trained on."""
    define: Mapping[str, WorkloadSpec] = field(default_factory=dict)
    """Workloads defined in the spec itself (built-ins are always known)."""

    def __post_init__(self) -> None:
        if isinstance(self.train, Mapping):
            object.__setattr__(self, "train", _build(ProceduralSpec, self.train, "workloads.train"))
        names = ("heldout",) if isinstance(self.train, ProceduralSpec) else ("train", "heldout")
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                allowed = "a list of workload names" + (" or { sampler = 'procedural' }" if name == "train" else "")
                raise SpecError(f"workloads.{name}", value, allowed)
            object.__setattr__(self, name, tuple(value))
        if not self.train:
            raise SpecError("workloads.train", list(self.train), "at least one workload")
        known = sorted(set(BUILTIN_WORKLOADS) | set(self.define))
        for name in names:
            for w in getattr(self, name):
                if w not in known:
                    raise SpecError(f"workloads.{name}", w, f"a known workload: {known}")
        overlap = sorted(set(self.train_names) & set(self.heldout))
        if overlap:
            raise SpecError("workloads.heldout", overlap, "no workload that is also in workloads.train")

    @property
    def sampler(self) -> ProceduralSpec | None:
        """The training set's sampler, or None when it is a list of names."""
        return self.train if isinstance(self.train, ProceduralSpec) else None

    @property
    def train_names(self) -> tuple[str, ...]:
        """The named training workloads (none when a sampler draws them)."""
        return () if isinstance(self.train, ProceduralSpec) else self.train

    def get(self, name: str) -> WorkloadSpec:
        """Look a workload up among the spec's definitions, then the built-ins."""
        if name in self.define:
            return self.define[name]
        if name in BUILTIN_WORKLOADS:
            return BUILTIN_WORKLOADS[name]
        known = sorted(set(BUILTIN_WORKLOADS) | set(self.define))
        raise SpecError("workload", name, f"a known workload: {known}")


@dataclass(frozen=True)
class EnvSpec:
    """One environment spec file."""

    workloads: WorkloadSet
    """Training and held-out workloads."""
    name: str = "custom"
    """Short name of the spec."""
    description: str = ""
    """What this spec is for."""
    seed: int = 0
    """Default seed of training and benchmark runs made from this spec."""
    episode: EpisodeSpec = field(default_factory=EpisodeSpec)
    """Episode length, action space, ranges and initial hyperparameters."""
    reward: RewardSpec = field(default_factory=RewardSpec)
    """Reward mode and compute-cost weight."""

    def __post_init__(self) -> None:
        _check_type("seed", self.seed, (int,), "an integer")
        _check_type("name", self.name, (str,), "a string")
        sampler = self.workloads.sampler
        if sampler is not None and sampler.start_lr_range is not None:
            low, high = self.episode.lr_range or DEFAULT_LR_RANGE
            if not low <= sampler.start_lr_range[0] <= sampler.start_lr_range[1] <= high:
                raise SpecError(
                    "workloads.train.start_lr_range",
                    list(sampler.start_lr_range),
                    f"a range inside the episode's LR range [{low:g}, {high:g}]",
                )

    def workload(self, name: str) -> WorkloadSpec:
        """The workload called ``name``, with this spec's episode overrides applied."""
        return self._with_episode(self.workloads.get(name))

    def draw(self, seed: int) -> Task:
        """A workload drawn by the training set's sampler from ``seed``, episode overrides applied.

        The draw's initial LR and batch size lie in the spec's ranges (``episode.lr_range`` /
        ``batch_size_range`` when set). Raises :class:`SpecError` if the training set is a list.
        """
        sampler = self.workloads.sampler
        if sampler is None:
            raise SpecError("workloads.train", list(self.workloads.train), "a sampler (this spec names its workloads)")
        task = sample_task(
            seed,
            sampler,
            lr_range=self.episode.lr_range or DEFAULT_LR_RANGE,
            batch_size_range=self.episode.batch_size_range or DEFAULT_BATCH_SIZE_RANGE,
        )
        return dataclasses.replace(task, workload=self._with_episode(task.workload))

    def _with_episode(self, spec: WorkloadSpec) -> WorkloadSpec:
        changes: dict[str, Any] = {}
        if self.episode.epochs is not None:
            changes["epochs"] = self.episode.epochs
            if spec.lr_shift is not None:  # the shift stays at its share of the run, inside it
                at = round(spec.lr_shift[0] * self.episode.epochs / spec.epochs)
                changes["lr_shift"] = (max(1, min(self.episode.epochs - 1, at)), spec.lr_shift[1])
        if self.episode.lr_range is not None:
            changes["lr_range"] = self.episode.lr_range
        if self.episode.batch_size_range is not None:
            changes["batch_size_range"] = self.episode.batch_size_range
        return dataclasses.replace(spec, **changes) if changes else spec

    def to_dict(self) -> dict[str, Any]:
        """A plain-data form (JSON/TOML-able) that :func:`spec_from_dict` reads back.

        Fields added after the first records were made are left out while off (:data:`_OFF`: the
        hidden LR scale and shift, the sampler's ``first`` and ``start_lr_range``, the reward's
        ``reversal_cost``, the episode's LR envelope), so a spec that does not use them reads as it
        did before they existed: records made with it (checkpoints, benchmark trial files) still
        match.
        """
        data = dataclasses.asdict(self)
        train = data["workloads"]["train"]
        _drop_off(data["reward"], _OFF["reward"])
        _drop_off(data["episode"], _OFF["episode"], together=True)
        if isinstance(train, dict):
            _drop_off(train, _OFF["train"])
        for workload in data["workloads"].get("define", {}).values():
            _drop_off(workload, _OFF["workload"])
        return data


_OFF: dict[str, dict[str, Any]] = {
    "train": {
        "lr_scale_range": (1.0, 1.0), "lr_shift_range": (1.0, 1.0), "first": "dataset",
        "start_lr_range": None, "probe_sees_lr_scale": True, "lr_scale_tail": (0.0, 1.0, 1.0),
    },
    "workload": {"lr_scale": 1.0, "probe_lr_scale": None, "lr_shift": None},
    "reward": {"reversal_cost": 0.0},
    "episode": {"schedule": "constant", "schedule_floor": 0.01},
}  # fmt: skip
"""Fields :meth:`EnvSpec.to_dict` leaves out at these values, by table (the episode's only all
together: a cosine's floor is recorded even at its default)."""


def _drop_off(table: dict[str, Any], off: Mapping[str, Any], *, together: bool = False) -> None:
    def is_off(key: str) -> bool:
        value = table[key]
        return (tuple(value) if isinstance(value, list) else value) == off[key]

    present = [key for key in off if key in table]
    if together and not all(is_off(key) for key in present):
        return
    for key in present:
        if is_off(key):
            del table[key]


def _build(cls: type, data: Any, where: str) -> Any:
    """Instantiate a spec dataclass from a TOML table, refusing unknown and missing keys."""
    if not isinstance(data, Mapping):
        raise SpecError(where or "spec", data, "a table")
    fields_ = {f.name: f for f in dataclasses.fields(cls)}
    prefix = f"{where}." if where else ""
    for key in data:
        if key not in fields_:
            raise SpecError(
                f"{prefix}{key}", data[key], f"a known field of [{where or 'top level'}]: {sorted(fields_)}"
            )
    for name, f in fields_.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in data:
            raise SpecError(f"{prefix}{name}", None, "a value (this field is required)")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = tuple(value) if isinstance(value, list) else value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # e.g. a table where a number was expected
        raise SpecError(where or "spec", dict(data), f"valid fields ({exc})") from exc


def spec_from_dict(data: Mapping[str, Any]) -> EnvSpec:
    """Validate a parsed spec (e.g. a TOML document) and build an :class:`EnvSpec`."""
    if not isinstance(data, Mapping):
        raise SpecError("spec", data, "a table")
    data = dict(data)
    sections = {"episode": EpisodeSpec, "reward": RewardSpec}
    for key, cls in sections.items():
        if key in data:
            data[key] = _build(cls, data[key], key)
    if "workloads" not in data:
        raise SpecError("workloads", None, "a [workloads] table with a 'train' list")
    wl = data["workloads"]
    if not isinstance(wl, Mapping):
        raise SpecError("workloads", wl, "a table")
    wl = dict(wl)
    define = wl.get("define", {})
    if not isinstance(define, Mapping):
        raise SpecError("workloads.define", define, "a table of workload tables")
    defined = {}
    for name, table in define.items():
        if not isinstance(table, Mapping):
            raise SpecError(f"workloads.define.{name}", table, "a table")
        defined[name] = _build(WorkloadSpec, {"name": name, **table}, f"workloads.define.{name}")
        check_factory_args(defined[name])
    wl["define"] = defined
    data["workloads"] = _build(WorkloadSet, wl, "workloads")
    return _build(EnvSpec, data, "")


def load_spec(path: str | Path) -> EnvSpec:
    """Read and validate a spec file.

    ``path`` is a file path or the name of a spec shipped with rlagent (``"default"``). A spec
    may start from another with ``extends = "<file or shipped name>"`` (a path relative to the
    file): its tables are merged key by key into the other's, any other value replaces the
    other's. ``name`` defaults to the file's stem, never to the extended spec's name.
    """
    return spec_from_dict(_read_spec(resolve_spec_path(path), ()))


def _read_spec(file: Path, chain: tuple[Path, ...]) -> dict[str, Any]:
    """The spec file's table with its ``extends`` chain merged in (``chain``: the files extending it)."""
    try:
        data = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(str(file), "<file>", f"valid TOML ({exc})") from exc
    data.setdefault("name", file.stem)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise SpecError(f"{file.name}: extends", base, "a spec file path or a shipped spec name")
    relative = file.parent / base
    base_file = resolve_spec_path(relative if relative.is_file() else base)
    if base_file.resolve() in (f.resolve() for f in (*chain, file)):
        raise SpecError(f"{file.name}: extends", base, "a spec that does not extend this one (a cycle)")
    return _merged(_read_spec(base_file, (*chain, file)), data)


def _merged(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` merged into ``base``: tables key by key, any other value replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def data_dir(kind: str) -> Path:
    """Where the shipped ``envs/`` or ``policies/`` folder lies (wheel or source checkout)."""
    packaged = Path(str(resources.files("rlagent"))) / "_data" / kind
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / kind


def resolve_spec_path(path: str | Path) -> Path:
    """A spec file path, or a shipped spec by name."""
    p = Path(path)
    if p.is_file():
        return p
    shipped = data_dir("envs") / f"{p.stem}.toml"
    if p.suffix in ("", ".toml") and p.parent == Path(".") and shipped.is_file():
        return shipped
    names = sorted(f.stem for f in data_dir("envs").glob("*.toml"))
    raise SpecError("spec", str(path), f"an existing .toml file or a shipped spec name {names}")
