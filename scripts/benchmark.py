"""Benchmark a tuning policy against the baselines and print the table.

    python scripts/benchmark.py --spec default --policy default --seeds 5 --results results/bench

Reads top to bottom: the options of ``rlagent bench``, the benchmark (``rlagent.bench.runner.run_benchmark``;
an interrupted run resumes from the finished trials in ``RESULTS/trials``), the markdown table on
stdout. The table, raw results (CSV, JSON) and plots are in the results folder.
"""

from __future__ import annotations

import argparse
import logging

from rlagent.bench.runner import BenchConfig, run_benchmark


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="default", help="spec file or shipped spec name")
    parser.add_argument("--policy", default="default", help="policy directory or shipped policy name")
    parser.add_argument("--workloads", nargs="+", default=None, help="default: the spec's held-out workloads")
    parser.add_argument("--seeds", type=int, nargs="+", default=[5], help="N: seeds 0..N-1; several: those seeds")
    parser.add_argument("--methods", nargs="+", default=None, help="method tasks (default: all)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per training run (default: the spec's)")
    parser.add_argument("--results", default=None, help="results folder (default results/bench__SPEC__POLICY)")
    parser.add_argument("--n-workers", type=int, default=None, help="parallel workers")
    parser.add_argument("--devices", default="auto", help="auto, or e.g. cuda:0,cuda:1 or cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    config = BenchConfig(
        spec=args.spec,
        policy=args.policy,
        workloads=args.workloads,
        seeds=args.seeds[0] if len(args.seeds) == 1 else args.seeds,
        methods=args.methods,
        epochs=args.epochs,
        results_dir=args.results,
        n_workers=args.n_workers,
        devices=args.devices,
        progress=not args.no_progress,
    )
    report = run_benchmark(config)

    print(report.table)
    print(f"tasks run: {report.trials_run}, reused: {report.trials_reused}")
    for name, path in report.paths.items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
