"""Tests for rlagent.pool.executor: a process pool that an interrupt stops at once."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import signal
import time

import pytest

from rlagent.pool.executor import ProcessExecutor


def _pool(workers: int) -> ProcessExecutor:
    return ProcessExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))


def test_an_interrupt_cancels_the_queued_tasks_and_terminates_the_running_ones() -> None:
    with pytest.raises(KeyboardInterrupt), _pool(2) as pool:
        futures = [pool.submit(time.sleep, 60) for _ in range(6)]
        deadline = time.monotonic() + 60
        while sum(f.running() for f in futures) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = list(pool._processes.values())
        raise KeyboardInterrupt
    # the base class would wait out all six 60-s sleeps (3 min on 2 workers) and end its workers normally
    assert [w.exitcode for w in workers] == [-signal.SIGTERM] * 2
    assert sum(f.cancelled() for f in futures) >= 2  # some were still queued in the parent
    assert all(f.done() for f in futures)


def test_other_exits_shut_down_as_the_base_class_does() -> None:
    with _pool(2) as pool:
        futures = [pool.submit(abs, -i) for i in range(8)]
    assert [f.result() for f in futures] == list(range(8))
    with pytest.raises(ValueError, match="mine"), _pool(1) as pool:
        future = pool.submit(abs, -3)
        raise ValueError("mine")
    assert future.result() == 3  # an ordinary error still lets submitted work finish
    with pytest.raises(cf.process.BrokenProcessPool), _pool(1) as pool:  # a dead worker still surfaces
        pool.submit(signal.raise_signal, signal.SIGKILL).result()
