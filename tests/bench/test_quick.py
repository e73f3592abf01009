"""``rlagent bench --quick``: its defaults, its overrides, and one tiny end-to-end run that resumes."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlagent.bench.methods import METHODS, QUICK_METHODS
from rlagent.bench.quick import QUICK_SEEDS, QUICK_WORKLOADS, quick_config, quick_workloads
from rlagent.cli import main
from rlagent.config import load_spec


def test_quick_defaults_and_overrides() -> None:
    config = quick_config()
    assert config.workloads == QUICK_WORKLOADS and config.seed_list == tuple(range(QUICK_SEEDS))
    assert config.methods == QUICK_METHODS and set(QUICK_METHODS) <= set(METHODS)
    assert {"policy", "policy-best-4", "open-loop", "random", "pbt", "lr-finder"} == set(QUICK_METHODS)
    assert str(config.results_dir).endswith("__quick")  # never the full run's folder
    assert quick_workloads(load_spec("tiny")) == ("tiny-wide",)  # a spec without them: its held-out ones
    mine = quick_config(spec="tiny", seeds=[3], methods=["constant"], results_dir="x")
    assert (mine.workloads, mine.seed_list, mine.methods, str(mine.results_dir)) == (
        ("tiny-wide",),
        (3,),
        ("constant",),
        "x",
    )


@pytest.mark.slow
def test_quick_cli_runs_every_quick_method_and_resumes(
    tiny_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["bench", "--quick", "--spec", "tiny", "--policy", str(tiny_policy), "--epochs", "2", "--seeds", "1",
            "--results", str(tmp_path), "--n-workers", "1", "--no-progress"]  # fmt: skip
    main(args)
    out = capsys.readouterr().out
    for method in ("policy", "policy-best-4", "open-loop", "random-4", "pbt-8", "lr-finder-best"):
        assert f"| tiny-wide | {method} " in out
    assert f"{len(QUICK_METHODS)} tasks run, 0 reused" in out
    main(args)
    assert f"0 tasks run, {len(QUICK_METHODS)} reused" in capsys.readouterr().out
