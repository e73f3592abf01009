"""A process pool for short jobs (benchmark tasks, validation draws) that an interrupt stops."""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any

__all__ = ["ProcessExecutor"]


class ProcessExecutor(cf.ProcessPoolExecutor):
    """A ``concurrent.futures`` process pool that an interrupt (Ctrl-C, or SIGTERM through the
    CLI's handler) stops at once.

    The base class leaves its block by waiting for every task already submitted, queued ones
    included, and a worker that Ctrl-C interrupts goes on to the next task: an interrupted
    benchmark or validation ran to its end. Leaving this one's block on a ``BaseException`` that
    is not an ``Exception`` (``KeyboardInterrupt``, ``SystemExit``) cancels the queued tasks and
    terminates the workers. Any other exit shuts down as the base class does, and a worker that
    dies still surfaces as ``BrokenProcessPool``.
    """

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None or issubclass(exc_type, Exception):
            return super().__exit__(exc_type, exc, tb)
        # CPython keeps the workers and the thread that feeds them in these attributes (3.8 to
        # 3.13; shutdown() drops them); there is no public way to stop a running worker.
        processes = list((getattr(self, "_processes", None) or {}).values())
        manager = getattr(self, "_executor_manager_thread", None)
        self.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=10)
        if manager is not None:
            manager.join(timeout=10)
        return False
