"""Inference precision: bf16 autocast where the hardware computes bf16 natively, fp32 otherwise
or when asked (docs/engineering.md §7).

Everything that only infers — ``evaluate``, ``index``, ``search``, validation during training and
the Python API — takes a precision, one of ``PRECISIONS``:

    auto   bf16 on a GPU of compute capability 8.0 or more and on a CPU with AVX512-BF16 or AMX;
           fp32 anywhere else (bf16 emulated in software is slower than fp32)
    bf16   bf16 autocast wherever asked (slow where emulated)
    fp32   the reference: no autocast

bf16 runs under ``torch.autocast``: the weights stay fp32, matrix products and convolutions run
in bf16, and reductions, softmax and normalisation stay in fp32 as autocast's op lists decide.
Embeddings leave the model cast to fp32, so ranking and scoring are fp32 either way.

The module imports no torch at import time: configs validate their precision key with
``check_precision``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from ..errors import ConfigError

PRECISIONS = ("auto", "bf16", "fp32")


def check_precision(value: str, key: str) -> None:
    """A one-line ``ConfigError`` naming ``key`` unless ``value`` is one of ``PRECISIONS``."""
    if value not in PRECISIONS:
        raise ConfigError(f"config key '{key}': expected auto, bf16 or fp32, got {value!r}")


def native_bf16(device: Any) -> bool:
    """Whether ``device`` (a torch.device) computes bf16 in hardware: a GPU of compute capability
    8.0 or more (Ampere on; a V100 emulates it), or a CPU with AVX512-BF16 or AMX tiles."""
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch.cpu's feature probes
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)
    return False


def resolve_precision(precision: str, device: Any) -> str:
    """``"bf16"`` or ``"fp32"``: what ``precision`` means on ``device`` (a torch.device)."""
    check_precision(precision, "precision")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast(precision: str, device: Any) -> contextlib.AbstractContextManager:
    """The context that runs inference at ``precision`` on ``device``: ``torch.autocast`` to
    bf16, or nothing for fp32 (``precision`` may be ``"auto"``)."""
    import torch

    if resolve_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
