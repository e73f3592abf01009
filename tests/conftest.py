"""Shared test setup: one torch thread.

The test models are tiny, so intra-op threads only add overhead, and on a small machine running
other work beside the tests they oversubscribe the cores (an MNIST-1D GRU epoch goes from ~0.5 s
to several seconds). One thread is also the setting the benchmark numbers are measured with.
"""

from __future__ import annotations

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(1)
