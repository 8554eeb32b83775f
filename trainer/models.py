"""GNN models in plain torch over message-flow-graph index tensors.

No DGL, no torch_scatter: message passing is a sparse CSR matmul on CPU and
``index_select`` + ``index_add_`` elsewhere (with ``scatter_reduce`` for the
attention softmax's max), all in torch >= 2.0, so the same code runs on this
machine's torch 2.2 CPU build and on a CUDA torch 2.11. The layers mirror
DGL's parameter names and arithmetic, so the state dict of a
``dgl.nn.SAGEConv(in, out, 'mean')`` or a ``dgl.nn.GATConv`` loads into
:class:`SAGEConv` / :class:`GATConv` and gives the same output.

Every model has ``forward(batch, x)``: ``batch`` a :class:`TorchBatch` and ``x``
the input features, one row per source node of layer 0 (``batch.input_ids``
order); the result has one row per seed.
"""

from __future__ import annotations

import abc
import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

from trainer.mfg import TorchBatch, TorchLayer

__all__ = [
    "GAT",
    "MLP",
    "SAGE",
    "GATConv",
    "SAGEConv",
    "build_model",
    "edge_softmax",
    "mean_neighbours",
    "seed_rows",
    "uses_csr",
    "weighted_sum",
]


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


# ---------------------------------------------------------------------------
# layers

RELU_GAIN = math.sqrt(2.0)
"""``nn.init.calculate_gain('relu')``: the Glorot gain DGL's layers initialise with."""


class SAGEConv(nn.Module):
    """GraphSAGE with the mean aggregator, as ``dgl.nn.SAGEConv(in, out, 'mean')``.

    ``out = fc_self(h_dst) + fc_neigh(mean over in-edges of h_src)``; a
    destination with no sampled in-edges gets a zero neighbour mean.
    """

    def __init__(self, in_feats: int, out_feats: int, feat_drop: float = 0.0, bias: bool = True):
        super().__init__()
        self.in_feats = in_feats
        self.out_feats = out_feats
        self.feat_drop = nn.Dropout(feat_drop)
        self.fc_neigh = nn.Linear(in_feats, out_feats, bias=False)
        self.fc_self = nn.Linear(in_feats, out_feats, bias=bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights with ReLU gain, as DGL initialises them."""
        gain = RELU_GAIN
        nn.init.xavier_uniform_(self.fc_self.weight, gain=gain)
        nn.init.xavier_uniform_(self.fc_neigh.weight, gain=gain)
        if self.fc_self.bias is not None:
            nn.init.zeros_(self.fc_self.bias)

    def forward(self, layer: TorchLayer, h: Tensor) -> Tensor:
        """``h`` [num_src, in_feats] -> [num_dst, out_feats]."""
        h = self.feat_drop(h)
        h_self: Tensor = self.fc_self(h.index_select(0, layer.dst_in_src))
        # Aggregate in the narrower width: project first when that shrinks rows.
        if self.in_feats > self.out_feats:
            return h_self + mean_neighbours(layer, self.fc_neigh(h))
        # h_self + mean @ W_neigh^T in one kernel (saves a pass over the output).
        out: Tensor = torch.addmm(h_self, mean_neighbours(layer, h), self.fc_neigh.weight.t())
        return out


class Identity(nn.Module):
    """A residual connection without parameters (``res_fc`` when widths match)."""

    def forward(self, h: Tensor) -> Tensor:
        """Return ``h`` unchanged."""
        return h


class GATConv(nn.Module):
    """Graph attention, as ``dgl.nn.GATConv(..., allow_zero_in_degree=True)``.

    Output [num_dst, heads, out_feats]. Scores are
    ``leaky_relu(attn_l . Wh_src + attn_r . Wh_dst)``, soft-maxed over each
    destination's in-edges; a destination with no in-edges gets only its
    residual and bias. Parameter names match DGL's, so its state dict loads.
    """

    def __init__(
        self,
        in_feats: int,
        out_feats: int,
        num_heads: int,
        feat_drop: float = 0.0,
        attn_drop: float = 0.0,
        negative_slope: float = 0.2,
        residual: bool = False,
        bias: bool = True,
    ):
        super().__init__()
        self.in_feats = in_feats
        self.out_feats = out_feats
        self.num_heads = num_heads
        self.fc = nn.Linear(in_feats, out_feats * num_heads, bias=False)
        self.attn_l = nn.Parameter(torch.empty(1, num_heads, out_feats))
        self.attn_r = nn.Parameter(torch.empty(1, num_heads, out_feats))
        self.feat_drop = nn.Dropout(feat_drop)
        self.attn_drop = nn.Dropout(attn_drop)
        self.negative_slope = negative_slope
        self.res_fc: nn.Module | None = None
        self.bias: nn.Parameter | None = None
        linear_res = residual and in_feats != out_feats * num_heads
        if residual:
            self.res_fc = nn.Linear(in_feats, out_feats * num_heads, bias=bias) if linear_res else Identity()
        if bias and not linear_res:
            self.bias = nn.Parameter(torch.empty(out_feats * num_heads))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-normal weights with ReLU gain and zero biases, as DGL initialises them."""
        gain = RELU_GAIN
        nn.init.xavier_normal_(self.fc.weight, gain=gain)
        nn.init.xavier_normal_(self.attn_l, gain=gain)
        nn.init.xavier_normal_(self.attn_r, gain=gain)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if isinstance(self.res_fc, nn.Linear):
            nn.init.xavier_normal_(self.res_fc.weight, gain=gain)
            if self.res_fc.bias is not None:
                nn.init.zeros_(self.res_fc.bias)

    def _attention_weights(self) -> Tensor:
        """``attn_l`` and ``attn_r`` folded into ``fc``: [2 * heads, in_feats].

        ``attn_l . (W h)`` per head equals ``(attn_l W) h``, so the per-node
        scores cost one narrow matmul instead of a pass over [N, heads, F].
        """
        weight = self.fc.weight.view(self.num_heads, self.out_feats, self.in_feats)
        left = (weight * self.attn_l.view(self.num_heads, self.out_feats, 1)).sum(dim=1)
        right = (weight * self.attn_r.view(self.num_heads, self.out_feats, 1)).sum(dim=1)
        return torch.cat([left, right], dim=0)

    def forward(self, layer: TorchLayer, h: Tensor) -> Tensor:
        """``h`` [num_src, in_feats] -> [num_dst, num_heads, out_feats]."""
        heads, width = self.num_heads, self.out_feats
        h = self.feat_drop(h)
        feat_src = self.fc(h).view(-1, heads, width)
        node_scores = h @ self._attention_weights().t()  # [num_src, 2 * heads]
        el = node_scores[:, :heads]
        er = node_scores[:, heads:].index_select(0, layer.dst_in_src)
        scores = el.index_select(0, layer.src) + er.index_select(0, layer.dst)
        scores = F.leaky_relu(scores, self.negative_slope)
        attn = self.attn_drop(edge_softmax(layer, scores))  # [E, heads]
        out = weighted_sum(layer, attn, feat_src)
        if self.res_fc is not None:
            out = out + self.res_fc(h.index_select(0, layer.dst_in_src)).view(-1, heads, width)
        if self.bias is not None:
            out = out + self.bias.view(1, heads, width)
        return out


# ---------------------------------------------------------------------------
# models


def _widths(in_dim: int, hidden: int, n_classes: int, n_layers: int) -> list[tuple[int, int]]:
    """(in, out) widths of ``n_layers`` stacked layers; ``ValueError`` if ``n_layers < 1``."""
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    return list(itertools.pairwise([in_dim] + [hidden] * (n_layers - 1) + [n_classes]))


class _ConvStack(nn.Module, abc.ABC):
    """Message-passing layers applied one MFG layer each; :meth:`between` shapes each output."""

    layers: nn.ModuleList

    def forward(self, batch: TorchBatch, x: Tensor) -> Tensor:
        """Logits [num_seeds, n_classes] from input rows ``x`` [num_src of layer 0, in_dim]."""
        _check_depth(batch, len(self.layers), x)
        h = x
        last = len(self.layers) - 1
        for i, (conv, layer) in enumerate(zip(self.layers, batch.layers, strict=True)):
            h = self.between(conv(layer, h), i == last)
        return h

    @abc.abstractmethod
    def between(self, h: Tensor, last: bool) -> Tensor:
        """What follows layer ``i``'s output (``last`` for the final layer)."""


class SAGE(_ConvStack):
    """A stack of mean-aggregator :class:`SAGEConv` layers; ReLU + dropout between them."""

    def __init__(self, in_dim: int, hidden: int, n_classes: int, n_layers: int, dropout: float):
        super().__init__()
        widths = _widths(in_dim, hidden, n_classes, n_layers)
        self.layers = nn.ModuleList(SAGEConv(a, b) for a, b in widths)
        self.dropout = nn.Dropout(dropout)

    def between(self, h: Tensor, last: bool) -> Tensor:
        return h if last else self.dropout(F.relu(h))


class GAT(_ConvStack):
    """A stack of :class:`GATConv` layers.

    ``hidden`` is the width per head: hidden layers concatenate their ``heads``
    outputs (``hidden * heads`` wide), the last layer averages them. ReLU +
    dropout between layers; ``attn_dropout`` drops attention weights.
    """

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        n_classes: int,
        n_layers: int,
        heads: int,
        dropout: float,
        attn_dropout: float = 0.0,
    ):
        super().__init__()
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        widths = _widths(in_dim, hidden, n_classes, n_layers)
        # Hidden layers concatenate heads, so the next layer reads hidden * heads.
        ins = [in_dim] + [hidden * heads] * (n_layers - 1)
        self.layers = nn.ModuleList(
            GATConv(a, out, heads, attn_drop=attn_dropout) for a, (_, out) in zip(ins, widths, strict=True)
        )
        self.dropout = nn.Dropout(dropout)

    def between(self, h: Tensor, last: bool) -> Tensor:
        # Hidden layers concatenate heads; the last averages them.
        return h.mean(dim=1) if last else self.dropout(F.relu(h.flatten(1)))


class MLP(nn.Module):
    """A graph-blind baseline: ``n_layers`` linear layers on the seeds' own rows of ``x``."""

    def __init__(self, in_dim: int, hidden: int, n_classes: int, n_layers: int, dropout: float):
        super().__init__()
        widths = _widths(in_dim, hidden, n_classes, n_layers)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in widths)
        self.dropout = nn.Dropout(dropout)

    def forward(self, batch: TorchBatch, x: Tensor) -> Tensor:
        """Logits [num_seeds, n_classes]; only the seeds' rows of ``x`` are read."""
        h = x.index_select(0, seed_rows(batch))
        last = len(self.layers) - 1
        for i, linear in enumerate(self.layers):
            h = linear(h)
            if i != last:
                h = self.dropout(F.relu(h))
        return h


MODELS = ("sage", "gat", "mlp")


def build_model(
    name: str,
    in_dim: int,
    hidden: int,
    n_classes: int,
    n_layers: int,
    dropout: float,
    heads: int = 4,
) -> nn.Module:
    """Build a model by name: ``sage``, ``gat`` (``heads`` heads) or ``mlp``."""
    key = name.lower()
    if key == "sage":
        return SAGE(in_dim, hidden, n_classes, n_layers, dropout)
    if key == "gat":
        return GAT(in_dim, hidden, n_classes, n_layers, heads, dropout)
    if key == "mlp":
        return MLP(in_dim, hidden, n_classes, n_layers, dropout)
    raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
