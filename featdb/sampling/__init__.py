"""Offline sampling: the sample-set format, the sampler (DGL, imported lazily) and the trace."""

from .mfg import Batch, Layer
from .offline import EVAL_SPLITS, SampleConfig, dgl_graph, sample
from .sampler import relation_frontier, relation_offsets
from .sampleset import SampleSet

__all__ = [
    "EVAL_SPLITS",
    "Batch",
    "Layer",
    "SampleConfig",
    "SampleSet",
    "dgl_graph",
    "relation_frontier",
    "relation_offsets",
    "sample",
]
