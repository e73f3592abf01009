"""Tests for rlagent.pool.devices: worker planning on fake machines."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from rlagent.pool.devices import WorkerSlot, plan_workers, visible_cpu_count


def _plan(slots: list[WorkerSlot]) -> list[tuple[str, int]]:
    return [(s.device, s.num_threads) for s in slots]


def test_cpu_threads_are_split_between_workers() -> None:
    assert _plan(plan_workers(2, cpu_count=2, cuda_count=0)) == [("cpu", 1), ("cpu", 1)]
    assert _plan(plan_workers(1, cpu_count=2, cuda_count=0)) == [("cpu", 2)]
    assert _plan(plan_workers(3, cpu_count=8, cuda_count=0)) == [("cpu", 2)] * 3


def test_cpu_defaults_to_one_worker_per_core() -> None:
    assert _plan(plan_workers(None, cpu_count=2, cuda_count=0)) == [("cpu", 1), ("cpu", 1)]
    assert _plan(plan_workers(None, "auto", cpu_count=4, cuda_count=0)) == [("cpu", 1)] * 4


def test_more_workers_than_cores_still_get_one_thread() -> None:
    assert _plan(plan_workers(5, cpu_count=2, cuda_count=0)) == [("cpu", 1)] * 5


def test_auto_uses_one_env_per_cuda_device() -> None:
    slots = plan_workers(None, "auto", cpu_count=16, cuda_count=4)
    assert _plan(slots) == [("cuda:0", 4), ("cuda:1", 4), ("cuda:2", 4), ("cuda:3", 4)]
    assert [s.cuda_index for s in slots] == [0, 1, 2, 3]


def test_auto_assigns_cuda_devices_round_robin() -> None:
    slots = plan_workers(6, None, cpu_count=12, cuda_count=4)
    assert [s.device for s in slots] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3", "cuda:0", "cuda:1"]
    assert all(s.num_threads == 2 for s in slots)


def test_explicit_device_list_is_round_robin() -> None:
    slots = plan_workers(4, "cuda:0, cuda:1", cpu_count=2, cuda_count=2)
    assert _plan(slots) == [("cuda:0", 1), ("cuda:1", 1), ("cuda:0", 1), ("cuda:1", 1)]
    assert _plan(plan_workers(None, ["cpu", "cpu"], cpu_count=2, cuda_count=0)) == [("cpu", 1)] * 2
    assert _plan(plan_workers(None, ["CUDA", "cpu"], cpu_count=4, cuda_count=1)) == [
        ("cuda:0", 2),
        ("cpu", 2),
    ]


@pytest.mark.parametrize(
    ("devices", "cuda_count", "expected"),
    [
        ("gpu", 4, "'gpu'"),
        ("cuda:4", 4, "'cuda:4'"),
        ("cuda:-1", 4, "'cuda:-1'"),
        ("cuda:x", 4, "'cuda:x'"),
        ("cuda", 0, "'cuda'"),
        (["cpu", "tpu"], 0, "'tpu'"),
        (["cpu", 3], 0, "3"),
    ],
)
def test_bad_device_names_the_value_and_what_is_allowed(
    devices: str | list[object], cuda_count: int, expected: str
) -> None:
    with pytest.raises(ValueError, match="expected 'cpu'") as info:
        plan_workers(2, devices, cpu_count=2, cuda_count=cuda_count)  # type: ignore[arg-type]
    assert expected in str(info.value)
    assert f"{cuda_count} CUDA device" in str(info.value)


def test_cuda_out_of_range_lists_allowed_indices() -> None:
    with pytest.raises(ValueError, match=r"'cuda:2' is not available.*0 <= N < 2"):
        plan_workers(None, "cuda:0,cuda:2", cpu_count=2, cuda_count=2)


@pytest.mark.parametrize("devices", ["", " ", []])
def test_empty_device_list_is_rejected(devices: str | list[str]) -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        plan_workers(2, devices, cpu_count=2, cuda_count=0)


@pytest.mark.parametrize("n_envs", [0, -1, 1.5, True])
def test_bad_n_envs_is_rejected(n_envs: object) -> None:
    with pytest.raises(ValueError, match="n_envs must be a positive integer"):
        plan_workers(n_envs, cpu_count=2, cuda_count=0)  # type: ignore[arg-type]


def test_real_machine_defaults() -> None:
    slots = plan_workers(None, "cpu")
    assert len(slots) == 1
    assert slots[0].num_threads == visible_cpu_count()
    assert all(s.num_threads >= 1 for s in plan_workers(None))


def test_worker_slot_is_frozen_and_validated() -> None:
    slot = WorkerSlot("cpu", 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        slot.num_threads = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="num_threads"):
        WorkerSlot("cpu", 0)
    assert slot.cuda_index is None
    assert WorkerSlot("cuda:3", 1).cuda_index == 3


def test_applying_a_slot_sets_threads_and_only_the_asked_for_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(("threads", n)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("device", i)))
    WorkerSlot("cpu", 3).apply()
    WorkerSlot("cuda:2", 1).apply()
    WorkerSlot("cuda:1", 2).apply(cuda=False)  # e.g. a Ray task that holds no GPU
    assert calls == [("threads", 3), ("threads", 1), ("device", 2), ("threads", 2)]
