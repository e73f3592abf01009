"""Tests for rlagent.cli: exit codes, JSON output and one-line errors."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from rlagent.cli import main, sigterm_interrupts


def test_workloads_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workloads", "--spec", "tiny", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["role"]) for r in rows] == [("tiny-mlp", "train"), ("tiny-wide", "held-out")]
    assert rows[0]["train"] + rows[0]["val"] == 240 and rows[0]["test"] == 60
    assert rows[0]["classes"] == 3 and rows[0]["input_shape"] == [8] and rows[0]["epochs"] == 3


def test_workloads_table_with_extra(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workloads", "--spec", "tiny", "--extra", "digits-mlp"]) == 0
    out = capsys.readouterr().out
    assert "tiny-mlp" in out and "tiny-wide" in out and "digits-mlp" in out


def test_workloads_unknown_extra_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workloads", "--spec", "tiny", "--extra", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'nope'" in err and "Traceback" not in err


def test_workloads_sample_prints_draws_with_cost(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workloads", "--spec", "tiny-procedural", "--sample", "2", "--seed", "4", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["procedural-4", "procedural-5"]
    for r in rows:
        assert r["family"].count("/") == 3 and r["params"] > 0 and r["seconds"] > 0 and r["est_seconds"] > 0


def test_workloads_sample_of_a_named_spec_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workloads", "--spec", "tiny", "--sample", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "workloads.train" in err and "sampler" in err


def test_rollout_runs_an_episode(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rollout", "--spec", "tiny", "--seed", "1", "--workload", "tiny-wide"]) == 0
    out = capsys.readouterr().out
    assert "tiny-wide" in out and "final test accuracy" in out


@pytest.mark.parametrize("command", ["rollout", "workloads"])
def test_unknown_spec_is_one_line_without_traceback(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--spec", "nope"]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"rlagent {command}: error: spec: got 'nope'")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err


def test_bad_spec_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[workloads]\ntrain = ["digits-mlp"]\n[episode]\nepochs = "ten"\n')
    assert main(["rollout", "--spec", str(path)]) == 2
    err = capsys.readouterr().err
    assert "episode.epochs: got 'ten'" in err and err.count("\n") == 1


def test_sigterm_interrupts_within_the_block_and_the_previous_handler_returns() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), sigterm_interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        pytest.fail("SIGTERM did not interrupt")  # the handler raises before this line
    assert signal.getsignal(signal.SIGTERM) is before
