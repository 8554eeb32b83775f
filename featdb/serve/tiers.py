"""Hot-tier helpers: looking ids up in a sorted tier, tier budgets, and where the device tier lives."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ConfigError


def lookup(keys: NDArray[Any], ids: NDArray[Any]) -> tuple[NDArray[Any], NDArray[Any]]:
    if not len(keys):
        return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
    slot = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
    return slot, keys[slot] == ids


def check_budget(tier: str, need: int, budget: int | None) -> None:
    if budget is not None and need > budget:
        raise ConfigError(
            f"the layout puts {need:,} bytes in the {tier} tier, but only {budget:,} bytes "
            f"are allowed: repack with a smaller --{tier}-cache"
        )


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise ConfigError(f"device {device!r}: auto, cpu or cuda[:N]")
    if device == "cpu":
        return "cpu"
    try:
        import torch
    except ImportError:
        if device == "auto":
            return "cpu"
        raise ConfigError("device 'cuda' needs torch installed") from None
    if not torch.cuda.is_available():
        if device == "auto":
            return "cpu"
        raise ConfigError("device 'cuda' asked for, but torch sees no CUDA device")
    return "cuda" if device == "auto" else device
