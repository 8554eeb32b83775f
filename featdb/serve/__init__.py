"""Serving: the tiered reader over a packed generation, its buffers and statistics."""

from .reader import BatchRows, LayoutReader, open_reader
from .stats import ServeStats

__all__ = ["BatchRows", "LayoutReader", "ServeStats", "open_reader"]
