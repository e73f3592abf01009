"""Small I/O helpers used across the package: atomic writes, JSON encoding, optional imports.

Each exists once here so that every file rlagent writes is either complete or absent, every JSON
file encodes NumPy values and paths the same way, and every optional dependency is reported with
the extra that installs it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from rlagent.errors import RLAgentError

__all__ = ["atomic_dir", "json_default", "optional_import", "replaceable_dir", "write_atomic", "write_json_atomic"]


def json_default(obj: Any) -> Any:
    """``json.dump(default=...)``: NumPy scalars and arrays, paths, sets and tuples as plain JSON."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_json_atomic(path: str | Path, data: Any, *, indent: int = 1) -> None:
    """:func:`write_atomic` of ``data`` as JSON, encoded with :func:`json_default`."""
    write_atomic(path, json.dumps(data, indent=indent, default=json_default) + "\n")


def replaceable_dir(target: Path, marker: str) -> bool:
    """Whether ``target`` is a directory (not a link) that :func:`atomic_dir` may replace: one that
    holds the file ``marker`` (what it wrote there before, beside extras such as a model card) or
    nothing."""
    if not target.is_dir() or target.is_symlink():
        return False
    return (target / marker).is_file() or not any(target.iterdir())


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, keep_extras: tuple[str, ...] | None = None) -> Iterator[Path]:
    """Build a directory in a temporary sibling, then move it to ``target`` in one rename.

    An existing ``target`` is replaced only once the new one is complete. With ``keep_extras``
    (names the new directory writes), whatever else lives in the old directory (a model card,
    plots) is copied over first. On an exception the temporary directory is removed and
    ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if keep_extras is not None and target.is_dir():
            for extra in target.iterdir():
                if extra.name not in keep_extras and not (tmp / extra.name).exists():
                    (shutil.copytree if extra.is_dir() else shutil.copy2)(extra, tmp / extra.name)
        if not target.exists():
            os.replace(tmp, target)
            return
        # rename() cannot replace a non-empty directory: move the old one aside first.
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.replace(target, old)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(old, target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def optional_import(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise an :class:`RLAgentError` naming the extra to install.

    Args:
        module: Module to import, e.g. ``"optuna"``.
        extra: rlagent extra that installs it, e.g. ``"bench"``.
        purpose: What needs it, for the message, e.g. ``"the 'tpe' baseline"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RLAgentError(f"{purpose} needs {module}: pip install 'rlagent[{extra}]'") from exc
