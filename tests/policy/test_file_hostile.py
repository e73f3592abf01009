"""Hostile and careless policy files: bounded cost, and only ever a ``PolicyFileError``.

Each test starts from a copy of the shipped ``policies/default`` and changes one thing; the
property tests mutate it at random.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from gymnasium import spaces
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from stable_baselines3.common.policies import ActorCriticPolicy

from rlagent.config import data_dir
from rlagent.policy._integrity import DIGEST_FIELD, MAX_JSON_DEPTH, expected_shapes, json_digest
from rlagent.policy.file import JSON_NAME, WEIGHTS_NAME, PolicyFileError, load_policy

REAL = data_dir("policies") / "default"
_BUDGET_S = 2.0  # loading the real policy takes ~0.02 s; a hostile one may cost at most this


def _copy_real(to: Path) -> Path:
    to.mkdir(parents=True, exist_ok=True)
    for name in (JSON_NAME, WEIGHTS_NAME):
        shutil.copy(REAL / name, to / name)
    return to


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    return _copy_real(tmp_path / "pol")


def _doc(directory: Path) -> dict[str, Any]:
    return json.loads((directory / JSON_NAME).read_text())


def _write(directory: Path, doc: Any, *, reseal: bool = True) -> None:
    if reseal and isinstance(doc, dict):
        doc[DIGEST_FIELD] = json_digest(doc)
    (directory / JSON_NAME).write_text(json.dumps(doc))


def _edit(directory: Path, edit: Callable[[dict[str, Any]], None], *, reseal: bool = True) -> None:
    doc = _doc(directory)
    edit(doc)
    _write(directory, doc, reseal=reseal)


def _refused(directory: Path, match: str) -> PolicyFileError:
    start = time.perf_counter()
    with pytest.raises(PolicyFileError, match=match) as info:
        load_policy(directory)
    assert time.perf_counter() - start < _BUDGET_S
    return info.value


# ------------------------------------------------------------------- 1. unbounded work


def test_huge_weights_file_is_refused_by_its_size_before_reading(policy: Path) -> None:
    with (policy / WEIGHTS_NAME).open("r+b") as f:
        f.truncate(2**30)  # 1 GiB, sparse: nothing is written to disk
    err = _refused(policy, "1,073,741,824 bytes, more than")
    assert "do not fit the architecture" in str(err)


def test_huge_action_space_is_refused_before_allocating(policy: Path) -> None:
    _edit(policy, lambda d: d.__setitem__("action_space", {"type": "MultiDiscrete", "nvec": [10**6] * 200}))
    _refused(policy, "action_space.nvec")
    _edit(policy, lambda d: d.__setitem__("action_space", {"type": "MultiDiscrete", "nvec": [10**6] * 60}))
    _refused(policy, "parameters")


def test_oversized_allow_listed_architecture_costs_nothing(policy: Path) -> None:
    _edit(policy, lambda d: d["architecture"].__setitem__("net_arch", {"pi": [4096] * 8, "vf": [4096] * 8}))
    _refused(policy, "at most 2,000,000")


def test_weights_of_another_architecture_are_refused_from_the_header(policy: Path) -> None:
    first, second = _REAL_DOC["architecture"]["net_arch"]["pi"]
    vf = _REAL_DOC["architecture"]["net_arch"]["vf"]
    _edit(policy, lambda d: d["architecture"].__setitem__("net_arch", {"pi": [first, 2 * second], "vf": vf}))
    _refused(policy, rf"do not fit the architecture: mlp_extractor.policy_net.2.weight: file \({second}, {first}\)")


def test_nonfinite_weights_are_refused(policy: Path) -> None:
    state = safetensors.torch.load((policy / WEIGHTS_NAME).read_bytes())
    state["value_net.bias"] = torch.tensor([float("nan")])
    data = safetensors.torch.save(state)
    (policy / WEIGHTS_NAME).write_bytes(data)
    import hashlib

    _edit(policy, lambda d: d.__setitem__("sha256", hashlib.sha256(data).hexdigest()))
    _refused(policy, r"\['value_net.bias'\] hold NaN")


def test_editing_the_json_alone_is_noticed(policy: Path) -> None:
    _edit(policy, lambda d: d["normalizer"].__setitem__("clip_obs", 5.0), reseal=False)
    _refused(policy, "edited or corrupted after it was saved")
    _edit(policy, lambda d: d.pop(DIGEST_FIELD), reseal=False)
    _refused(policy, DIGEST_FIELD)


def test_deeply_nested_json(policy: Path) -> None:
    (policy / JSON_NAME).write_text("[" * 200_000 + "]" * 200_000)
    _refused(policy, "nested too deeply")
    _copy_real(policy)
    deep: Any = 0
    for _ in range(MAX_JSON_DEPTH + 1):  # within the parser's reach, beyond the depth cap
        deep = [deep]
    _edit(policy, lambda d: d["training"].__setitem__("x", deep))
    _refused(policy, "nested too deeply")


def test_json_with_too_many_values(policy: Path) -> None:
    _edit(policy, lambda d: d["training"].__setitem__("x", [0] * 200_000))
    _refused(policy, "more than 100000 values")


@pytest.mark.parametrize("literal", ["1" * 5000, "1e999", "NaN", "-Infinity"])
def test_numbers_that_are_not_numbers(policy: Path, literal: str) -> None:
    text = (policy / JSON_NAME).read_text().replace('"clip_obs": 10.0', f'"clip_obs": {literal}')
    assert literal in text
    (policy / JSON_NAME).write_text(text)
    _refused(policy, "not valid JSON")


def test_training_record_of_the_wrong_type(policy: Path) -> None:
    _edit(policy, lambda d: d.__setitem__("training", "oops"))
    _refused(policy, "field 'training' must be a dict")


@pytest.mark.parametrize(("key", "value"), [("epsilon", 1e308), ("clip_obs", 0.0), ("count", -1)])
def test_normalizer_scalars_out_of_range(policy: Path, key: str, value: float) -> None:
    _edit(policy, lambda d: d["normalizer"].__setitem__(key, value))
    _refused(policy, f"normalizer.{key} must be in")


def test_normalizer_statistics_outside_the_observation_space(policy: Path) -> None:
    _edit(policy, lambda d: d["normalizer"]["mean"].__setitem__(0, 50.0))
    _refused(policy, r"mean outside \[low, high\] at \[0\]")


@pytest.mark.parametrize(
    ("key", "value"),
    [("lr_range", [1e3, 1e4]), ("lr_range", [0.3, 1e-4]), ("batch_size_range", [0, 0]), ("lr_range", "x")],
)
def test_recorded_ranges_are_checked(policy: Path, key: str, value: Any) -> None:
    _edit(policy, lambda d: d["training"]["spec"]["episode"].__setitem__(key, value))
    _refused(policy, f"training.spec.episode.{key}")


@pytest.mark.parametrize(
    ("net_arch", "action_space"),
    [
        ({"pi": [8], "vf": [8]}, spaces.MultiDiscrete([5, 3])),
        ({"pi": [], "vf": [4, 6]}, spaces.Box(-1, 1, (2,))),
        ({"pi": [3, 5, 7], "vf": []}, spaces.MultiDiscrete([2, 2, 2])),
    ],
)
def test_expected_shapes_match_sb3(net_arch: dict[str, list[int]], action_space: spaces.Space[Any]) -> None:
    built = ActorCriticPolicy(spaces.Box(-1, 1, (18,)), action_space, lambda _: 0.0, net_arch=net_arch)
    want = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    assert expected_shapes(18, action_space, net_arch) == want


# ------------------------------------------------------------------------ properties

_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([10**39, -(10**39), 0, -1, 2**63]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 0.0]),
    st.text(max_size=20),
)
_JSON_VALUES = st.recursive(
    _JSON_LEAVES,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*prefix, i))
    return out


_REAL_DOC = json.loads((REAL / JSON_NAME).read_text())
_REAL_PATHS = _paths(_REAL_DOC)


def _mutate(doc: Any, path: tuple[Any, ...], op: str, value: Any) -> None:
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if op == "delete":
        del parent[last]
    elif op == "replace":
        parent[last] = value
    elif op == "nest":
        wrapped = parent[last]
        for _ in range(40):
            wrapped = [wrapped]
        parent[last] = wrapped
    elif op == "swap_type":
        old = parent[last]
        parent[last] = json.dumps(old) if not isinstance(old, str) else [old]


def _load_mutated(doc: Any, reseal: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        directory = _copy_real(Path(tmp) / "p")
        _write(directory, doc, reseal=reseal)
        start = time.perf_counter()
        try:
            load_policy(directory)
        except PolicyFileError:
            pass
        assert time.perf_counter() - start < _BUDGET_S


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    mutations=st.lists(
        st.tuples(
            st.sampled_from(_REAL_PATHS), st.sampled_from(["delete", "replace", "nest", "swap_type"]), _JSON_VALUES
        ),
        min_size=1,
        max_size=3,
    ),
    reseal=st.booleans(),
)
def test_random_mutations_of_a_real_policy_json_only_raise_policy_file_error(
    mutations: list[tuple[tuple[Any, ...], str, Any]], reseal: bool
) -> None:
    doc = json.loads(json.dumps(_REAL_DOC))
    for path, op, value in mutations:
        try:
            _mutate(doc, path, op, value)
        except (KeyError, IndexError, TypeError):
            pass  # an earlier mutation removed or replaced this path
    _load_mutated(doc, reseal)


@settings(max_examples=60, deadline=None)
@given(cut=st.integers(min_value=0, max_value=len((REAL / JSON_NAME).read_bytes())), junk=st.binary(max_size=64))
def test_random_bytes_in_a_real_policy_json_only_raise_policy_file_error(cut: int, junk: bytes) -> None:
    raw = (REAL / JSON_NAME).read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        directory = _copy_real(Path(tmp) / "p")
        (directory / JSON_NAME).write_bytes(raw[:cut] + junk + raw[cut + len(junk) :])
        start = time.perf_counter()
        try:
            load_policy(directory)
        except PolicyFileError:
            pass
        assert time.perf_counter() - start < _BUDGET_S
