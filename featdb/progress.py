"""The progress callback every long-running step takes: called with how many units it just finished."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int], None] | None
"""``progress(n)`` after each ``n`` units of work (rows, edges, batches); ``None`` reports nothing."""

__all__ = ["Progress"]
