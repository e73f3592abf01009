"""Ablations of the tuning policy, selected on validation draws of the training distribution only.

    python scripts/ablate_policy.py --timesteps 6000 --out runs/ablation
    python scripts/ablate_policy.py --variants base,reward-final --timesteps 6000 --out runs/ablation
    python scripts/ablate_policy.py --variants base,reward-final --start 0.1,16 --out runs/ablation
    python scripts/ablate_policy.py --variants base,gamma-0.9 --seeds 0,1,2 --out runs/ablation

Each variant trains a policy with PPO (same seeds, same env steps, the local process pool) on
the spec's procedural training set, changed in one respect, then runs it on validation draws
(:mod:`rlagent.policy.validate`: fresh draws from the same sampler, their own seed stream; the
held-out suite and test splits are never touched). A variant already trained under ``--out``
is not trained again, and its stored validation is reused when it covers the same draws.
``--start LR,BS`` runs every validation draw from that initial LR and batch size instead of the
draw's own (recovery from a bad start). Prints one JSON line per variant and
writes ``ablation.md`` (``ablation__start-LR-BS.md`` with ``--start``).

``--seeds`` trains each variant once per seed (under ``OUT/VARIANT/seed-N``). Two runs that see
the same information differ by several points after 6k steps, so a difference to ``base`` is
reported with its error across training seeds (:func:`rlagent.policy.validate.compare_training_seeds`);
with one seed there is none, and the difference is no evidence.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from stable_baselines3.common.vec_env import VecEnvWrapper

from rlagent.config import EnvSpec, load_spec
from rlagent.errors import SpecError
from rlagent.policy.train import PPOSettings, TrainConfig, train_policy
from rlagent.policy.validate import compare_training_seeds, hide_mask, parse_start, start_suffix, validate_policy
from rlagent.pool import make_pool

HISTORY = ("lr_rel_start", "loss_rel_start", "train_loss_slope", "val_acc_slope", "last_lr_action", "last_bs_action")
"""The features added in policy format 3 (what the run looked like over time, and where the LR went)."""

VARIANTS: dict[str, dict] = {
    "base": {},
    "reward-final": {"reward": "final"},
    "reward-best": {"reward": "best_improvement"},
    "reward-change": {"reward": "val_acc_change", "gamma": 1.0},
    "no-history": {"hide": HISTORY},
    "gamma-0.9": {"gamma": 0.9},
}
"""One change each from ``base`` (reward = validation accuracy every epoch, gamma 0.99, all features)."""


class HideFeatures(VecEnvWrapper):
    """Zero some observation features, so that PPO trains a policy blind to them."""

    def __init__(self, venv, hide: tuple[str, ...]) -> None:
        super().__init__(venv)
        self.mask = hide_mask(hide)

    def reset(self):
        obs = self.venv.reset()
        obs[:, self.mask] = 0.0
        return obs

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        obs[:, self.mask] = 0.0
        for info in infos:
            if "terminal_observation" in info:
                info["terminal_observation"][self.mask] = 0.0
        return obs, rewards, dones, infos


def variant_spec(spec: EnvSpec, change: dict) -> EnvSpec:
    if "reward" not in change:
        return spec
    return dataclasses.replace(spec, reward=dataclasses.replace(spec.reward, mode=change["reward"]))


def run_variant(name: str, seed: int, spec: EnvSpec, args: argparse.Namespace) -> dict:
    change = VARIANTS[name]
    folder = Path(args.out) / name / f"seed-{seed}"
    policy_dir = folder / "policy"
    vspec = variant_spec(spec, change)
    hide = tuple(change.get("hide", ()))
    wall = None
    if not (policy_dir / "policy.json").is_file():
        config = TrainConfig(
            spec=vspec, timesteps=args.timesteps, n_envs=args.n_envs, devices="cpu", seed=seed,
            out=policy_dir, run_dir=folder / "run", progress=False, checkpoint_every=args.timesteps,
            ppo=PPOSettings(gamma=change.get("gamma", 0.99)),
        )  # fmt: skip
        venv = None
        if hide:
            venv = HideFeatures(make_pool(vspec, n_envs=args.n_envs, devices="cpu"), hide)
        start = time.perf_counter()
        train_policy(config, venv=venv)
        wall = round(time.perf_counter() - start, 1)
    report = validate_policy(
        policy_dir, spec, n_draws=args.draws, n_workers=args.n_envs, hide=hide, start=args.start,
        store=folder / f"validation{args.suffix}.json",
    )  # fmt: skip
    return {
        "variant": name, "seed": seed, "change": change, "timesteps": args.timesteps, "train_seconds": wall,
        **report.summary(),
    }  # fmt: skip


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; raises ValueError naming the bad entry."""
    seeds = []
    for part in text.split(","):
        if not part.strip().isdigit():
            raise ValueError(f"--seeds: {part.strip()!r} in {text!r} is not a non-negative integer")
        seeds.append(int(part))
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: {text!r} repeats a seed")
    return seeds


def table(rows: list[dict]) -> list[str]:
    """Markdown rows: each variant's mean over its training seeds, and its difference to ``base``."""
    by_variant: dict[str, list[dict]] = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
    base = [r["mean_val_acc"] for r in by_variant.get("base", [])]
    lines = [
        "| variant | change | seeds | mean final val acc (per seed) | gain over constant start | vs base ± s.e. over seeds "
        "| diverged |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, runs in by_variant.items():
        accs = [r["mean_val_acc"] for r in runs]
        versus = "-"
        if base and name != "base":
            cmp = compare_training_seeds(accs, base)
            versus = f"{cmp['difference']:+.4f}" + (
                f" ± {cmp['stderr']:.4f}" if cmp["stderr"] is not None else " (no error bar: one seed)"
            )
        lines.append(
            f"| {name} | {runs[0]['change'] or '-'} | {len(runs)} | {np.mean(accs):.4f} ({', '.join(f'{a:.3f}' for a in accs)}) "
            f"| {np.mean([r['mean_gain_over_constant'] for r in runs]):+.4f} | {versus} | {sum(r['diverged'] for r in runs)} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="default")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, among {list(VARIANTS)}")
    parser.add_argument("--timesteps", type=int, default=6000)
    parser.add_argument("--n-envs", type=int, default=2)
    parser.add_argument("--draws", type=int, default=24)
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated (e.g. 0,1,2)")
    parser.add_argument("--out", default="runs/ablation")
    parser.add_argument("--start", default=None, metavar="LR,BS", help="validate from this LR and batch size")
    args = parser.parse_args()
    try:
        start = parse_start(args.start) if args.start else None
    except SpecError as err:
        parser.error(f"--{err}")
    args.start, args.suffix = start, start_suffix(start)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = load_spec(args.spec)
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose among {list(VARIANTS)}")
    try:
        seeds = parse_seeds(args.seeds)
    except ValueError as err:
        parser.error(str(err))
    rows = []
    for name in names:
        for seed in seeds:
            row = run_variant(name, seed, spec, args)
            print(json.dumps(row), flush=True)
            rows.append(row)
    where = f", all from LR {start['lr']:g} / batch {start['batch_size']}" if start else ""
    lines = [
        f"Validation draws: {args.draws} from `{spec.name}`'s sampler{where}; {args.timesteps} env steps per "
        f"training run, seeds {seeds}.",
        "",
        *table(rows),
    ]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"ablation{args.suffix}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
