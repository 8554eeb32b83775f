"""Offline sampling: the sample-set format, the sampler (DGL, imported lazily) and the trace."""

from .mfg import Batch, Layer
from .sampleset import SampleSet

__all__ = ["Batch", "Layer", "SampleSet"]
