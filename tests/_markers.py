"""Markers shared by test modules."""

from __future__ import annotations

import importlib.util

import pytest

requires_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None, reason="Ray is not installed (pip install 'rlagent[ray]')"
)
