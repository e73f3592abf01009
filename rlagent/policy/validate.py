"""Score a policy on validation draws of its training distribution: the one basis for selection.

Choices made while building a policy (reward, features, PPO settings, which checkpoint) are
compared here, on fresh draws from the spec's procedural sampler — never on the held-out suite,
whose workloads stay unseen until the final benchmark, and never on a test split. The draws'
episode seeds come from their own stream (:func:`validation_seeds`), apart from the seeds PPO
trains on. Each draw is run twice: once with the policy and once at its initial LR and batch
size held constant, so a score says how much the policy adds on that draw. (For a policy trained
under an LR envelope, holding the LR follows the envelope: the second run is that schedule.)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import multiprocessing as mp
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from rlagent.config import EnvSpec, load_spec
from rlagent.env import HyperTuneEnv, hold_action
from rlagent.errors import SpecError, is_int, is_number
from rlagent.features import FEATURE_NAMES, move_sign
from rlagent.policy._integrity import DIGEST_FIELD, read_json
from rlagent.policy.controller import policy_episode
from rlagent.policy.file import JSON_NAME, SavedPolicy, load_policy
from rlagent.pool.executor import ProcessExecutor

logger = logging.getLogger(__name__)
T = TypeVar("T")

_VALIDATION_STREAM = 0x5A11D
"""Mixed into the spec's seed to give validation draws a seed stream of their own."""


def seed_stream(spec: EnvSpec, stream: int, n: int, first: int = 0) -> list[int]:
    """Episode seeds ``first`` .. ``first + n - 1`` of the spec's seed stream ``stream``: fixed for a
    spec, and apart from PPO's and from other streams'. Seed ``i`` is the same whatever ``n``."""
    if not is_int(n) or n < 1:
        raise SpecError("n_draws", n, "an integer >= 1")
    if not is_int(first) or first < 0:
        raise SpecError("first_draw", first, "an integer >= 0")
    rng = np.random.default_rng([spec.seed, stream])
    return [int(s) for s in rng.integers(2**31 - 1, size=first + n)[first:]]


def validation_seeds(spec: EnvSpec, n: int, first: int = 0) -> list[int]:
    """Episode seeds of validation draws ``first`` .. ``first + n - 1`` (:func:`seed_stream`): draw
    ``i`` is the same whatever ``n``, so disjoint ranges are disjoint draws (choose on one range,
    confirm on the next)."""
    return seed_stream(spec, _VALIDATION_STREAM, n, first)


def hide_mask(hide: Sequence[str]) -> np.ndarray:
    """Indices of the observation features named in ``hide`` (for ablations that blind a policy)."""
    unknown = sorted(set(hide) - set(FEATURE_NAMES))
    if unknown:
        raise SpecError("hide", unknown, f"names among FEATURE_NAMES {list(FEATURE_NAMES)}")
    return np.array([FEATURE_NAMES.index(n) for n in hide], dtype=np.int64)


@dataclass
class DrawResult:
    """One validation draw run with the policy and with its start held constant."""

    seed: int
    workload: str
    epochs: int
    val_acc: float
    """Final validation accuracy with the policy."""
    constant_val_acc: float
    """Final validation accuracy at the draw's initial LR and batch size, unchanged (under the
    policy's LR envelope, if it has one)."""
    diverged: bool
    lr_moves: int
    """LR changes the policy made with another epoch after them (:func:`lr_reversals`)."""
    lr_reversals: int
    """Of those, the ones its next change went back on (×2 then ×½: dithering)."""
    rollbacks: int = 0
    """Epochs the policy started from its run's best epoch instead of the last (``discrete-rollback``)."""


@dataclass
class ValidationReport:
    """Scores of a policy over validation draws."""

    draws: list[DrawResult] = field(default_factory=list)

    @property
    def mean_val_acc(self) -> float:
        return statistics.fmean(d.val_acc for d in self.draws)

    @property
    def mean_gain(self) -> float:
        """Mean over draws of (policy − constant start) final validation accuracy."""
        return statistics.fmean(d.val_acc - d.constant_val_acc for d in self.draws)

    @property
    def reversal_share(self) -> float:
        """Share of the policy's LR moves that its next move went back on (0 with no moves)."""
        moves = sum(d.lr_moves for d in self.draws)
        return sum(d.lr_reversals for d in self.draws) / moves if moves else 0.0

    @property
    def win_rate(self) -> float:
        """Share of draws where the policy ends above the constant start."""
        return statistics.fmean(float(d.val_acc > d.constant_val_acc) for d in self.draws)

    def summary(self) -> dict[str, Any]:
        return {
            "draws": len(self.draws),
            "mean_val_acc": round(self.mean_val_acc, 4),
            "mean_gain_over_constant": round(self.mean_gain, 4),
            "win_rate": round(self.win_rate, 3),
            "lr_reversal_share": round(self.reversal_share, 3),
            "diverged": sum(d.diverged for d in self.draws),
            "rollbacks": sum(d.rollbacks for d in self.draws),
        }

    def save(self, path: str | Path, policy: str | Path | None = None) -> None:
        """Write the draws as JSON: with ``policy``, ``{"policy": its digest, "draws": [...]}``
        (:func:`policy_digest`), so the report stands for that policy wherever it is copied;
        without, a list of :class:`DrawResult` objects."""
        draws = [asdict(d) for d in self.draws]
        doc: Any = draws if policy is None else {"policy": policy_digest(policy), "draws": draws}
        Path(path).write_text(json.dumps(doc, indent=1))

    @classmethod
    def load_current(cls, path: str | Path, policy: str | Path, seeds: Sequence[int]) -> ValidationReport | None:
        """The report saved at ``path`` if it still stands for ``policy`` on these draws, else None.

        It stands when it holds exactly ``seeds`` (:func:`validation_seeds`) in order and was made
        by this policy: the digest it records equals the policy's (:func:`policy_digest`), or, for a
        report that records none (a plain list), it is newer than the policy's ``policy.json``. So a
        retrained policy, another number of draws or another spec seed is validated again rather
        than read back, while a policy copied elsewhere (new file times) keeps its reports. A file
        that does not read as a report is validated again, with a warning.
        """
        path, policy_json = Path(path), Path(policy) / JSON_NAME
        if not path.is_file() or not policy_json.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
            if isinstance(doc, dict):
                if doc.get("policy") != policy_digest(policy):
                    return None
                doc = doc["draws"]
            elif path.stat().st_mtime < policy_json.stat().st_mtime:
                return None
            draws = [DrawResult(**d) for d in doc]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            logger.warning("%s is not a validation report (%s); validating again", path, exc)
            return None
        if [d.seed for d in draws] != list(seeds):
            return None
        return cls(draws)


def policy_digest(policy: str | Path) -> str:
    """What identifies a saved policy's content: the SHA-256 its ``policy.json`` records (over
    everything in it, the weights' own digest included), or, for a file that records none, the
    SHA-256 of the file's bytes."""
    path = Path(policy) / JSON_NAME
    recorded = read_json(path).get(DIGEST_FIELD)
    return str(recorded) if recorded else hashlib.sha256(path.read_bytes()).hexdigest()


def parse_start(text: str) -> dict[str, Any]:
    """``"0.1,16"`` -> ``{"lr": 0.1, "batch_size": 16}``, the ``start`` of :func:`validate_policy`;
    ``"0.1,16,check"`` adds ``"start_check": True`` (the env's reset option of that name).

    Raises:
        SpecError: Naming ``start`` and the text, unless it is ``LR,BS`` or ``LR,BS,check`` with
            LR > 0, BS >= 1.
    """
    allowed = "LR,BS or LR,BS,check with LR > 0 and BS an integer >= 1 (e.g. 0.1,16)"
    parts = text.split(",")
    check = len(parts) == 3 and parts[2] == "check"
    try:
        lr_text, bs_text = parts[:2] if check else parts
        lr, bs = float(lr_text), int(bs_text)
    except ValueError:
        raise SpecError("start", text, allowed) from None
    if not (math.isfinite(lr) and lr > 0 and bs >= 1):
        raise SpecError("start", text, allowed)
    return {"lr": lr, "batch_size": bs, **({"start_check": True} if check else {})}


START_KEYS = ("lr", "batch_size", "start_check", "probe_divisor")
"""The env reset options a validation ``start`` may set on every draw."""


def check_start(start: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy of a validation ``start`` (reset options of every draw), refused unless its keys
    are among ``START_KEYS``."""
    start = dict(start or {})
    unknown = sorted(set(start) - set(START_KEYS))
    if unknown:
        raise SpecError("start", unknown, f"keys among {sorted(START_KEYS)}")
    return start


def start_suffix(start: Mapping[str, Any] | None) -> str:
    """The file-name suffix of results from that start: ``""``, or e.g. ``"__start-0.1-16"``,
    ``"__start-0.1-16-check"``, ``"__start-probe-16"``, ``"__start-probe-own"`` (the draw's own
    batch size), ``"__start-probe-own-div30"`` (``probe_divisor`` 30)."""
    if not start:
        return ""
    lr = start.get("lr", "own")
    check = "-check" if start.get("start_check") else ""
    divisor = f"-div{start['probe_divisor']:g}" if "probe_divisor" in start else ""
    return f"__start-{lr if isinstance(lr, str) else f'{lr:g}'}-{start.get('batch_size', 'own')}{check}{divisor}"


def compare_training_seeds(candidate: Sequence[float], baseline: Sequence[float]) -> dict[str, Any]:
    """Difference of two variants' scores, with an error bar from their training seeds.

    Each entry is one training run's mean final validation accuracy on the same draws. Pairing by
    draw removes the draws' noise but not the training run's: two runs that see the same
    information can differ by several points (policies/auc/README.md), so the standard error
    is Welch's, across training seeds: ``sqrt(var_c / n_c + var_b / n_b)``.

    Returns:
        ``{"difference": mean(candidate) - mean(baseline), "stderr": that error (None unless both
        sides have two seeds or more), "seeds": (n_c, n_b)}``.

    Raises:
        SpecError: If either side is empty or holds a value that is not a finite number.
    """
    sides = {"candidate": candidate, "baseline": baseline}
    for name, values in sides.items():
        if len(values) == 0:
            raise SpecError(name, list(values), "at least one training seed's score")
        for v in values:
            if not is_number(v) or not np.isfinite(v):
                raise SpecError(name, v, "finite numbers (one mean validation accuracy per training seed)")
    c, b = np.asarray(candidate, dtype=float), np.asarray(baseline, dtype=float)
    stderr = None
    if len(c) > 1 and len(b) > 1:
        stderr = float(np.sqrt(c.var(ddof=1) / len(c) + b.var(ddof=1) / len(b)))
    return {"difference": float(c.mean() - b.mean()), "stderr": stderr, "seeds": (len(c), len(b))}


def lr_reversals(lrs: Sequence[float]) -> tuple[int, int]:
    """``(moves, reversals)`` of a run's LRs in order (its start, then each epoch's): ``moves``
    counts the changes that another change could follow (all but a last one), ``reversals`` those
    that the next change went the other way on — a ×2 then a ×½, or a ×¼ then a ×2."""
    signs = [move_sign(a, b) for a, b in zip(lrs, lrs[1:])]
    pairs = list(zip(signs, signs[1:]))
    return sum(1 for a, _ in pairs if a), sum(1 for a, b in pairs if a and b == -a)


def _episode(
    env: HyperTuneEnv, seed: int, act: Any, start: dict[str, Any]
) -> tuple[float, bool, str, int, list[float], int]:
    obs, info = env.reset(seed=seed, options=start)
    lrs, rollbacks, done = [float(info["lr"])], 0, False
    while not done:
        obs, _, done, _, info = env.step(act(obs))
        lrs.append(float(info["lr"]))
        rollbacks += info.get("rolled_back_to") is not None
    return float(info["val_acc"]), bool(info["diverged"]), str(info["workload"]), int(info["epoch"]), lrs, rollbacks


def _run_draw(policy_dir: str, spec: EnvSpec, seed: int, hide: tuple[str, ...], start: dict[str, Any]) -> DrawResult:
    torch.set_num_threads(1)
    policy: SavedPolicy = load_policy(policy_dir)
    mask = hide_mask(hide)
    # The policy's own action set and LR envelope (draws are the same either way): a spec's
    # policies are judged beside others, e.g. a continuous candidate against a discrete incumbent.
    spec = replace(spec, episode=policy_episode(policy, spec.episode))
    env = HyperTuneEnv(spec)
    actor = policy.actor(deterministic=True)

    def act(obs: np.ndarray) -> np.ndarray:
        obs = obs.copy()
        obs[mask] = 0.0
        return actor(obs)

    keep = hold_action(spec.episode.action)
    val_acc, diverged, name, epochs, lrs, rollbacks = _episode(env, seed, act, start)
    constant = _episode(env, seed, lambda _obs: keep, start)[0]
    return DrawResult(seed, name, epochs, val_acc, constant, diverged, *lr_reversals(lrs), rollbacks)


def map_draws(run: Callable[..., T], args: Sequence[tuple[Any, ...]], n_workers: int) -> list[T]:
    """``[run(*a) for a in args]``, in this process or in ``n_workers`` worker processes (one per
    draw at a time; forkserver or spawn, never fork). An interrupt stops the workers."""
    if n_workers <= 1:
        return [run(*a) for a in args]
    ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
    with ProcessExecutor(max_workers=n_workers, mp_context=ctx) as pool:
        return list(pool.map(run, *zip(*args)))


def validate_policy(
    policy: str | Path,
    spec: EnvSpec | str | Path = "default",
    *,
    n_draws: int = 24,
    first_draw: int = 0,
    n_workers: int = 1,
    hide: Sequence[str] = (),
    start: Mapping[str, Any] | None = None,
    store: str | Path | None = None,
) -> ValidationReport:
    """Run a saved policy on ``n_draws`` validation draws of the spec's procedural training set.

    Args:
        policy: Saved policy directory.
        spec: The spec the policy was trained on; it must draw its training set from a sampler.
        n_draws: Number of draws (episode seeds from :func:`validation_seeds`).
        first_draw: Index of the first of them in the validation stream: ``first_draw=24``
            scores draws 24.. that a choice made on draws 0..23 has not seen.
        n_workers: Processes running draws side by side, one torch thread each.
        hide: Feature names zeroed before the policy sees them (a policy trained blind to them).
        start: Initial ``lr`` and/or ``batch_size`` for every draw instead of the draw's own
            (e.g. ``{"lr": 0.1}``: how fast the policy recovers from a too-high LR); the
            constant run then holds this start. ``"start_check": True`` checks it against the
            LR probe first (the env's reset option).
        store: A JSON file for the report: one already there that still stands for this policy
            and these draws (:meth:`ValidationReport.load_current`) is read back instead of
            running the draws; otherwise the new report is saved there. Name one file per
            ``hide`` and ``start``: neither is recorded in it.

    Returns:
        Per-draw results and their means.
    """
    spec = spec if isinstance(spec, EnvSpec) else load_spec(spec)
    if spec.workloads.sampler is None:
        raise SpecError("workloads.train", list(spec.workloads.train_names), "a procedural sampler to draw from")
    hide_mask(hide)
    start = check_start(start)
    seeds = validation_seeds(spec, n_draws, first_draw)
    if store is not None:
        stored = ValidationReport.load_current(store, policy, seeds)
        if stored is not None:
            logger.info("validation of %s read back from %s", policy, store)
            return stored
    draws = map_draws(_run_draw, [(str(policy), spec, s, tuple(hide), start) for s in seeds], n_workers)
    for d in draws:
        logger.info("draw %d %s: policy %.3f, constant %.3f", d.seed, d.workload, d.val_acc, d.constant_val_acc)
    report = ValidationReport(draws)
    if store is not None:
        report.save(store, policy)
    return report
