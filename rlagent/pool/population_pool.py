"""Several populations, one per supervised worker: a process per GPU or CPU share, or a Ray actor.

A population worker is an ordinary pool worker whose env is a :class:`PopulationEnv`: the K
members of a :class:`rlagent.pool.population.PopulationVecEnv` seen by the pool as one env that
takes K actions and returns K observations. So the pool that runs it — the local
:class:`rlagent.pool.EnvPool` or :class:`rlagent.pool.ray.RayEnvPool`, one actor per
population — supervises it like any worker: timeouts, a dead or hung worker replaced by a fresh,
reset one, and on Ray a lost node's actor recreated elsewhere or ``ClusterLostError``.

:class:`PopulationPool` turns that pool of ``W`` populations back into one SB3 ``VecEnv`` of
``W × K`` member envs: env ``w·K + j`` is member ``j`` of worker ``w``, seeded ``seed + w·K + j``
like any SB3 ``VecEnv``. When a worker is replaced, each of its K members ends its episode
truncated with ``info["worker_restarted"]`` (the episodes of the other workers go on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from rlagent.config import EnvSpec
from rlagent.pool._base import _WorkerPool
from rlagent.pool.devices import WorkerSlot
from rlagent.pool.population import PopulationVecEnv

__all__ = ["PopulationEnv", "PopulationFactory", "PopulationPool"]


class PopulationEnv(gym.Env):
    """The K members of a population as one env of a pool worker (the pool's side of it).

    ``step`` takes a ``(K, ...)`` array of member actions and returns the ``(K, n_features)``
    observations after SB3's auto-reset, reward 0 and never done: the members' rewards, dones,
    infos and reset infos travel in ``info["members"]``. ``reset(seed=s)`` seeds member ``j``
    with ``s + j``; ``options={"members": [...]}`` gives each member its reset options. Its
    spaces are a member's, so the pool reports the members' spaces.

    Args:
        population: The members.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, population: PopulationVecEnv) -> None:
        self.population = population
        self.observation_space = population.observation_space
        self.action_space = population.action_space

    @property
    def workload_name(self) -> str:
        """The members' current workloads, for the pool's messages."""
        names = [m.workload_name or "-" for m in self.population.members]
        text = ",".join(names)
        return text if len(text) <= 120 else f"{text[:117]}..."

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        pop = self.population
        member_options = list((options or {}).get("members") or [None] * pop.num_envs)
        for j in range(pop.num_envs):
            pop._seeds[j] = None if seed is None else seed + j  # what VecEnv.seed() sets
            pop._options[j] = member_options[j] or {}  # what VecEnv.set_options() sets
        obs = pop.reset()
        return obs, {"members": list(pop.reset_infos)}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        obs, rewards, dones, infos = self.population.step(np.asarray(action))
        return obs, 0.0, False, False, {"members": (rewards, dones, infos, list(self.population.reset_infos))}

    def member_get_attr(self, name: str, members: list[int]) -> list[Any]:
        return self.population.get_attr(name, members)

    def member_set_attr(self, name: str, value: Any, members: list[int]) -> None:
        self.population.set_attr(name, value, members)

    def member_env_method(self, name: str, args: tuple, kwargs: dict, members: list[int]) -> list[Any]:
        return self.population.env_method(name, *args, indices=members, **kwargs)

    def member_is_wrapped(self, wrapper_class: type, members: list[int]) -> list[bool]:
        return self.population.env_is_wrapped(wrapper_class, members)

    def close(self) -> None:
        self.population.close()


@dataclass(frozen=True)
class PopulationFactory:
    """Builds one :class:`PopulationEnv` of ``population`` members inside a pool worker (picklable)."""

    spec: EnvSpec
    workloads: tuple[str, ...]
    population: int
    mode: str = "auto"

    def __call__(self, slot: WorkerSlot) -> gym.Env:
        return PopulationEnv(
            PopulationVecEnv(
                self.population,
                self.spec,
                device=slot.device,
                num_threads=slot.num_threads,
                workloads=self.workloads,
                mode=self.mode,
            )  # fmt: skip
        )


class PopulationPool(VecEnv):
    """``W × K`` member envs over a pool of ``W`` population workers (see the module doc).

    Args:
        workers: A local or Ray pool whose envs are :class:`PopulationEnv` (built by
            :class:`PopulationFactory`); closed with this pool.
        population: Members per worker, K.
    """

    def __init__(self, workers: _WorkerPool, population: int) -> None:
        self.workers = workers
        self.population = population
        self.slots: tuple[WorkerSlot, ...] = workers.slots
        super().__init__(workers.num_envs * population, workers.observation_space, workers.action_space)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called (or the workers' pool was closed)."""
        return self.workers.closed

    @property
    def restarts(self) -> list[int]:
        """Restarts of each worker so far."""
        return list(self.workers.restarts)

    def _members(self, flat: np.ndarray) -> np.ndarray:
        return flat.reshape(self.num_envs, *flat.shape[2:])

    def reset(self) -> VecEnvObs:
        k = self.population
        for w in range(self.workers.num_envs):
            self.workers._seeds[w] = self._seeds[w * k]  # member j then gets seed + w·K + j
            options = self._options[w * k : (w + 1) * k]
            self.workers._options[w] = {"members": options} if any(options) else {}
        obs = self.workers.reset()
        self.reset_infos = [
            info for w in range(self.workers.num_envs) for info in self.workers.reset_infos[w]["members"]
        ]
        self._reset_seeds()
        self._reset_options()
        return self._members(obs)

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions)
        self.workers.step_async(actions.reshape(self.workers.num_envs, self.population, *actions.shape[1:]))

    def step_wait(self) -> VecEnvStepReturn:
        obs, _, _, worker_infos = self.workers.step_wait()
        rewards, dones, infos, reset_infos = [], [], [], []
        for w, info in enumerate(worker_infos):
            members = self.workers.reset_infos[w].get("members", [{}] * self.population)
            if info.get("worker_restarted"):  # the worker was replaced; its members start afresh
                terminal = info["terminal_observation"]
                rewards += [0.0] * self.population
                dones += [True] * self.population
                infos += [
                    {"worker_restarted": True, "TimeLimit.truncated": True, "terminal_observation": terminal[j]}
                    for j in range(self.population)
                ]
                reset_infos += members
            else:
                m_rewards, m_dones, m_infos, m_reset_infos = info["members"]
                rewards += list(m_rewards)
                dones += list(m_dones)
                infos += list(m_infos)
                reset_infos += list(m_reset_infos)
        self.reset_infos = reset_infos
        return self._members(obs), np.asarray(rewards, dtype=np.float32), np.asarray(dones, dtype=bool), infos

    def close(self) -> None:
        self.workers.close()

    def _call(self, method: str, indices: VecEnvIndices, *args: Any) -> list[Any]:
        """Call a :class:`PopulationEnv` member method once per worker; results in ``indices`` order."""
        flat = list(self._get_indices(indices))
        by_worker: dict[int, list[int]] = {}
        for i in flat:
            by_worker.setdefault(i // self.population, []).append(i % self.population)
        results: dict[int, Any] = {}
        for w, members in by_worker.items():
            replies = self.workers.env_method(method, *args, members, indices=[w])[0]
            for j, reply in zip(members, replies or [None] * len(members)):
                results[w * self.population + j] = reply
        return [results[i] for i in flat]

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._call("member_get_attr", indices, attr_name)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._call("member_set_attr", indices, attr_name, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        return self._call("member_env_method", indices, method_name, method_args, method_kwargs)

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return self._call("member_is_wrapped", indices, wrapper_class)
