"""Cost of loading hostile policy files compared with the real one: wall time and peak memory.

Each case is written here, then loaded in a fresh process that first loads the real ``policies/default`` once (so that
imports and lazy initialisation are paid), then records its peak RSS, then loads the case and
reports the time taken and how much the peak RSS grew. Run from the repository root:

    PYTHONPATH=$PWD python scripts/bench_policy_loader.py
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = [
    "real",
    "weights_1GiB",
    "nvec_1e6x200",
    "net_arch_4096x8",
    "json_nested_200k",
    "json_5000_digits",
    "json_1MiB_list",
    "json_99k_floats",
    "json_16MiB",
    "epsilon_1e308",
]


def _prepare(case: str, directory: Path) -> None:
    from rlagent.config import data_dir
    from rlagent.policy._integrity import DIGEST_FIELD, json_digest

    real = data_dir("policies") / "default"
    for name in ("policy.json", "policy.safetensors"):
        shutil.copy(real / name, directory / name)
    doc = json.loads((directory / "policy.json").read_text())

    def reseal() -> None:
        doc[DIGEST_FIELD] = json_digest(doc)
        (directory / "policy.json").write_text(json.dumps(doc))

    if case == "weights_1GiB":
        with (directory / "policy.safetensors").open("r+b") as f:
            f.truncate(2**30)
    elif case == "nvec_1e6x200":
        doc["action_space"] = {"type": "MultiDiscrete", "nvec": [10**6] * 200}
        reseal()
    elif case == "net_arch_4096x8":
        doc["architecture"]["net_arch"] = {"pi": [4096] * 8, "vf": [4096] * 8}
        reseal()
    elif case == "json_nested_200k":
        (directory / "policy.json").write_text("[" * 200_000 + "]" * 200_000)
    elif case == "json_5000_digits":
        doc["training"]["x"] = 0
        (directory / "policy.json").write_text(json.dumps(doc).replace('"x": 0', '"x": ' + "9" * 5000))
    elif case == "json_1MiB_list":  # just under the size cap, valid JSON, sealed
        doc["training"]["x"] = [0] * 300_000
        reseal()
    elif case == "json_99k_floats":  # the most values a policy file may hold, sealed: it loads
        doc["training"]["x"] = [0.5] * 99_000
        reseal()
    elif case == "json_16MiB":
        doc["training"]["x"] = "a" * (16 * 2**20)
        reseal()
    elif case == "epsilon_1e308":
        doc["normalizer"]["epsilon"] = 1e308
        reseal()


def _child(case: str, directory: Path) -> None:
    from rlagent.config import data_dir
    from rlagent.errors import PolicyFileError
    from rlagent.policy.file import load_policy

    load_policy(data_dir("policies") / "default")  # warm-up: imports and lazy initialisation
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        load_policy(directory)
        outcome = "loaded"
    except PolicyFileError as exc:
        outcome = f"PolicyFileError: {str(exc).replace(str(directory), '<dir>')[:90]}"
    seconds = time.perf_counter() - start
    grew_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(json.dumps({"case": case, "seconds": seconds, "peak_rss_growth_mib": grew_kib / 1024, "outcome": outcome}))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--case":
        _child(sys.argv[2], Path(sys.argv[3]))
        return
    print(f"{'case':<18} {'seconds':>8} {'+peak MiB':>10}  outcome")
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            _prepare(case, Path(tmp))  # here, so the child's peak memory is the loader's alone
            cmd = [sys.executable, __file__, "--case", case, tmp]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{row['case']:<18} {row['seconds']:8.4f} {row['peak_rss_growth_mib']:10.1f}  {row['outcome']}")


if __name__ == "__main__":
    main()
