"""Tests for rlagent.config: shipped specs load, bad specs are refused naming field and value."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from rlagent import BUILTIN_WORKLOADS, EnvSpec, SpecError, load_spec
from rlagent.config import data_dir, resolve_spec_path, spec_from_dict
from rlagent.procedural import family_of

SHIPPED = sorted(p.stem for p in data_dir("envs").glob("*.toml"))

TINY_TOML = """
name = "mine"
seed = 3

[episode]
epochs = 2
lr_range = [1e-4, 0.3]
batch_size_range = [8, 128]
init_batch_size = 16

[reward]
mode = "best_improvement"

[workloads]
train = ["w"]

[workloads.define.w]
dataset = "synthetic"
model = "mlp"
dataset_args = { n_samples = 300, n_features = 8, n_informative = 4, n_classes = 3 }
model_args = { hidden = [16] }
"""


def _base() -> dict[str, Any]:
    return tomllib.loads(TINY_TOML)


def _with(path: str, value: Any) -> dict[str, Any]:
    """The base spec with the dotted ``path`` set to ``value`` (``...`` deletes it)."""
    data = copy.deepcopy(_base())
    *parents, last = path.split(".")
    table = data
    for key in parents:
        table = table.setdefault(key, {})
    if value is ...:
        del table[last]
    else:
        table[last] = value
    return data


def test_shipped_specs_load() -> None:
    assert {"default", "tiny"} <= set(SHIPPED)
    for name in SHIPPED:
        spec = load_spec(name)
        assert spec.name == name
        for w in (*spec.workloads.train_names, *spec.workloads.heldout):
            spec.workload(w)


def test_default_spec_holds_out_whole_families() -> None:
    spec = load_spec("default")
    sampler = spec.workloads.sampler
    assert sampler is not None
    assert {"gru", "lstm"} <= set(sampler.exclude["model"]) and "batchnorm" in sampler.exclude["norm"]
    assert sampler.exclude["dataset"] and sampler.exclude["optimizer"]
    suite = spec.workloads.heldout
    assert len(suite) >= 8 and {"mnist1d-cnn", "mnist1d-gru"} <= set(suite)
    for name in suite:
        wl = spec.workload(name)
        assert wl.family, name
        # Every suite member but the in-distribution reference comes from a held-out family.
        assert sampler.allows(family_of(wl)) == (name == "mnist1d-cnn"), name


def test_load_spec_from_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text(TINY_TOML)
    spec = load_spec(path)
    assert spec == spec_from_dict(_base())
    assert spec.name == "mine" and spec.seed == 3
    assert spec.episode.epochs == 2 and spec.episode.lr_range == (1e-4, 0.3)
    assert spec.reward.mode == "best_improvement"
    assert spec.workloads.train == ("w",)
    assert load_spec(str(path)) == spec


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-spec.toml"
    path.write_text(TINY_TOML.replace('name = "mine"', ""))
    assert load_spec(path).name == "my-spec"


def test_episode_overrides_apply_to_workloads() -> None:
    spec = spec_from_dict(_base())
    wl = spec.workload("w")
    assert wl.epochs == 2 and wl.batch_size_range == (8, 128)
    default = load_spec("default")
    assert default.workload("digits-mlp").epochs == 15
    assert BUILTIN_WORKLOADS["digits-mlp"].epochs == 15


def test_to_dict_round_trips_through_json() -> None:
    for spec in (load_spec("tiny"), load_spec("default"), spec_from_dict(_base())):
        assert spec_from_dict(spec.to_dict()) == spec
        assert spec_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_reversal_cost_and_the_lr_envelope_are_left_out_of_records_while_off() -> None:
    assert "reversal_cost" not in load_spec("default-hot-final").to_dict()["reward"]  # old records still match
    steady = load_spec("default-steady-final")
    assert steady.reward.reversal_cost == 0.005 and steady.to_dict()["reward"]["reversal_cost"] == 0.005
    assert spec_from_dict(json.loads(json.dumps(steady.to_dict()))) == steady
    assert not {"schedule", "schedule_floor"} & set(load_spec("default-hot-final").to_dict()["episode"])
    cosine = load_spec("default-cosine")
    assert cosine.to_dict()["episode"]["schedule"] == "cosine" and cosine.episode.envelope(3)(2) == 0.01
    assert cosine.to_dict()["episode"]["schedule_floor"] == 0.01  # an envelope in use is recorded whole
    assert spec_from_dict(json.loads(json.dumps(cosine.to_dict()))) == cosine


def test_minimal_spec_uses_defaults() -> None:
    spec = spec_from_dict({"workloads": {"train": ["digits-mlp"]}})
    assert isinstance(spec, EnvSpec)
    assert spec.episode.action == "discrete" and spec.reward.mode == "val_acc"
    assert spec.workload("digits-mlp") == BUILTIN_WORKLOADS["digits-mlp"]


@pytest.mark.parametrize(
    ("path", "value", "field", "shown"),
    [
        # unknown workload names
        ("workloads.train", ["w", "nope-mlp"], "workloads.train", "'nope-mlp'"),
        ("workloads.heldout", ["nope-mlp"], "workloads.heldout", "'nope-mlp'"),
        # missing pieces
        ("workloads", ..., "workloads", "None"),
        ("workloads.train", ..., "workloads.train", "None"),
        ("workloads.train", [], "workloads.train", "[]"),
        ("workloads.train", "w", "workloads.train", "'w'"),
        ("workloads.define.w.model", ..., "workloads.define.w.model", "None"),
        # mistyped fields
        ("episode.epochs", "ten", "episode.epochs", "'ten'"),
        ("episode.epochs", 0, "episode.epochs", "0"),
        ("episode.epochs", True, "episode.epochs", "True"),
        ("episode.init_batch_size", 16.5, "episode.init_batch_size", "16.5"),
        ("seed", "zero", "seed", "'zero'"),
        ("workloads.define.w.epochs", "ten", "epochs", "'ten'"),
        ("reward.cost_weight", "lots", "reward.cost_weight", "'lots'"),
        ("episode", 3, "episode", "3"),
        # unknown keys (typos)
        ("episode.epoch", 3, "episode.epoch", "3"),
        ("reward.mdoe", "final", "reward.mdoe", "'final'"),
        ("seeed", 1, "seeed", "1"),
        ("workloads.trian", ["w"], "workloads.trian", "['w']"),
        ("workloads.define.w.hiden", [8], "workloads.define.w.hiden", "[8]"),
        # empty / inverted / non-positive ranges
        ("episode.lr_range", [0.1, 0.01], "episode.lr_range", "(0.1, 0.01)"),
        ("episode.lr_range", [0.1, 0.1], "episode.lr_range", "(0.1, 0.1)"),
        ("episode.lr_range", [-0.1, 0.1], "episode.lr_range", "(-0.1, 0.1)"),
        ("episode.lr_range", [0.1], "episode.lr_range", "(0.1,)"),
        ("episode.batch_size_range", [64, 16], "episode.batch_size_range", "(64, 16)"),
        ("episode.batch_size_range", [8.0, 16.0], "episode.batch_size_range", "(8.0, 16.0)"),
        ("workloads.define.w.lr_range", [0.3, 1e-4], "lr_range", "(0.3, 0.0001)"),
        # negative / out-of-range values
        ("episode.init_lr", -1e-3, "episode.init_lr", "-0.001"),
        ("episode.init_lr", 0, "episode.init_lr", "0"),
        ("episode.init_lr", 0.5, "episode.init_lr", "0.5"),  # outside lr_range
        ("episode.init_batch_size", 1024, "episode.init_batch_size", "1024"),  # outside batch_size_range
        ("episode.probe_fraction", 1.5, "episode.probe_fraction", "1.5"),
        ("episode.probe_fraction", "half", "episode.probe_fraction", "'half'"),
        ("episode.probe_fraction", 0.5, "episode.probe_fraction", "0.5"),  # init_lr is not "probe"
        ("reward.cost_weight", -1.0, "reward.cost_weight", "-1.0"),
        ("reward.reversal_cost", -0.01, "reward.reversal_cost", "-0.01"),
        ("reward.reversal_cost", float("inf"), "reward.reversal_cost", "inf"),
        ("reward.reversal_cost", True, "reward.reversal_cost", "True"),
        ("workloads.define.w.val_fraction", 1.5, "val_fraction", "1.5"),
        # bad choices
        ("reward.mode", "accuracy", "reward.mode", "'accuracy'"),
        ("reward.cost_unit", "joules", "reward.cost_unit", "'joules'"),
        ("episode.action", "both", "episode.action", "'both'"),
        ("episode.schedule", "linear", "episode.schedule", "'linear'"),
        ("episode.schedule_floor", 0, "episode.schedule_floor", "0"),
        ("episode.schedule_floor", 1.5, "episode.schedule_floor", "1.5"),
        ("episode.schedule_floor", "low", "episode.schedule_floor", "'low'"),
        ("workloads.define.w.optimizer", "lbfgs", "optimizer", "'lbfgs'"),
        ("workloads.define.w.dataset", "cifar", "dataset", "'cifar'"),
        ("workloads.define.w.model", "resnet", "model", "'resnet'"),
        # held-out overlapping train
        ("workloads.heldout", ["w"], "workloads.heldout", "['w']"),
    ],
)
def test_bad_spec_names_field_and_value(path: str, value: Any, field: str, shown: str) -> None:
    with pytest.raises(SpecError) as caught:
        spec_from_dict(_with(path, value))
    message = str(caught.value)
    assert field in caught.value.field and field in message
    assert shown in message
    assert "expected" in message


def test_bad_spec_file_gives_the_same_error(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text(TINY_TOML.replace("epochs = 2", "epochs = 'ten'"))
    with pytest.raises(SpecError, match=r"episode\.epochs: got 'ten'"):
        load_spec(path)


def test_bad_toml_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[episode\nepochs = 3\n")
    with pytest.raises(SpecError, match="valid TOML") as caught:
        load_spec(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("name", ["nope", "nope.toml", "missing/dir/spec.toml"])
def test_unknown_spec_name(name: str) -> None:
    with pytest.raises(SpecError, match=r"spec: got '.*nope.*'|spec: got 'missing") as caught:
        load_spec(name)
    assert "default" in str(caught.value) and "tiny" in str(caught.value)  # lists what exists


def test_resolve_spec_path_prefers_existing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_spec_path("tiny") == data_dir("envs") / "tiny.toml"
    monkeypatch.chdir(tmp_path)
    Path("tiny.toml").write_text(TINY_TOML)
    assert load_spec("tiny.toml").name == "mine"


def test_a_spec_extends_another_merging_tables_and_replacing_values(tmp_path: Path) -> None:
    path = tmp_path / "probe-final.toml"
    path.write_text('extends = "default"\n[episode]\ninit_lr = "probe"\n[reward]\nmode = "val_acc_change"\n')
    spec, default = load_spec(path), load_spec("default")
    assert spec.name == "probe-final"  # the file's stem, not the extended spec's name
    assert spec.episode.init_lr == "probe" and spec.reward.mode == "val_acc_change"
    assert spec.episode.lr_range == default.episode.lr_range and spec.reward.cost_weight == default.reward.cost_weight
    assert spec.workloads == default.workloads
    child = tmp_path / "child.toml"  # extends a file, relative to the extending one
    child.write_text('extends = "probe-final.toml"\n[episode]\ninit_batch_size = 64\n')
    assert (load_spec(child).episode.init_lr, load_spec(child).episode.init_batch_size) == ("probe", 64)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ('extends = "nope"\n', "spec: got 'nope'"),
        ("extends = 3\n", "loop.toml: extends: got 3; expected a spec file path or a shipped spec name"),
        ('extends = "loop.toml"\n', "loop.toml: extends: got 'loop.toml'; expected a spec that does not extend"),
    ],
)
def test_bad_extends_names_the_field(tmp_path: Path, text: str, shown: str) -> None:
    path = tmp_path / "loop.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert shown in str(caught.value)


def test_spec_error_is_a_value_error() -> None:
    err = SpecError("episode.epochs", "ten", "an integer >= 1")
    assert isinstance(err, ValueError)
    assert (err.field, err.value, err.allowed) == ("episode.epochs", "ten", "an integer >= 1")
    assert str(err) == "episode.epochs: got 'ten'; expected an integer >= 1"


@pytest.mark.parametrize(
    ("table", "text"),
    [
        ({"model": "mlp", "model_args": {"hiden": [8]}}, "workloads.define.w.model_args.hiden: got [8]; expected an argument of model 'mlp': one of ['hidden', 'activation', 'norm', 'dropout', 'residual']"),
        ({"model": "cnn1d", "dataset_args": {"num_sample": 10}}, "dataset_args.num_sample: got 10; expected an argument of dataset 'synthetic'"),
        ({"model": "tests._user_workload:make_model", "model_args": {"bogus": 1}}, "model_args.bogus"),
    ],
)  # fmt: skip
def test_typo_in_factory_arguments_is_refused_when_the_spec_loads(table: dict, text: str) -> None:
    define = {"w": {"dataset": "synthetic", **table}}
    with pytest.raises(SpecError) as info:
        spec_from_dict({"workloads": {"train": ["w"], "define": define}})
    assert text in str(info.value)
