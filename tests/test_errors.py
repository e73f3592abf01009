"""The type checks made before raising a SpecError: bools are never numbers here."""

from __future__ import annotations

import numpy as np
import pytest

from rlagent.errors import SpecError, is_int, is_number


@pytest.mark.parametrize(
    ("value", "number", "integer"),
    [(3, True, True), (0.5, True, False), (float("inf"), True, False), (True, False, False), (False, False, False),
     ("3", False, False), (None, False, False), (np.float64(0.5), True, False), ([1], False, False)],
)  # fmt: skip
def test_is_number_and_is_int_refuse_bools(value: object, number: bool, integer: bool) -> None:
    assert is_number(value) is number
    assert is_int(value) is integer


def test_spec_error_names_field_value_and_what_is_allowed() -> None:
    err = SpecError("episode.lr_range", [0.3, 1e-4], "[low, high] with 0 < low < high")
    assert str(err) == "episode.lr_range: got [0.3, 0.0001]; expected [low, high] with 0 < low < high"
    assert (err.field, err.value) == ("episode.lr_range", [0.3, 0.0001])
