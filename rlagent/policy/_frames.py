"""A run's history as a policy sees it: stacked frames and an LSTM's state.

Frame stacking: a policy that sees the observations of a run's last few epochs side by side.

In training, SB3's ``VecFrameStack`` over ``VecNormalize`` feeds the networks the normalised
observations of the last ``frame_stack`` steps, oldest first, with zeros before a run's first
(``PPOSettings.frame_stack``). A saved policy records one frame's observation space and
normaliser plus ``frame_stack`` (policy format 4); :class:`PolicyActor` rebuilds the stack when
the policy is used.

A recurrent policy (sb3-contrib's ``RecurrentPPO``, policy format 5) instead carries an LSTM
state from epoch to epoch; :class:`PolicyActor` keeps it, reset at a run's start as in training.

A policy saved with ``no_final_raise`` never raises the LR for a run's last epoch:
:class:`PolicyActor` counts the run's epochs, tells the last one from the ``progress`` feature
(epochs done / the run's budget) and plays an LR raise asked for there as a hold.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from rlagent.env import action_kind_of, without_lr_raise
from rlagent.errors import PolicyFileError

MAX_FRAME_STACK = 16
"""Most observations a policy may stack."""


class PolicyActor:
    """Acts for one run with a saved policy, keeping the history its network reads.

    A policy trained with frame stacking (``PPOSettings.frame_stack`` k > 1) sees the normalised
    observations of the last k steps side by side, oldest first, with zeros (the normalised mean)
    in place of steps before the run's first: what SB3's ``VecFrameStack`` over ``VecNormalize``
    fed it in training. A recurrent policy also carries its LSTM state from one step to the next,
    starting from zeros as ``RecurrentPPO`` does at an episode's start. For a one-frame
    feed-forward policy this is :meth:`SavedPolicy.predict`. Use a new actor for every run::

        act = policy.actor()
        obs, info = env.reset(seed=0)
        while not done:
            obs, reward, terminated, truncated, info = env.step(act(obs))
    """

    def __init__(self, policy: Any, deterministic: bool = True) -> None:
        """``policy``: a :class:`~rlagent.policy.file.SavedPolicy`."""
        self.policy = policy
        self.deterministic = deterministic
        self._n = policy.observation_space.shape[0]
        self._frames = np.zeros(policy.frame_stack * self._n, dtype=np.float32)
        self._state: tuple[np.ndarray, ...] | None = None  # the LSTM's (hidden, cell), after a first step
        self._epoch = 0  # epochs the run has trained when the next call comes (one call per epoch)
        self._kind = action_kind_of(policy.action_space)
        self._progress = policy.feature_names.index("progress") if policy.no_final_raise else -1
        self.held_raises = 0
        """LR raises this actor played as holds (``no_final_raise``)."""

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """The action for the run's next step, given its newest raw observation.

        Raises:
            ValueError: If the observation is not one vector of the policy's feature count.
        """
        obs = np.asarray(obs)
        if obs.shape != (self._n,):
            raise ValueError(f"expected one observation of shape ({self._n},), got shape {obs.shape}")
        self._frames = np.roll(self._frames, -self._n)
        self._frames[-self._n :] = self.policy.normalize(obs)
        if not self.policy.recurrent:
            actions, _ = self.policy.policy.predict(self._frames, deterministic=self.deterministic)
        else:
            first = np.array([self._state is None])
            actions, self._state = self.policy.policy.predict(
                self._frames, state=self._state, episode_start=first, deterministic=self.deterministic
            )
        if self.policy.no_final_raise and self._kind is not None and self._last_epoch_next(obs):
            held = without_lr_raise(actions, self._kind)
            self.held_raises += int(not np.array_equal(held, actions))
            actions = held
        self._epoch += 1
        return actions

    def _last_epoch_next(self, obs: np.ndarray) -> bool:
        """Whether the epoch this call chooses for is the run's last: ``progress`` is epochs done /
        budget, so after k epochs the budget is k / progress (unknown before the first epoch)."""
        progress = float(obs[self._progress])
        return self._epoch > 0 and progress > 0 and round(self._epoch / progress) == self._epoch + 1


def frame_space(space: Any, frame_stack: int) -> Any:
    """The space of one frame of ``space``, the stacked input of ``frame_stack`` frames."""
    if frame_stack == 1:
        return space
    if not isinstance(space, spaces.Box) or len(space.shape) != 1 or space.shape[0] % frame_stack:
        raise PolicyFileError(
            f"a stack of {frame_stack} frames needs a flat Box observation space whose size is a multiple of "
            f"{frame_stack}, got {space.shape if isinstance(space, spaces.Box) else space}"
        )
    # SB3's VecFrameStack repeats each bound in place (n x k), as stacked_space does.
    low = space.low.reshape(-1, frame_stack)
    high = space.high.reshape(-1, frame_stack)
    if np.all(low == low[:, :1]) and np.all(high == high[:, :1]):
        return spaces.Box(low[:, 0], high[:, 0], dtype=space.dtype)
    raise PolicyFileError(
        f"an observation space of shape {space.shape} is not {frame_stack} stacked copies of one frame's space"
    )


def stacked_space(space: spaces.Box, frame_stack: int) -> spaces.Box:
    """The network's input space: ``frame_stack`` frames of ``space``, its bounds laid out as SB3's
    ``VecFrameStack`` lays them out (each repeated in place; only the shape matters to the MLP)."""
    if frame_stack == 1:
        return space
    low, high = np.repeat(space.low, frame_stack), np.repeat(space.high, frame_stack)
    return spaces.Box(low, high, dtype=space.dtype)
