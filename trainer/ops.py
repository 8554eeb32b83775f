"""Message-passing primitives over MFG index tensors, in plain torch >= 2.0: neighbour sums and means,
attention-weighted sums, edge softmax, the seeds' rows — each with a sparse-CSR path (CPU, enough work)
and an ``index_select`` + ``index_add_`` path with one meaning."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from trainer.mfg import TorchBatch, TorchLayer

# ---------------------------------------------------------------------------
# primitives
#
# Aggregation has two implementations with one meaning. On CPU (float32/64),
# for layers with enough work, a layer's edges become a CSR matrix and
# aggregation is one sparse-dense matmul (MKL): no [E, D] message tensor is
# ever built, which makes the input layer of a SAGE step several times cheaper
# than gather + index_add_. Small layers and other devices (CUDA, half
# precision) use index_select + index_add_, which every torch >= 2.0 runs
# well: MKL's sparse kernels start their thread pool on every call, a fixed
# cost of milliseconds when the cores are busy with other pipeline stages.
# Multi-head layers use the CSR path on an expanded graph: node (n, h) is row
# n * heads + h, so one matmul serves all heads.

CSR_MIN_WORK = 1 << 22
"""Edges x feature width below which aggregation takes the index path even on CPU."""


def _warm_up_sparse_csr() -> None:
    """Create one CSR tensor with torch's once-per-process 'beta' warning silenced.

    torch warns on the first sparse CSR tensor a process makes; doing it here,
    at import, keeps that warning out of training loops (and out of tests run
    with warnings as errors).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Ss]parse CSR tensor support is in beta")
        torch.sparse_csr_tensor(
            torch.zeros(2, dtype=torch.int64),
            torch.zeros(0, dtype=torch.int64),
            torch.zeros(0),
            (1, 1),
        )


_warm_up_sparse_csr()


def uses_csr(t: Tensor) -> bool:
    """Whether aggregations over ``t`` may take the CSR path (CPU, float32/float64)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)


def _take_csr(layer: TorchLayer, t: Tensor, work_per_edge: int) -> bool:
    """Whether one aggregation over ``layer`` takes the CSR path."""
    return uses_csr(t) and layer.num_edges * work_per_edge >= CSR_MIN_WORK


@dataclass(frozen=True, slots=True)
class _Pattern:
    """A CSR sparsity pattern over a layer's edges.

    Entry ``k`` holds ``values[take[k]]`` of a flat per-edge (edge-major,
    head-minor) value vector, so one pattern serves any values on those edges.
    Columns within a row keep edge order and may repeat (multi-edges): the
    matmul kernels sum them, which is what aggregation means.
    """

    crow: Tensor  # int64 [rows + 1]
    col: Tensor  # int64 [nnz]
    take: Tensor  # int64 [nnz]
    shape: tuple[int, int]

    def matrix(self, values: Tensor) -> Tensor:
        """The sparse CSR matrix holding ``values`` (flat, in edge order)."""
        return torch.sparse_csr_tensor(self.crow, self.col, values.index_select(0, self.take), self.shape)


def _pattern(rows: Tensor, cols: Tensor, n_rows: int, n_cols: int, heads: int = 1) -> _Pattern:
    """The CSR pattern of edges ``rows[e] -> cols[e]``, optionally as ``heads`` copies.

    With ``heads > 1`` row ``(r, h)`` is ``r * heads + h`` and column
    ``(c, h)`` is ``c * heads + h``: a block-diagonal graph, one block per head.
    """
    num_edges = rows.numel()
    if num_edges > 1 and not bool((rows[1:] >= rows[:-1]).all()):
        order = torch.argsort(rows, stable=True)
        rows, cols = rows.index_select(0, order), cols.index_select(0, order)
    else:
        order = torch.arange(num_edges, dtype=torch.int64, device=rows.device)
    deg = torch.bincount(rows, minlength=n_rows)
    crow = rows.new_zeros(n_rows + 1)
    torch.cumsum(deg, 0, out=crow[1:])
    if heads == 1:
        return _Pattern(crow, cols, order, (n_rows, n_cols))
    head = torch.arange(heads, dtype=torch.int64, device=rows.device)
    start = crow.index_select(0, rows)
    within = torch.arange(num_edges, dtype=torch.int64, device=rows.device) - start
    pos = (start * heads + within)[:, None] + head[None, :] * deg.index_select(0, rows)[:, None]
    pos = pos.reshape(-1)
    col = torch.empty_like(pos)
    col[pos] = (cols[:, None] * heads + head[None, :]).reshape(-1)
    take = torch.empty_like(pos)
    take[pos] = (order[:, None] * heads + head[None, :]).reshape(-1)
    row_starts = (crow[:-1, None] * heads + head[None, :] * deg[:, None]).reshape(-1)
    crow_big = torch.cat([row_starts, crow.new_full((1,), num_edges * heads)])
    return _Pattern(crow_big, col, take, (n_rows * heads, n_cols * heads))


class _SpMM(torch.autograd.Function):
    """``A @ dense`` for a CSR ``A`` whose values come from a flat per-edge vector.

    Backward: ``A^T @ grad`` for the dense operand (the transposed pattern is
    built only then) and a sampled dense-dense product for the values.
    """

    @staticmethod
    def forward(
        ctx: Any,
        values: Tensor,
        dense: Tensor,
        forward_pattern: _Pattern,
        transposed: Callable[[], _Pattern],
    ) -> Tensor:
        ctx.forward_pattern = forward_pattern
        ctx.transposed = transposed
        ctx.save_for_backward(values, dense)
        return forward_pattern.matrix(values) @ dense

    @staticmethod
    @once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        values, dense = ctx.saved_tensors
        grad = grad.contiguous()
        grad_values = grad_dense = None
        if ctx.needs_input_grad[0]:
            pattern: _Pattern = ctx.forward_pattern
            sampled = torch.sparse.sampled_addmm(pattern.matrix(values), grad, dense.t(), beta=0.0)
            grad_values = torch.empty_like(values)
            grad_values[pattern.take] = sampled.values()
        if ctx.needs_input_grad[1]:
            grad_dense = ctx.transposed().matrix(values) @ grad
        return grad_values, grad_dense, None, None


def _csr_aggregate(layer: TorchLayer, values: Tensor, dense: Tensor, heads: int) -> Tensor:
    """``out[d] = sum over edges e -> d of values[e] * dense[src[e]]``, head by head.

    ``values`` is [E * heads] (edge-major), ``dense`` [num_src * heads, F];
    the result is [num_dst * heads, F].
    """
    forward_pattern = _pattern(layer.dst, layer.src, layer.num_dst, layer.num_src, heads)

    def transposed() -> _Pattern:
        return _pattern(layer.src, layer.dst, layer.num_src, layer.num_dst, heads)

    out: Tensor = _SpMM.apply(values, dense, forward_pattern, transposed)  # type: ignore[no-untyped-call]
    return out


def in_degrees(layer: TorchLayer) -> Tensor:
    """Number of sampled in-edges of each destination node (int64 [num_dst]).

    ``index_add_`` rather than ``bincount``: on CUDA it needs no host sync.
    """
    deg = layer.dst.new_zeros(layer.num_dst)
    return deg.index_add_(0, layer.dst, torch.ones_like(layer.dst))


def sum_neighbours(layer: TorchLayer, h_src: Tensor) -> Tensor:
    """Sum of ``h_src`` over each destination's in-edges (index path, any device)."""
    out = h_src.new_zeros((layer.num_dst, *h_src.shape[1:]))
    return out.index_add_(0, layer.dst, h_src.index_select(0, layer.src))


def mean_neighbours(layer: TorchLayer, h_src: Tensor) -> Tensor:
    """Mean of ``h_src`` [num_src, D] over each destination's in-edges; 0 where there are none."""
    deg = in_degrees(layer).clamp_(min=1).to(h_src.dtype)
    if h_src.dim() == 2 and _take_csr(layer, h_src, h_src.shape[1]):
        weights = deg.reciprocal_().index_select(0, layer.dst)
        return _csr_aggregate(layer, weights, h_src.contiguous(), 1)
    total = sum_neighbours(layer, h_src)
    return total / deg.view(-1, *([1] * (total.dim() - 1)))


def weighted_sum(layer: TorchLayer, weights: Tensor, feat: Tensor) -> Tensor:
    """Per-head weighted sum of neighbour features.

    ``weights`` [E, heads], ``feat`` [num_src, heads, F] -> [num_dst, heads, F]
    with ``out[d, h] = sum over edges e -> d of weights[e, h] * feat[src[e], h]``.
    """
    num_src, heads, width = feat.shape
    if _take_csr(layer, feat, heads * width):
        flat = feat.contiguous().view(num_src * heads, width)
        out = _csr_aggregate(layer, weights.reshape(-1), flat, heads)
        return out.view(layer.num_dst, heads, width)
    messages = feat.index_select(0, layer.src) * weights.unsqueeze(-1)
    return messages.new_zeros(layer.num_dst, heads, width).index_add_(0, layer.dst, messages)


def edge_softmax(layer: TorchLayer, scores: Tensor) -> Tensor:
    """Softmax of per-edge ``scores`` [E, ...] over each destination's in-edges.

    Stable: the per-destination maximum (a constant, hence detached) is
    subtracted before ``exp``.
    """
    index = layer.dst.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores)
    peak = scores.new_full((layer.num_dst, *scores.shape[1:]), float("-inf"))
    peak = peak.scatter_reduce_(0, index, scores.detach(), reduce="amax", include_self=True)
    weights = torch.exp(scores - peak.index_select(0, layer.dst))
    denom = weights.new_zeros(peak.shape).index_add_(0, layer.dst, weights)
    return weights / denom.index_select(0, layer.dst)


def seed_rows(batch: TorchBatch) -> Tensor:
    """Rows of the input matrix ``x`` that hold the seeds, in seed order.

    Composes ``dst_in_src`` from the last layer back to layer 0.
    """
    rows = batch.layers[-1].dst_in_src
    for layer in reversed(batch.layers[:-1]):
        rows = layer.dst_in_src.index_select(0, rows)
    return rows


def _check_depth(batch: TorchBatch, n_layers: int, x: Tensor) -> None:
    """Raise ``ValueError`` if the batch does not match the model's depth or ``x``."""
    if len(batch.layers) != n_layers:
        raise ValueError(f"model has {n_layers} layers but the batch has {len(batch.layers)}")
    if x.shape[0] != batch.layers[0].num_src:
        raise ValueError(f"x has {x.shape[0]} rows but layer 0 has {batch.layers[0].num_src} sources")
