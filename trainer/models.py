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

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainer.mfg import TorchBatch, TorchLayer
from trainer.ops import (
    _check_depth,
    edge_softmax,
    mean_neighbours,
    seed_rows,
    uses_csr,
    weighted_sum,
)

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
