"""The Ray actor that holds one env of :class:`rlagent.pool.ray.RayEnvPool`, and the helpers
that read Ray's replies about it.

The actor answers the pool's commands with the local pool's worker code
(``rlagent.pool._worker._handle``), so both backends answer every call the same way.
"""

from __future__ import annotations

import os
from typing import Any

import gymnasium as gym

from rlagent.pool._supervisor import EnvFn
from rlagent.pool._worker import _error_details, _handle, _MissingAttr
from rlagent.pool.devices import WorkerSlot
from rlagent.pool.ray_cluster import describe_node, import_ray


class _EnvActor:
    """Body of one env actor (made a Ray actor class by ``_actor_class``).

    Replies are ``(status, payload)`` as in the local pool's workers: ``"ok"``,
    ``"attr_error"`` or ``"error"`` (payload: traceback, device, workload). A failure while
    building the env is kept and reported by ``ready()``, so the actor stays alive to say why.
    """

    def __init__(self, env_fn: EnvFn, slot: WorkerSlot) -> None:
        self._slot = slot
        self._env: gym.Env | None = None
        self._build_error: dict[str, Any] | None = None
        env = None
        try:
            slot.apply()
            env = env_fn(slot)
            if not isinstance(env, gym.Env):
                raise TypeError(f"env factory returned {type(env).__name__}, not a gymnasium.Env")
            self._env = env
        except Exception:  # noqa: BLE001 - reported by ready()
            self._build_error = _error_details("build", slot, env)

    def ready(self) -> tuple[str, Any]:
        """``("ok", (node address, node id, where this actor runs))`` once the env is built, else
        the build error."""
        if self._build_error is not None:
            return "error", self._build_error
        import ray

        context = ray.get_runtime_context()
        gpus = context.get_accelerator_ids().get("GPU", [])
        address, node_id = ray.util.get_node_ip_address(), context.get_node_id()
        where = f"node {describe_node(address, node_id)}, pid {os.getpid()}"
        return "ok", (address, node_id, where + (f", GPU {','.join(map(str, gpus))}" if gpus else ""))

    def call(self, cmd: str, data: Any) -> tuple[str, Any]:
        """Run one pool command (``rlagent.pool._worker._handle``) on the env."""
        try:
            return "ok", _handle(self._env, cmd, data)
        except _MissingAttr as exc:
            return "attr_error", str(exc)
        except Exception:  # noqa: BLE001 - reported to the driver
            return "error", _error_details(cmd, self._slot, self._env)

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None


_ACTOR_CLASS: Any = None


def _actor_class() -> Any:
    """The Ray actor class, created on first use (so that importing this module needs no Ray)."""
    global _ACTOR_CLASS
    if _ACTOR_CLASS is None:
        _ACTOR_CLASS = import_ray().remote(_EnvActor)
    return _ACTOR_CLASS


def _death_reason(exc: BaseException) -> str:
    """One line from a Ray death error, e.g. "died (ActorDiedError: ... killed by `ray.kill`.)"."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and not line.startswith("\t")]
    return f"died ({type(exc).__name__}: {' '.join(lines)})"


def actor_slot(slot: WorkerSlot) -> WorkerSlot:
    """The slot as seen inside a Ray actor: a GPU actor sees only its own GPU, as ``cuda:0``."""
    return WorkerSlot("cuda:0", slot.num_threads) if slot.cuda_index is not None else slot
