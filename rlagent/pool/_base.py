"""The ``VecEnv`` API of the env pools, over workers that may die.

:class:`_WorkerPool` is the base class of :class:`rlagent.pool.EnvPool` (worker processes) and
:class:`rlagent.pool.ray.RayEnvPool` (Ray actors): ``reset``, ``step_async`` / ``step_wait``
(auto-reset, a restarted worker's step reported as a truncated episode end) and the attribute
and method calls. Keeping the workers alive is :class:`rlagent.pool._supervisor._Supervisor`'s
job; a subclass only implements the transport.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from rlagent.pool._supervisor import _Dead, _Supervisor


def _stack_obs(obs: Sequence[Any], space: spaces.Space) -> VecEnvObs:
    if isinstance(space, spaces.Dict):
        return {key: np.stack([o[key] for o in obs]) for key in space.spaces}
    if isinstance(space, spaces.Tuple):
        return tuple(np.stack([o[i] for o in obs]) for i in range(len(space.spaces)))
    return np.stack(obs)


class _WorkerPool(_Supervisor):
    """The ``VecEnv`` API over supervised workers; a subclass adds the transport."""

    def reset(self) -> VecEnvObs:
        """Reset every env, using and then clearing the seeds/options set by ``seed()`` etc.

        Returns:
            The stacked reset observations; reset infos are stored in ``reset_infos``.
        """
        self._check_open()
        # A pending step is cancelled: the workers run it before the reset, and its replies are
        # dropped.
        self.waiting = False
        self._unsent = set()
        for i in range(self.num_envs):
            if self._seeds[i] is not None:
                self._base_seeds[i] = self._seeds[i]
            self._last_options[i] = dict(self._options[i] or {})
        self._restarted.clear()
        results = self._request(
            range(self.num_envs),
            "reset",
            [(self._seeds[i], self._options[i] or None) for i in range(self.num_envs)],
            on_death="reset",
        )
        obs = []
        for i, (ob, reset_info, workload) in enumerate(results):
            self._workloads[i] = workload
            self._last_obs[i] = ob
            self.reset_infos[i] = reset_info
            obs.append(ob)
        self._reset_seeds()
        self._reset_options()
        return _stack_obs(obs, self.observation_space)

    def step_async(self, actions: np.ndarray) -> None:
        """Send one action to each env (envs restarted since the last step get none)."""
        self._check_open()
        if self.waiting:
            raise RuntimeError("step_async called while a step is already pending")
        self._unsent = set()
        for i in range(self.num_envs):
            if i in self._restarted:
                continue
            if not self._send(i, "step", actions[i]):
                self._unsent.add(i)
        self._step_deadline = time.monotonic() + self.step_timeout
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        """Wait for the step started by ``step_async``, restarting workers that died.

        Returns:
            Stacked observations, rewards, dones and the list of info dicts.

        Raises:
            EnvWorkerError: If an env raised, or a worker died once more than ``max_restarts``.
        """
        self._check_open()
        if not self.waiting:
            raise RuntimeError("step_wait called without step_async")
        self.waiting = False
        stepped = [i for i in range(self.num_envs) if i not in self._restarted]
        sent = [i for i in stepped if i not in self._unsent]
        replies = self._collect(sent, self._step_deadline, self._step_limit)
        for i in self._unsent:
            replies[i] = _Dead(f"{self._gone_reason(i)} (could not send the step)")
        self._unsent = set()
        # Raise an env's own exception first: it says more than a death.
        for i in stepped:
            if not isinstance(replies[i], _Dead) and replies[i][0] != "ok":
                self._unwrap(i, replies[i])
        for i in stepped:
            if isinstance(replies[i], _Dead):
                self._restarted[i] = self._restart(i, replies[i].reason)

        obs, rewards, dones, infos = [], [], [], []
        for i in range(self.num_envs):
            if i in self._restarted:
                reset_obs, reset_info, terminal_obs = self._restarted.pop(i)
                ob, reward, done = reset_obs, 0.0, True
                info = {
                    "worker_restarted": True,
                    "TimeLimit.truncated": True,
                    "terminal_observation": terminal_obs,
                }
            else:
                ob, reward, done, info, reset_info, self._workloads[i] = replies[i][1]
            self.reset_infos[i] = reset_info
            self._last_obs[i] = ob
            obs.append(ob)
            rewards.append(reward)
            dones.append(done)
            infos.append(info)
        return (
            _stack_obs(obs, self.observation_space),
            np.asarray(rewards, dtype=np.float32),
            np.asarray(dones, dtype=bool),
            infos,
        )

    def close(self) -> None:
        """Stop all workers; never hangs, safe after a worker died, and idempotent."""
        if self.closed:
            return
        self.closed = True
        self.waiting = False
        self._close_workers()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """Return an attribute of each selected env (see ``VecEnv.get_attr``)."""
        return self._request(self._get_indices(indices), "get_attr", attr_name)

    def has_attr(self, attr_name: str) -> bool:
        """Whether every env has the attribute (checked in the workers, nothing is pickled)."""
        return all(self._request(range(self.num_envs), "has_attr", attr_name))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set an attribute on each selected env (see ``VecEnv.set_attr``)."""
        self._request(self._get_indices(indices), "set_attr", (attr_name, value))

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        """Call a method of each selected env and return the results (see ``VecEnv``)."""
        return self._request(self._get_indices(indices), "env_method", (method_name, method_args, method_kwargs))

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        """Whether each selected env is wrapped with ``wrapper_class``."""
        return self._request(self._get_indices(indices), "is_wrapped", wrapper_class)

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Render each env as an RGB array (only with ``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            warnings.warn(
                f"The render mode is {self.render_mode}, but get_images needs 'rgb_array'.",
                stacklevel=2,
            )
            return [None] * self.num_envs
        return self._request(range(self.num_envs), "render", None)
