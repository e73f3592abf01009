"""Several populations, one per worker process (one per GPU or per share of the CPU cores).

:class:`PopulationPool` is one SB3 ``VecEnv`` of ``workers × K`` envs: worker ``w`` owns a
:class:`rlagent.pool.population.PopulationVecEnv` of K members on its slot's device and thread
count, and env ``w·K + j`` is its member ``j``. Commands go to the workers over pipes, all
workers step at once, and an exception inside a worker is raised in the parent as
:class:`rlagent.errors.EnvWorkerError` with the worker's traceback. Unlike
:class:`rlagent.pool.EnvPool` it does not restart dead workers: a worker's death ends the pool
with an ``EnvWorkerError`` naming it.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvObs, VecEnvStepReturn

from rlagent.config import EnvSpec
from rlagent.errors import EnvWorkerError
from rlagent.pool.devices import WorkerSlot

__all__ = ["PopulationPool"]


def _serve(conn: Connection, spec: EnvSpec, slot: WorkerSlot, k: int, workloads: tuple[str, ...], mode: str) -> None:
    """Worker main loop: build the population, then answer ``(cmd, data)`` until ``close``."""
    import signal

    import torch

    from rlagent.pool.population import PopulationVecEnv

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(slot.num_threads)
    if slot.cuda_index is not None:
        torch.cuda.set_device(slot.cuda_index)
    pop = None
    try:
        pop = PopulationVecEnv(k, spec, device=slot.device, workloads=workloads, mode=mode)
        conn.send(("ok", (pop.observation_space, pop.action_space)))
        while True:
            cmd, data = conn.recv()
            if cmd == "close":
                break
            try:
                if cmd == "step":
                    out: Any = pop.step(data)
                elif cmd == "reset":
                    seeds, options = data
                    for j, (s, o) in enumerate(zip(seeds, options)):
                        pop._seeds[j], pop._options[j] = s, o  # what VecEnv.seed()/set_options() set
                    out = (pop.reset(), pop.reset_infos)
                elif cmd == "get_attr":
                    out = pop.get_attr(data[0], data[1])
                elif cmd == "set_attr":
                    pop.set_attr(data[0], data[1], data[2])
                    out = []
                elif cmd == "env_method":
                    name, args, kwargs, idx = data
                    out = pop.env_method(name, *args, indices=idx, **kwargs)
                elif cmd == "is_wrapped":
                    out = pop.env_is_wrapped(data[0], data[1])
                else:
                    raise NotImplementedError(f"unknown population command {cmd!r}")
                conn.send(("ok", out))
            except Exception:  # noqa: BLE001 - reported to the parent
                conn.send(("error", traceback.format_exc()))
    except (EOFError, OSError):
        pass
    except Exception:  # noqa: BLE001 - a failed build is reported to the parent
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
    finally:
        if pop is not None:
            pop.close()
        conn.close()


class PopulationPool(VecEnv):
    """``len(slots) × population`` envs: one :class:`PopulationVecEnv` per worker process.

    Args:
        spec: The env spec.
        slots: One ``WorkerSlot`` per worker (see :func:`rlagent.pool.devices.plan_workers`).
        population: Members per worker.
        workloads: Training workloads to draw from.
        mode: Batched-vs-sequential mode of each population (see :class:`rlagent.batched.BatchPlanner`).
        start_method: ``forkserver`` (default where available) or ``spawn``.

    Raises:
        EnvWorkerError: If a worker fails to build its population, raises, or dies.
    """

    def __init__(
        self,
        spec: EnvSpec,
        slots: Sequence[WorkerSlot],
        population: int,
        *,
        workloads: Sequence[str],
        mode: str = "auto",
        start_method: str | None = None,
    ) -> None:
        if not slots:
            raise ValueError("slots must not be empty")
        method = start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        ctx = mp.get_context(method)
        self.slots = tuple(slots)
        self.population = population
        self.closed = False
        self.waiting = False
        self._conns: list[Connection] = []
        self._procs: list[mp.process.BaseProcess] = []
        for w, slot in enumerate(self.slots):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_serve, args=(child, spec, slot, population, tuple(workloads), mode),
                name=f"rlagent-population-{w}", daemon=True,
            )  # fmt: skip
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        try:
            spaces = self._gather(range(len(self.slots)), "build")
        except BaseException:
            self.close()
            raise
        super().__init__(len(self.slots) * population, *spaces[0])

    # ------------------------------------------------------------------------ transport

    def _gather(self, workers: Sequence[int], what: str) -> list[Any]:
        """One reply from each worker (all are read, so none is left in a pipe), then the first error."""
        out, error = [], None
        for w in workers:
            try:
                status, payload = self._conns[w].recv()
            except (EOFError, OSError):
                error = error or self._error(w, what, f"died (exit code {self._procs[w].exitcode})")
                continue
            if status != "ok":
                error = error or self._error(w, what, f"raised:\n{payload}", payload)
            out.append(payload)
        if error is not None:
            raise error
        return out

    def _error(self, w: int, what: str, text: str, tb: str | None = None) -> EnvWorkerError:
        device = self.slots[w].device
        return EnvWorkerError(
            f"population worker {w} (device={device}) {text} during {what}",
            index=w, device=device, workload=None, remote_traceback=tb,
        )  # fmt: skip

    def _send_all(self, cmd: str, per_worker: Sequence[Any]) -> None:
        for w, data in enumerate(per_worker):
            try:
                self._conns[w].send((cmd, data))
            except (OSError, ValueError) as exc:
                raise self._error(w, cmd, "is gone") from exc

    def _split(self, indices: VecEnvIndices) -> dict[int, list[int]]:
        by_worker: dict[int, list[int]] = {}
        for i in self._get_indices(indices):
            by_worker.setdefault(i // self.population, []).append(i % self.population)
        return by_worker

    def _per_worker(self, cmd: str, indices: VecEnvIndices, make: Any) -> list[Any]:
        by_worker = self._split(indices)
        for w, members in by_worker.items():
            self._conns[w].send((cmd, make(members)))
        results = self._gather(list(by_worker), cmd)
        return [r for chunk in results for r in chunk]

    # ------------------------------------------------------------------------ VecEnv API

    def reset(self) -> VecEnvObs:
        k = self.population
        self._send_all(
            "reset",
            [(self._seeds[w * k : (w + 1) * k], self._options[w * k : (w + 1) * k]) for w in range(len(self.slots))],
        )
        replies = self._gather(range(len(self.slots)), "reset")
        self.reset_infos = [info for _, infos in replies for info in infos]
        self._reset_seeds()
        self._reset_options()
        return np.concatenate([obs for obs, _ in replies])

    def step_async(self, actions: np.ndarray) -> None:
        k = self.population
        self._send_all("step", [actions[w * k : (w + 1) * k] for w in range(len(self.slots))])
        self.waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        self.waiting = False
        replies = self._gather(range(len(self.slots)), "step")
        obs, rews, dones, infos = zip(*replies)
        return np.concatenate(obs), np.concatenate(rews), np.concatenate(dones), [i for chunk in infos for i in chunk]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):
                conn.send(("close", None))
        for proc in self._procs:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
                proc.join(1.0)
        for conn in self._conns:
            conn.close()

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return self._per_worker("get_attr", indices, lambda m: (attr_name, m))

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        self._per_worker("set_attr", indices, lambda m: (attr_name, value, m))

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        return self._per_worker("env_method", indices, lambda m: (method_name, method_args, method_kwargs, m))

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return self._per_worker("is_wrapped", indices, lambda m: (wrapper_class, m))
