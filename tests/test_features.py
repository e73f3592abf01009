"""Tests for rlagent.features: the observation contract and the run tracker."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rlagent import FEATURE_NAMES
from rlagent.features import (
    OBS_HIGH,
    OBS_LOW,
    NoiseScale,
    RunTracker,
    above_chance,
    clip_features,
    position,
    slope,
)


def _tracker(**kw) -> RunTracker:
    args = {"num_classes": 4, "lr_range": (1e-4, 1e-1), "batch_size_range": (16, 256), "epochs": 4, **kw}
    return RunTracker(**args)


def _epoch(tracker: RunTracker, val_acc: float, **kw) -> np.ndarray:
    args = {
        "train_loss": 1.0, "train_acc": 0.5, "val_loss": 1.1, "val_acc": val_acc, "lr": 1e-3, "batch_size": 64,
        **kw,
    }  # fmt: skip
    return tracker.update(**args)


def _feature(obs: np.ndarray, name: str) -> float:
    return float(obs[FEATURE_NAMES.index(name)])


def test_feature_names_match_bounds() -> None:
    assert len(FEATURE_NAMES) == len(set(FEATURE_NAMES)) == len(OBS_LOW) == len(OBS_HIGH)
    assert OBS_LOW.dtype == OBS_HIGH.dtype == np.float32
    assert (OBS_LOW < OBS_HIGH).all()


def test_clip_features_is_finite_and_bounded() -> None:
    values = dict.fromkeys(FEATURE_NAMES, 0.5)
    values.update(train_loss=math.nan, val_loss=math.inf, d_val_loss=-math.inf, log_noise_scale=1e9, progress=-3.0)
    vec = clip_features(values)
    assert vec.dtype == np.float32 and vec.shape == (len(FEATURE_NAMES),)
    assert np.isfinite(vec).all() and (vec >= OBS_LOW).all() and (vec <= OBS_HIGH).all()
    assert _feature(vec, "train_loss") == 0.0
    assert _feature(vec, "val_loss") == OBS_HIGH[FEATURE_NAMES.index("val_loss")]
    assert _feature(vec, "d_val_loss") == OBS_LOW[FEATURE_NAMES.index("d_val_loss")]
    assert _feature(vec, "log_noise_scale") == 10.0 and _feature(vec, "progress") == 0.0


def test_clip_features_names_missing_features() -> None:
    values = dict.fromkeys(FEATURE_NAMES, 0.0)
    del values["gen_gap"]
    with pytest.raises(KeyError, match="gen_gap"):
        clip_features(values)


def test_position_and_above_chance() -> None:
    assert position(1e-4, 1e-4, 1e-2) == 0.0
    assert position(1e-3, 1e-4, 1e-2) == pytest.approx(0.5)
    assert position(1.0, 1e-4, 1e-2) == 1.0 and position(1e-9, 1e-4, 1e-2) == 0.0
    assert position(5.0, 3.0, 3.0) == 0.0
    assert above_chance(0.25, 4) == 0.0 and above_chance(1.0, 4) == 1.0
    assert above_chance(0.0, 4) == pytest.approx(-1 / 3)


def test_noise_scale_recovers_known_values() -> None:
    # Expected squared norms for true |G|² = 2 and tr(Σ) = 64 at batch sizes 16 and 64.
    g2, trace = 2.0, 64.0
    noise = NoiseScale()
    assert noise.b_simple() is None
    for _ in range(3):
        noise.update(g2 + trace / 16, g2 + trace / 64, 16.0, 64.0)
    assert noise.grad_sq == pytest.approx(g2) and noise.trace == pytest.approx(trace)
    assert noise.b_simple() == pytest.approx(32.0)


def test_noise_scale_ignores_unusable_measurements() -> None:
    noise = NoiseScale()
    noise.update(math.nan, 1.0, 16.0, 64.0)
    noise.update(1.0, 1.0, 64.0, 64.0)
    assert noise.b_simple() is None
    noise.update(1.0, 2.0, 16.0, 64.0)  # negative trace estimate
    assert noise.b_simple() is None


def test_tracker_start_and_updates() -> None:
    tracker = _tracker()
    obs = tracker.start(val_loss=math.log(4), val_acc=0.25, lr=1e-4, batch_size=16)
    assert obs.shape == (len(FEATURE_NAMES),)
    assert _feature(obs, "progress") == 0.0 and _feature(obs, "val_loss") == pytest.approx(1.0)
    assert _feature(obs, "val_acc") == 0.0 and _feature(obs, "lr_pos") == 0.0 and _feature(obs, "bs_pos") == 0.0
    assert _feature(obs, "d_val_acc") == 0.0 and _feature(obs, "noise_scale_known") == 0.0

    # from 1e-4 / bs 16 to 4e-4 / bs 8 (x4, x1/2)
    obs = _epoch(tracker, 0.7, lr=4e-4, batch_size=8, noise=(2.0 + 64 / 16, 2.0 + 64 / 64, 16.0, 64.0))
    assert _feature(obs, "progress") == 0.25
    assert _feature(obs, "val_acc") == pytest.approx(above_chance(0.7, 4))
    assert _feature(obs, "d_val_acc") == pytest.approx(above_chance(0.7, 4))
    assert _feature(obs, "last_lr_action") == 1.0 and _feature(obs, "last_bs_action") == -1.0
    assert _feature(obs, "since_best") == 0.0
    assert _feature(obs, "noise_scale_known") == 1.0
    assert _feature(obs, "log_noise_scale") == pytest.approx(math.log(32 / 8), rel=1e-5)
    assert _feature(obs, "gen_gap") == pytest.approx(0.1 / math.log(4), rel=1e-5)
    assert _feature(obs, "lr_rel_start") == pytest.approx(math.log(4) / math.log(1000), rel=1e-5)

    obs = _epoch(tracker, 0.6, lr=4e-4, batch_size=8)
    assert _feature(obs, "best_val_acc") == pytest.approx(above_chance(0.7, 4))
    assert _feature(obs, "since_best") == 0.25
    assert _feature(obs, "d_val_acc") == pytest.approx(above_chance(0.6, 4) - above_chance(0.7, 4))
    assert _feature(obs, "last_lr_action") == 0.0 and _feature(obs, "last_bs_action") == 0.0


def test_tracker_start_resets_the_run() -> None:
    tracker = _tracker()
    tracker.start(val_loss=1.0, val_acc=0.25, lr=1e-3, batch_size=32)
    _epoch(tracker, 0.9)
    obs = tracker.start(val_loss=1.0, val_acc=0.3, lr=1e-3, batch_size=32)
    assert tracker.epoch == 0
    assert _feature(obs, "best_val_acc") == pytest.approx(above_chance(0.3, 4))
    assert _feature(obs, "d_val_acc") == 0.0


def test_tracker_with_one_class_does_not_divide_by_zero() -> None:
    tracker = _tracker(num_classes=1)
    obs = tracker.start(val_loss=0.0, val_acc=1.0, lr=1e-3, batch_size=32)
    assert np.isfinite(obs).all()


def test_last_action_is_what_was_applied_not_what_was_asked() -> None:
    """At the top of the LR range a requested x4 is clipped to nothing: the observation says 0."""
    tracker = _tracker()
    tracker.start(val_loss=1.0, val_acc=0.25, lr=0.1, batch_size=256)
    obs = _epoch(tracker, 0.5, lr=0.1, batch_size=256)  # asked for x4 / x2, both clipped
    assert _feature(obs, "last_lr_action") == 0.0 and _feature(obs, "last_bs_action") == 0.0
    obs = _epoch(tracker, 0.5, lr=0.05, batch_size=256)
    assert _feature(obs, "last_lr_action") == pytest.approx(-0.5)
    assert _feature(obs, "lr_rel_start") == pytest.approx(math.log(0.5) / math.log(1000), rel=1e-5)


def test_loss_relative_to_start_flags_a_run_worse_than_untrained() -> None:
    tracker = _tracker()
    tracker.start(val_loss=math.log(4), val_acc=0.25, lr=1e-3, batch_size=32)
    assert _feature(_epoch(tracker, 0.5, train_loss=0.5 * math.log(4)), "loss_rel_start") == pytest.approx(0.5)
    assert _feature(_epoch(tracker, 0.25, train_loss=3 * math.log(4)), "loss_rel_start") == pytest.approx(3.0)


def test_slopes_fit_the_last_epochs() -> None:
    assert slope([]) == 0.0 and slope([5.0]) == 0.0
    assert slope([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert slope([4.0, 2.0, 4.0, 2.0]) == pytest.approx(-0.4)
    tracker = _tracker(epochs=10)
    tracker.start(val_loss=math.log(4), val_acc=0.25, lr=1e-3, batch_size=32)
    for i, loss in enumerate([0.9, 0.8, 0.7, 0.6, 0.5, 0.1]):
        obs = _epoch(tracker, 0.3 + 0.1 * i, train_loss=loss * math.log(4))
    # the window holds the last four epochs: 0.7, 0.6, 0.5, 0.1 -> slope -0.18 per epoch
    assert _feature(obs, "train_loss_slope") == pytest.approx(slope([0.7, 0.6, 0.5, 0.1]), rel=1e-5)
    assert _feature(obs, "val_acc_slope") == pytest.approx(above_chance(0.4, 4) - above_chance(0.3, 4), rel=1e-5)


def test_without_start_the_first_epoch_stands_for_the_start() -> None:
    obs = _epoch(_tracker(), 0.5, lr=1e-3, train_loss=1.1, val_loss=1.1)
    assert _feature(obs, "lr_rel_start") == 0.0 and _feature(obs, "loss_rel_start") == pytest.approx(1.0)
