"""What runs inside an env worker: the command handling shared by both pool backends.

A worker builds its env from the factory and its ``WorkerSlot``, then answers commands from the
parent (``step``, ``reset``, ``get_attr``, ...) until told to close. :func:`_handle` runs one
command on the env; :func:`_worker` is the main loop of a local worker process
(:class:`rlagent.pool.EnvPool`), and the Ray actors of :mod:`rlagent.pool.ray` call
:func:`_handle` and :func:`_error_details` the same way, so both backends answer every call alike.
"""

from __future__ import annotations

import logging
import signal
import traceback
from multiprocessing.connection import Connection
from typing import Any

import gymnasium as gym
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper

from rlagent.pool.devices import WorkerSlot


def _workload_of(env: gym.Env | None) -> str | None:
    if env is None:
        return None
    try:
        return getattr(env.unwrapped, "workload_name", None)
    except Exception:  # noqa: BLE001 - a broken env must not hide the original error
        return None


class _MissingAttr(Exception):
    """An attribute asked for by the parent does not exist (raised as AttributeError there)."""


def _lookup(env: gym.Env, name: str) -> Any:
    try:
        return env.get_wrapper_attr(name)
    except AttributeError as exc:
        raise _MissingAttr(str(exc)) from exc


def _handle(env: gym.Env, cmd: str, data: Any) -> Any:
    """Run one command on the worker's env and return what goes back to the parent."""
    if cmd == "step":
        obs, reward, terminated, truncated, info = env.step(data)
        done = terminated or truncated
        info["TimeLimit.truncated"] = truncated and not terminated
        reset_info: dict[str, Any] = {}
        if done:
            info["terminal_observation"] = obs
            obs, reset_info = env.reset()
        return obs, reward, done, info, reset_info, _workload_of(env)
    if cmd == "reset":
        seed, options = data
        obs, reset_info = env.reset(seed=seed, **({"options": options} if options else {}))
        return obs, reset_info, _workload_of(env)
    if cmd == "get_attr":
        return _lookup(env, data)
    if cmd == "has_attr":
        try:
            env.get_wrapper_attr(data)
        except AttributeError:
            return False
        return True
    if cmd == "set_attr":
        setattr(env, data[0], data[1])
        return None
    if cmd == "env_method":
        name, args, kwargs = data
        return _lookup(env, name)(*args, **kwargs)
    if cmd == "is_wrapped":
        return is_wrapped(env, data)
    if cmd == "render":
        return env.render()
    if cmd == "get_spaces":
        return env.observation_space, env.action_space
    raise NotImplementedError(f"unknown env pool command {cmd!r}")


def _error_details(cmd: str, slot: WorkerSlot, env: gym.Env | None) -> dict[str, Any]:
    return {
        "command": cmd,
        "traceback": traceback.format_exc(),
        "device": slot.device,
        "workload": _workload_of(env),
    }


def _worker(conn: Connection, env_fn: CloudpickleWrapper, slot: WorkerSlot, index: int) -> None:
    """Worker process main loop: build the env, then answer commands until told to close.

    Commands are ``(seq, cmd, data)``; every reply is ``(seq, status, payload)`` with the
    command's ``seq`` (0 for the message sent once the env is built), so the parent can drop
    replies to commands it gave up on. ``status`` is ``"ok"`` (payload: the result),
    ``"attr_error"`` (payload: the message) or ``"error"`` (payload: the formatted traceback,
    device and workload name). An exception in a command is reported and the worker keeps
    serving (the parent decides what to do); one while building the env is reported and the
    worker then waits to be closed.
    """
    # Ctrl-C reaches the whole process group; the parent decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    env: gym.Env | None = None
    try:
        try:
            slot.apply()
            env = env_fn.var(slot)
            if not isinstance(env, gym.Env):
                raise TypeError(f"env factory returned {type(env).__name__}, not a gymnasium.Env")
        except Exception:  # noqa: BLE001 - reported to the parent
            conn.send((0, "error", _error_details("build", slot, env)))
            conn.recv()  # wait for "close" (or EOF)
            return
        conn.send((0, "ok", None))
        while True:
            seq, cmd, data = conn.recv()
            if cmd == "close":
                break
            try:
                reply = (seq, "ok", _handle(env, cmd, data))
            except _MissingAttr as exc:
                reply = (seq, "attr_error", str(exc))
            except Exception:  # noqa: BLE001 - reported to the parent
                reply = (seq, "error", _error_details(cmd, slot, env))
            try:
                conn.send(reply)
            except OSError:
                raise
            except Exception:  # noqa: BLE001 - the reply could not be pickled
                conn.send((seq, "error", _error_details(cmd, slot, env)))
    except (EOFError, OSError):  # the parent is gone
        pass
    finally:
        if env is not None:
            try:
                env.close()
            except Exception:
                logging.getLogger(__name__).exception("env %d: close() raised", index)
        conn.close()
