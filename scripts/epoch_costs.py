"""Epoch costs on one core: procedural draws (estimated and measured) and a spec's held-out suite.

    PYTHONPATH=$PWD python scripts/epoch_costs.py --n 200 --spec default --out results/epoch_costs.json
    PYTHONPATH=$PWD python scripts/epoch_costs.py --n 300 --min-estimate 0.15   # only the costliest draws

Every epoch (training plus validation, batch size 32, ``torch.set_num_threads(1)``) is measured
next to the reference workload (``mnist1d-mlp``), so on a shared machine the figures can also
be read normalised: measured × (reference's idle cost, 63 ms) / (reference measured beside it).
Prints the median, 90th percentile and maximum of the draws, the cost by model family, the
slowest draws and, with ``--heldout``, each held-out workload of the spec.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from rlagent.config import load_spec
from rlagent.costs import REFERENCE_SECONDS, REFERENCE_WORKLOAD, draw_rows, measure_epoch_seconds

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--n", type=int, default=200, help="number of draws (0: none)")
parser.add_argument("--seed", type=int, default=0, help="seed of the first draw")
parser.add_argument("--spec", default="default", help="spec with a procedural training set")
parser.add_argument(
    "--min-estimate", type=float, default=0.0, help="measure only draws estimated at least this many seconds"
)
parser.add_argument("--heldout", action="store_true", help="also measure the spec's held-out workloads")
parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
args = parser.parse_args()

torch.set_num_threads(1)
spec = load_spec(args.spec)
sources: dict = {}
reference = spec.workloads.get(REFERENCE_WORKLOAD)


def reference_seconds() -> float:
    return measure_epoch_seconds(reference, sources=sources)


def stats(x: np.ndarray) -> str:
    return f"median {np.median(x):.3f}  p90 {np.quantile(x, 0.9):.3f}  max {x.max():.3f}"


rows = draw_rows(spec, args.n, args.seed, reference=reference_seconds, min_estimate=args.min_estimate) if args.n else []
if rows:
    for key, label in (("seconds", "measured"), ("normalised", "normalised"), ("est_seconds", "estimated")):
        print(f"{label:10s} epoch seconds over {len(rows)} draws: {stats(np.array([r[key] for r in rows]))}")
    ratio = np.array([r["normalised"] / r["est_seconds"] for r in rows])
    print(
        f"normalised / estimated: median {np.median(ratio):.2f}  p10 {np.quantile(ratio, 0.1):.2f}  p90 {np.quantile(ratio, 0.9):.2f}"
    )
    by_model = defaultdict(list)
    for r in rows:
        by_model[r["family"].split("/")[0]].append(r["normalised"])
    for model, xs in sorted(by_model.items()):
        print(f"  {model:6s} n={len(xs):3d}  normalised median {np.median(xs):.3f}  max {max(xs):.3f}")
    print("slowest draws (normalised):")
    for r in sorted(rows, key=lambda r: -r["normalised"])[:5]:
        print(
            f"  {r['name']:16s} {r['normalised']:.3f} s (measured {r['seconds']:.3f}, est {r['est_seconds']:.3f})  {r['family']}  {r['description']}"
        )
held = []
if args.heldout:
    print(f"held-out workloads of spec '{spec.name}' (seconds per epoch, one core, batch size 32):")
    for name in spec.workloads.heldout:
        wl = spec.workload(name)
        before = reference_seconds()
        seconds = measure_epoch_seconds(wl, sources=sources, repeats=2)
        normalised = seconds * REFERENCE_SECONDS / ((before + reference_seconds()) / 2)
        held.append({"name": name, "family": wl.family, "seconds": seconds, "normalised": normalised})
        print(f"  {name:22s} {wl.family:10s} measured {seconds:.3f}  normalised {normalised:.3f}")
if args.out:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"draws": rows, "heldout": held}, indent=1))
