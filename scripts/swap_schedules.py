"""Do the policy's reactions fit the run they were made in? Swap its schedules between seeds.

    rlagent bench --spec default --policy policies/default --seeds 5 --methods policy --results runs/b
    python scripts/swap_schedules.py runs/b --n-workers 2 --out runs/b/swaps.json

Reads the ``policy`` results of a benchmark (one closed-loop run per workload and seed) and
replays open-loop, on every workload and seed: each seed's schedule of LRs and batch sizes (its own
gives the policy's run again; another seed's is what the policy chose on another run of the same
workload) and their per-epoch geometric mean (the bench's ``open-loop``). Per workload it prints
the mean test accuracy over the seeds of:

- the policy (closed loop);
- swapped: the other seeds' schedules on this seed, averaged. A policy whose reactions fit each run
  beats its own schedules run on the wrong seed; one that only follows the workload ties them;
- open-loop: the geometric-mean schedule, replayed (what the issue-11 target compares with);
- the best single schedule, and each seed's best schedule, in hindsight (by test accuracy: bounds on
  what choosing among the policy's own schedules could reach, not methods);
- how many of the policy's LR moves between epochs its next move went back on (dithering;
  :func:`rlagent.policy.validate.lr_reversals`).

Then the policy's difference from each, paired over workloads and seeds, ± one standard error.
Test accuracy is only reported here: nothing is chosen with it. ``--out`` keeps every replay.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from rlagent.bench.methods.base import MethodResult, TrialContext
from rlagent.bench.methods.schedules import open_loop
from rlagent.bench.report import policy_schedule
from rlagent.cli import USER_ERRORS, sigterm_interrupts
from rlagent.config import EnvSpec, load_spec
from rlagent.errors import RLAgentError
from rlagent.policy.validate import lr_reversals, map_draws


def bench_spec(spec_name: str, epochs: int | None) -> EnvSpec:
    """The spec as the benchmark ran it: with its ``--epochs`` override, if it had one."""
    spec = load_spec(spec_name)
    if epochs is None:
        return spec
    return dataclasses.replace(spec, episode=dataclasses.replace(spec.episode, epochs=epochs))


def replay(spec_name: str, epochs: int | None, workload: str, seed: int, schedule: list[list[float]]) -> float:
    """Test accuracy of ``schedule`` replayed open-loop on ``workload`` at ``seed`` (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    spec = bench_spec(spec_name, epochs)
    with tempfile.TemporaryDirectory() as workdir:
        ctx = TrialContext(
            spec=spec, workload=spec.workload(workload), seed=seed, workdir=Path(workdir), extra={"schedule": schedule}
        )
        return open_loop(ctx)[0].test_acc


def _padded(schedule: list[list[float]], epochs: int) -> list[list[float]]:
    """A diverged run's schedule, its last entry repeated to ``epochs`` (as ``open-loop`` does)."""
    return [list(schedule[min(t, len(schedule) - 1)]) for t in range(epochs)]


def _share(turns: list[tuple[int, int]]) -> str:
    """``"12/40"``: LR moves the next move went back on, of all moves another one followed."""
    return f"{sum(r for _, r in turns)}/{sum(m for m, _ in turns)}"


def _diff(a: list[float], b: list[float]) -> str:
    d = [x - y for x, y in zip(a, b, strict=True)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
    return f"{100 * statistics.fmean(d):+.1f} ± {100 * se:.1f} points"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="a benchmark's results folder (its results.json has policy runs)")
    parser.add_argument("--spec", default=None, help="the benchmark's spec (default: the name its results record)")
    parser.add_argument("--n-workers", type=int, default=2)
    parser.add_argument("--out", default=None, help="a JSON file for every replay")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.n_workers < 1:
        parser.error(f"--n-workers >= 1; got {args.n_workers}")
    try:
        with sigterm_interrupts():
            doc = json.loads((Path(args.results) / "results.json").read_text())
            if not isinstance(doc, dict) or not {"config", "results"} <= set(doc):
                raise RLAgentError(f"{args.results}/results.json: not a benchmark's results (no config and results)")
            runs = [MethodResult(**r) for r in doc["results"] if r["method"] == "policy"]
            workloads = list(dict.fromkeys(r.workload for r in runs))
            seeds = sorted({r.seed for r in runs})
            if len(seeds) < 2 or len(runs) != len(workloads) * len(seeds):
                raise RLAgentError(f"{args.results}: needs policy runs on every workload at 2 seeds or more")
            spec_name, epochs_override = args.spec or doc["config"]["spec"], doc["config"].get("epochs")
            spec = bench_spec(spec_name, epochs_override)
            by = {(r.workload, r.seed): r for r in runs}
            jobs: list[tuple[Any, ...]] = []
            for w in workloads:
                epochs = spec.workload(w).epochs
                mean = [list(p) for p in policy_schedule([by[w, s] for s in seeds], epochs)]
                for s in seeds:
                    jobs.append((spec_name, epochs_override, w, s, mean))
                    jobs += [
                        (spec_name, epochs_override, w, s, _padded(by[w, j].details["schedule"], epochs)) for j in seeds
                    ]
            accs = iter(map_draws(replay, jobs, args.n_workers))
            table: dict[str, dict[int, dict[str, Any]]] = {}
            for w in workloads:
                for s in seeds:
                    table.setdefault(w, {})[s] = {"mean": next(accs), "by_schedule": [next(accs) for _ in seeds]}
            columns: dict[str, list[float]] = {k: [] for k in ("policy", "swapped", "open-loop", "best", "per-seed")}
            print(
                "| workload | policy | swapped | open-loop | best single schedule | per-seed best | LR moves reversed |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|")
            turns = {
                w: [lr_reversals([lr for lr, _ in by[w, s].details["schedule"]]) for s in seeds] for w in workloads
            }
            for w in workloads:
                rows = table[w]
                best_j = max(range(len(seeds)), key=lambda j: sum(rows[s]["by_schedule"][j] for s in seeds))
                cells = {
                    "policy": [by[w, s].test_acc for s in seeds],
                    "swapped": [
                        statistics.fmean(a for j, a in enumerate(rows[s]["by_schedule"]) if j != i)
                        for i, s in enumerate(seeds)
                    ],
                    "open-loop": [rows[s]["mean"] for s in seeds],
                    "best": [rows[s]["by_schedule"][best_j] for s in seeds],
                    "per-seed": [max(rows[s]["by_schedule"]) for s in seeds],
                }
                for k, v in cells.items():
                    columns[k] += v
                print(
                    f"| {w} | "
                    + " | ".join(f"{statistics.fmean(v):.3f}" for v in cells.values())
                    + f" | {_share(turns[w])} |"
                )
            means = " | ".join(f"**{statistics.fmean(v):.3f}**" for v in columns.values())
            print(f"| mean | {means} | {_share([t for w in workloads for t in turns[w]])} |\n")
            own = [table[w][s]["by_schedule"][i] - by[w, s].test_acc for w in workloads for i, s in enumerate(seeds)]
            print(f"each seed's own schedule replayed ends where its policy run did: {max(map(abs, own)) == 0}")
            for k in ("swapped", "open-loop", "best", "per-seed"):
                print(f"policy − {k}: {_diff(columns['policy'], columns[k])} over {len(columns[k])} runs")
            if args.out:
                Path(args.out).write_text(json.dumps({"seeds": seeds, "replays": table}, indent=1))
    except USER_ERRORS as err:
        print(f"swap_schedules.py: error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
