"""Tests for rlagent.costs: the table of procedural draws that scripts/epoch_costs.py measures."""

from __future__ import annotations

from rlagent.config import load_spec
from rlagent.costs import draw_rows


def test_draw_rows_can_keep_only_the_costliest_draws() -> None:
    spec = load_spec("default")
    every = draw_rows(spec, 10, seed=0, measure=False)
    costly = draw_rows(spec, 10, seed=0, measure=False, min_estimate=0.15)
    assert len(every) == 10
    expected = [r["name"] for r in every if r["est_seconds"] >= 0.15]
    assert 0 < len(expected) < 10  # the filter has something to keep and something to drop
    assert [r["name"] for r in costly] == expected
