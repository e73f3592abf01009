"""A pool of env worker processes that survives dying workers, as an SB3 ``VecEnv``.

One env step is a full training epoch, so a worker can run for minutes, run out of memory, be
killed, or hang on a GPU. ``EnvPool`` is a ``SubprocVecEnv`` for that setting:

* an exception inside an env is raised in the parent as ``EnvWorkerError``, carrying the
  worker's own traceback, device and workload (never a bare ``EOFError``);
* a worker that dies (SIGKILL, OOM) or exceeds ``step_timeout`` is replaced by a fresh one built
  from the same factory and slot; that env's step is reported as a truncated episode end
  (``infos[i]["worker_restarted"]``), so training goes on;
* every receive is bounded, and ``close()`` never hangs.

Workers are started with ``forkserver`` (default) or ``spawn``, never ``fork``: a forked child
of a process that has touched CUDA or started threads is not safe. Env factories must therefore
be picklable (module-level functions, ``functools.partial`` of them, or classes).

This module is the process transport; what it shares with the Ray backend is in
``rlagent.pool._base`` (the ``VecEnv`` API, auto-reset) and ``rlagent.pool._supervisor``
(timeouts, restarts, error reports), and what runs inside a worker in ``rlagent.pool._worker``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import signal
import time
from collections.abc import Sequence
from multiprocessing import util as mp_util
from multiprocessing.connection import Connection, wait
from typing import Any

from stable_baselines3.common.vec_env.base_vec_env import CloudpickleWrapper

from rlagent.errors import EnvWorkerError
from rlagent.pool._base import _WorkerPool
from rlagent.pool._supervisor import EnvFn, _Dead
from rlagent.pool._worker import _worker
from rlagent.pool.devices import WorkerSlot

__all__ = ["EnvFn", "EnvPool", "EnvWorkerError"]

logger = logging.getLogger(__name__)

_START_METHODS = ("forkserver", "spawn")


def _exit_reason(process: mp.process.BaseProcess | None) -> str:
    if process is None:
        return "is not running"
    code = process.exitcode
    if code is None:
        return "is unresponsive"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _shutdown_workers(
    processes: list[mp.process.BaseProcess | None],
    conns: list[Connection | None],
    timeout: float,
) -> None:
    """Ask workers to close, wait at most ``timeout`` seconds, then terminate and kill them.

    Module-level (not a method) so that the finalizer holding it does not keep the pool alive.
    """
    for conn in conns:
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send((-1, "close", None))
    deadline = time.monotonic() + timeout
    alive = [p for p in processes if p is not None]
    for process in alive:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in alive:
        if process.is_alive():
            process.terminate()
            process.join(1.0)
        if process.is_alive():
            process.kill()
            process.join(1.0)
    for conn in conns:
        if conn is not None:
            conn.close()
    for process in alive:
        # ValueError: still running after SIGKILL (e.g. stuck in the kernel).
        with contextlib.suppress(ValueError):
            process.close()


class EnvPool(_WorkerPool):
    """SB3 ``VecEnv`` running each env in its own worker process, restarting dead workers.

    Each worker applies its ``WorkerSlot`` (``torch.set_num_threads``, and
    ``torch.cuda.set_device`` for ``cuda:K``) before it builds its env with
    ``env_fns[i](slots[i])``.

    When a worker dies or exceeds ``step_timeout``, a fresh worker is started with the same
    factory and slot and reset (with a seed derived from the env's original seed and the restart
    count). The step that was lost is reported as ``done`` with ``infos[i]`` holding
    ``"worker_restarted": True``, ``"TimeLimit.truncated": True`` (SB3 bootstraps the value
    instead of treating the end as terminal) and ``"terminal_observation"`` (the last
    observation the env returned); ``obs[i]`` is the fresh worker's reset observation and the
    reward is 0. After ``max_restarts`` restarts of one worker the next death raises
    ``EnvWorkerError``.

    Args:
        env_fns: One picklable env factory per env; it receives the worker's slot.
        slots: One ``WorkerSlot`` per env (see ``rlagent.pool.devices.plan_workers``).
        start_method: ``"forkserver"`` (default where available) or ``"spawn"``.
        step_timeout: Seconds to wait for any reply of a running worker (a step is a whole
            epoch, hence the generous default); a worker past it is killed and restarted.
        start_timeout: Seconds a new worker may take to import and build its env.
        close_timeout: Seconds ``close()`` waits for workers to exit before killing them.
        max_restarts: Restarts allowed per worker over the pool's life.

    Attributes:
        slots: The workers' slots, in env order.
        restarts: Number of times each worker has been restarted.

    Raises:
        ValueError: If the arguments do not fit together.
        EnvWorkerError: If a factory raises or a worker dies while the pool starts.
    """

    _log = logger

    def __init__(
        self,
        env_fns: Sequence[EnvFn],
        slots: Sequence[WorkerSlot],
        *,
        start_method: str | None = None,
        step_timeout: float = 600.0,
        start_timeout: float = 300.0,
        close_timeout: float = 10.0,
        max_restarts: int = 3,
    ) -> None:
        super().__init__(
            env_fns,
            slots,
            step_timeout=step_timeout,
            start_timeout=start_timeout,
            close_timeout=close_timeout,
            max_restarts=max_restarts,
        )
        if start_method is None:
            start_method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        if start_method not in _START_METHODS:
            raise ValueError(
                f"start_method must be one of {_START_METHODS}, got {start_method!r} "
                "(fork is unsafe once torch/CUDA or threads are in use)"
            )
        n_envs = len(env_fns)
        self._ctx = mp.get_context(start_method)
        self._env_fns = [CloudpickleWrapper(fn) for fn in env_fns]
        self._processes: list[mp.process.BaseProcess | None] = [None] * n_envs
        self._conns: list[Connection | None] = [None] * n_envs
        # Lists are mutated in place on restart, so the finalizer always sees the live workers.
        # exitpriority makes multiprocessing's atexit hook run it before joining children.
        self._finalizer = mp_util.Finalize(
            self,
            _shutdown_workers,
            args=(self._processes, self._conns, self.close_timeout),
            exitpriority=10,
        )
        self._seq = 0
        self._expected: list[int] = [0] * n_envs
        self._start_all()

    @property
    def pids(self) -> list[int | None]:
        """Process id of each worker (None for a worker that is not running)."""
        return [p.pid if p is not None else None for p in self._processes]

    # ---------------------------------------------------------------------------- transport

    def _start_worker(self, i: int) -> None:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        # Not a daemon: an env may start its own processes (e.g. DataLoader workers). The
        # finalizer stops the workers at exit instead.
        process = self._ctx.Process(
            target=_worker,
            args=(child_conn, self._env_fns[i], self.slots[i], i),
            name=f"rlagent-env-{i}",
            daemon=False,
        )
        process.start()
        child_conn.close()
        self._processes[i] = process
        self._conns[i] = parent_conn
        self._expected[i] = 0  # the "env built" message

    def _build_hint(self, i: int, *, restart: bool) -> str:
        # A worker that fails to start the first time most often cannot unpickle its factory.
        return "" if restart else " (see its stderr; can a fresh process import the env factory by name?)"

    def _stop_worker(self, i: int) -> None:
        """Kill worker ``i`` at once (it is dead or hung, so there is no point asking)."""
        process, conn = self._processes[i], self._conns[i]
        self._processes[i] = None
        self._conns[i] = None
        if conn is not None:
            conn.close()
        if process is not None:
            if process.is_alive():
                process.kill()
            process.join(5.0)
            with contextlib.suppress(ValueError):
                process.close()

    def _close_workers(self) -> None:
        self._finalizer()

    def _send(self, i: int, cmd: str, data: Any) -> bool:
        """Send a command to worker ``i``; False if its pipe is gone (the worker died)."""
        conn = self._conns[i]
        if conn is None:
            return False
        self._seq += 1
        self._expected[i] = self._seq
        try:
            conn.send((self._seq, cmd, data))
        except (OSError, ValueError):
            return False
        return True

    def _gone_reason(self, i: int) -> str:
        return _exit_reason(self._processes[i])

    def _wait(self, indices: list[int], deadline: float) -> dict[int, tuple[str, Any] | _Dead]:
        """Receive one reply from each worker until ``deadline``, or a ``_Dead`` if it dies.

        Waits on the pipes and on the process sentinels together, so a dead worker is noticed
        at once even if a child of it still holds its end of the pipe. Replies to earlier
        commands (left over after an interrupted wait or a cancelled step) are dropped.
        """
        pending = set(indices)
        replies: dict[int, tuple[str, Any] | _Dead] = {}
        while pending:
            by_conn = {self._conns[i]: i for i in pending}
            by_sentinel = {self._processes[i].sentinel: i for i in pending}
            remaining = deadline - time.monotonic()
            ready = wait([*by_conn, *by_sentinel], timeout=remaining) if remaining > 0 else []
            if not ready:
                break
            for obj in ready:
                i = by_conn.get(obj) if isinstance(obj, Connection) else by_sentinel.get(obj)
                if i is None or i not in pending:
                    continue
                conn = self._conns[i]
                try:
                    # A dead worker's last reply may still sit in the pipe.
                    if isinstance(obj, Connection) or conn.poll(0):
                        seq, status, payload = conn.recv()
                        if seq != self._expected[i]:
                            continue  # stale reply; keep waiting for the current one
                        replies[i] = (status, payload)
                    else:
                        replies[i] = _Dead(_exit_reason(self._processes[i]))
                except (EOFError, OSError):
                    self._processes[i].join(1.0)
                    replies[i] = _Dead(_exit_reason(self._processes[i]))
                pending.discard(i)
        return replies
