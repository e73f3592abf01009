"""Bounded reading of a policy directory's two files: ``policy.json`` and ``policy.safetensors``.

Both files are untrusted, so neither may cost more than a policy of the allow-listed size:

* ``policy.json`` is refused above :data:`MAX_JSON_BYTES`, nested deeper than
  :data:`MAX_JSON_DEPTH`, holding more than :data:`MAX_JSON_VALUES` values, NaN/infinite
  numbers or integers of more than :data:`MAX_INT_DIGITS` digits; its content is covered by ``json_sha256``, the SHA-256 of its
  canonical encoding (:func:`json_digest`), so editing the JSON alone is noticed.
* ``policy.safetensors`` is first compared by size with what the JSON's architecture needs
  (:func:`expected_shapes`), then hashed in a stream, then its header (names, dtypes, shapes,
  offsets) is checked against that architecture, and only then are tensors created -- so
  nothing is built and no large buffer is allocated for weights that cannot fit.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from gymnasium import spaces
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from rlagent.errors import PolicyFileError

MAX_JSON_BYTES = 1024 * 1024
"""Largest ``policy.json`` read (a real one is ~5 KB; the spec record makes it grow a little)."""
MAX_JSON_DEPTH = 32
"""Deepest nesting of objects/arrays accepted in ``policy.json`` (a real one nests 5 deep)."""
MAX_INT_DIGITS = 40
"""Longest integer accepted in ``policy.json`` (longer than ~4300 digits fails to parse at all)."""
MAX_JSON_VALUES = 100_000
"""Most values (array items and object members) in ``policy.json`` (a real one has ~200)."""
MAX_PARAMS = 2_000_000
"""Most parameters an allow-listed policy may have (8 MB of float32; the shipped one has ~11k)."""
DIGEST_FIELD = "json_sha256"
"""Field of ``policy.json`` holding :func:`json_digest` of the rest of the document."""
_MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10)) + 1
_BYTES_PER_PARAM = 4  # SB3 policies are float32
_HEADER_BASE = 4096
_HEADER_PER_TENSOR = 256


# --------------------------------------------------------------------------------------- JSON


def _parse_constant(text: str) -> float:
    raise ValueError(f"{text} is not a JSON number")


def _check_values(doc: Any, what: str) -> None:
    """Depth, value count and numbers of parsed JSON, without recursion; stops at the first excess."""
    count, stack = 0, [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise PolicyFileError(f"{what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)")
        children = list(value.values()) if isinstance(value, dict) else value
        count += len(children)
        if count > MAX_JSON_VALUES:
            raise PolicyFileError(f"{what} holds more than {MAX_JSON_VALUES} values, more than a policy file can")
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, depth + 1))
            elif isinstance(child, float) and not math.isfinite(child):
                raise PolicyFileError(f"{what} is not valid JSON: a number too large for a float")
            elif isinstance(child, int) and child.bit_length() > _MAX_INT_BITS:
                raise PolicyFileError(f"{what} is not valid JSON: an integer of more than {MAX_INT_DIGITS} digits")


def loads_bounded(data: bytes, what: str) -> Any:
    """Parse untrusted JSON with bounded cost, or raise :class:`PolicyFileError` naming ``what``.

    Args:
        data: The raw bytes (UTF-8).
        what: What is being read, for messages (a path).

    Returns:
        The parsed document.
    """
    try:
        doc = json.loads(data.decode("utf-8"), parse_constant=_parse_constant)
    except RecursionError:
        raise PolicyFileError(f"{what} is nested too deeply (at most {MAX_JSON_DEPTH} levels)") from None
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError is a ValueError
        raise PolicyFileError(f"{what} is not valid JSON (truncated or corrupt?): {str(exc)[:200]}") from None
    _check_values([doc], what)
    return doc


def read_json(json_path: Path) -> dict[str, Any]:
    """Read ``policy.json`` (size, depth and numbers bounded) into a dict."""
    size = json_path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise PolicyFileError(f"{json_path} is {size} bytes, more than a policy file can be ({MAX_JSON_BYTES})")
    with json_path.open("rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)  # the file may have grown since stat()
    if len(data) > MAX_JSON_BYTES:
        raise PolicyFileError(f"{json_path} is more than {MAX_JSON_BYTES} bytes, more than a policy file can be")
    doc = loads_bounded(data, str(json_path))
    if not isinstance(doc, dict):
        raise PolicyFileError(f"{json_path} must hold a JSON object, found {type(doc).__name__}")
    return doc


def json_digest(doc: Mapping[str, Any]) -> str:
    """SHA-256 of ``doc``'s canonical JSON encoding, leaving out :data:`DIGEST_FIELD` itself.

    Args:
        doc: A parsed (plain JSON) ``policy.json`` document.

    Returns:
        The hex digest stored under :data:`DIGEST_FIELD`.
    """
    rest = {k: v for k, v in doc.items() if k != DIGEST_FIELD}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def check_json_digest(doc: Mapping[str, Any], json_path: Path) -> None:
    """Refuse a ``policy.json`` whose content does not match its recorded digest."""
    recorded = doc.get(DIGEST_FIELD)
    if not _is_sha256(recorded):
        raise PolicyFileError(
            f"{json_path}: field {DIGEST_FIELD!r} must be a SHA-256 hex digest, found {recorded!r:.80}"
        )
    found = json_digest(doc)
    if found != recorded.lower():
        raise PolicyFileError(
            f"{json_path}: content does not match its {DIGEST_FIELD} (records {recorded[:16]}..., content has "
            f"{found[:16]}...): policy.json was edited or corrupted after it was saved"
        )


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdefABCDEF" for c in value)


# ------------------------------------------------------------------------------------ weights


def expected_shapes(
    n_obs: int,
    action_space: spaces.MultiDiscrete | spaces.Box,
    net_arch: Mapping[str, list[int]],
    lstm_hidden_size: int = 0,
) -> dict[str, tuple[int, ...]]:
    """The ``state_dict`` shapes of SB3's ``ActorCriticPolicy`` for an allow-listed MLP, without building it.

    Args:
        n_obs: Length of the flat observation.
        action_space: A flat ``MultiDiscrete`` or ``Box`` action space.
        net_arch: ``{"pi": [...], "vf": [...]}`` hidden widths.
        lstm_hidden_size: For sb3-contrib's ``RecurrentActorCriticPolicy``, the units of its
            one-layer actor and critic LSTMs, which the MLPs then read; 0 for no LSTM.

    Returns:
        Tensor name -> shape, in SB3's naming.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    last = {}
    for net, key in (("policy_net", "pi"), ("value_net", "vf")):
        width = lstm_hidden_size or n_obs
        for i, units in enumerate(net_arch[key]):
            shapes[f"mlp_extractor.{net}.{2 * i}.weight"] = (units, width)
            shapes[f"mlp_extractor.{net}.{2 * i}.bias"] = (units,)
            width = units
        last[key] = width
    if isinstance(action_space, spaces.MultiDiscrete):
        n_out = int(sum(int(n) for n in action_space.nvec))
    else:
        n_out = int(action_space.shape[0])
        shapes["log_std"] = (n_out,)
    shapes["action_net.weight"] = (n_out, last["pi"])
    shapes["action_net.bias"] = (n_out,)
    shapes["value_net.weight"] = (1, last["vf"])
    shapes["value_net.bias"] = (1,)
    if lstm_hidden_size:
        gates = 4 * lstm_hidden_size  # input, forget, cell and output gates, stacked
        for lstm in ("lstm_actor", "lstm_critic"):
            shapes[f"{lstm}.weight_ih_l0"] = (gates, n_obs)
            shapes[f"{lstm}.weight_hh_l0"] = (gates, lstm_hidden_size)
            shapes[f"{lstm}.bias_ih_l0"] = (gates,)
            shapes[f"{lstm}.bias_hh_l0"] = (gates,)
    return shapes


def check_param_count(shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Refuse an architecture with more than :data:`MAX_PARAMS` parameters; returns the count."""
    count = sum(math.prod(s) for s in shapes.values())
    if count > MAX_PARAMS:
        raise PolicyFileError(
            f"architecture not allow-listed: {count:,} parameters for these spaces and net_arch; "
            f"allowed: at most {MAX_PARAMS:,}"
        )
    return count


def _misfit(message: str) -> PolicyFileError:
    return PolicyFileError(f"weights do not fit the architecture: {message}")


def _check_header(data: bytes, path: Path, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Check a safetensors header against ``shapes`` before any tensor is created."""
    corrupt = f"{path} is not a valid safetensors file (corrupt or truncated)"
    limit = _HEADER_BASE + _HEADER_PER_TENSOR * len(shapes)
    if len(data) < 8:
        raise PolicyFileError(f"{corrupt}: {len(data)} bytes")
    n = int.from_bytes(data[:8], "little")
    if n > limit or 8 + n > len(data):
        raise PolicyFileError(f"{corrupt}: header of {n} bytes")
    try:
        header = loads_bounded(bytes(data[8 : 8 + n]).rstrip(b" "), f"{path} header")
    except PolicyFileError as exc:
        raise PolicyFileError(f"{corrupt}: {exc}") from None
    if not isinstance(header, dict):
        raise PolicyFileError(f"{corrupt}: header is not an object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise PolicyFileError(f"{corrupt}: __metadata__ must map strings to strings")
    missing, unexpected = sorted(set(shapes) - set(header)), sorted(set(header) - set(shapes))
    if missing or unexpected:
        raise _misfit(f"missing keys {missing}, unexpected keys {unexpected}")
    bad, spans = [], []
    for key, want in shapes.items():
        entry = header[key]
        if not isinstance(entry, dict) or not isinstance(entry.get("shape"), list):
            raise PolicyFileError(f"{corrupt}: entry {key!r} is malformed")
        shape, dtype, offsets = entry["shape"], entry.get("dtype"), entry.get("data_offsets")
        if tuple(shape) != want or dtype != "F32":
            bad.append(f"{key}: file {tuple(shape)!r:.60} {dtype!r:.20}, policy {want} 'F32'")
            continue
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise PolicyFileError(f"{corrupt}: entry {key!r} has data_offsets {offsets!r:.60}")
        if offsets[1] - offsets[0] != math.prod(want) * _BYTES_PER_PARAM:
            raise PolicyFileError(f"{corrupt}: entry {key!r} spans {offsets}, not its shape's size")
        spans.append(tuple(offsets))
    if bad:
        raise _misfit("; ".join(bad))
    end = 0
    for begin, stop in sorted(spans):
        if begin != end:
            raise PolicyFileError(f"{corrupt}: tensors overlap or leave gaps")
        end = stop
    if 8 + n + end != len(data):
        raise PolicyFileError(f"{corrupt}: {len(data)} bytes, the header describes {8 + n + end}")


def read_weights(path: Path, expected_sha: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """Read ``policy.safetensors``: size bound, streamed SHA-256, header check, then tensors.

    Args:
        path: The weights file.
        expected_sha: The SHA-256 ``policy.json`` records for it.
        shapes: What the architecture needs (:func:`expected_shapes`).

    Returns:
        The state dict, float32 CPU tensors of exactly ``shapes``, all finite.

    Raises:
        PolicyFileError: If the file is missing, larger than the architecture needs, does not
            match the hash, is not safetensors, or holds other tensors or non-finite values.
    """
    if not path.is_file():
        raise PolicyFileError(f"missing file: {path}")
    need = sum(math.prod(s) for s in shapes.values()) * _BYTES_PER_PARAM
    limit = 8 + _HEADER_BASE + _HEADER_PER_TENSOR * len(shapes) + need
    size = path.stat().st_size
    if size > limit:
        raise _misfit(f"{path} is {size:,} bytes, more than the {limit:,} that policy.json's architecture needs")
    with path.open("rb") as f:
        found_sha = hashlib.file_digest(f, "sha256").hexdigest()
    if found_sha != expected_sha.lower():
        raise PolicyFileError(
            f"sha256 mismatch for {path}: policy.json records {expected_sha[:16]}..., "
            f"file has {found_sha[:16]}... (weights swapped, modified or truncated)"
        )
    with path.open("rb") as f:
        data = f.read(limit + 1)  # bounded even if the file grew since it was hashed
    if hashlib.sha256(data).hexdigest() != found_sha:
        raise PolicyFileError(f"{path} changed while it was being read")
    _check_header(data, path, shapes)
    try:
        state = load_safetensors(data)
    except (SafetensorError, ValueError, TypeError, RuntimeError, OverflowError) as exc:
        raise PolicyFileError(f"{path} is not a valid safetensors file (corrupt or truncated): {exc}") from None
    nonfinite = sorted(k for k, v in state.items() if not bool(torch.isfinite(v).all()))
    if nonfinite:
        raise PolicyFileError(f"{path}: weights {nonfinite} hold NaN or infinite values")
    return state
