"""Plain-torch GNN layers and models against DGL, and the MFG conversions they rely on."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from featdb.sampling.mfg import Batch, Layer  # noqa: E402
from trainer import ops  # noqa: E402
from trainer.mfg import (  # noqa: E402
    TorchBatch,
    TorchLayer,
    from_dgl_blocks,
    served,
    synthetic_batch,
    to_torch,
)
from trainer.models import (  # noqa: E402
    GAT,
    MLP,
    SAGE,
    GATConv,
    SAGEConv,
    build_model,
    edge_softmax,
    seed_rows,
    weighted_sum,
)

pytestmark = pytest.mark.gnn

ATOL = 1e-5
NUM_NODES = 300
NO_IN_EDGES = 20  # nodes 0..19 have no in-edges: zero-in-degree destinations


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    """Run on one intra-op thread: the tensors are tiny, and MKL's sparse kernels
    otherwise wait milliseconds per call for a second thread on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def dgl() -> Any:
    """DGL, or skip (the lent GPU machine has none)."""
    return pytest.importorskip("dgl")


@pytest.fixture(scope="module")
def graph(dgl: Any) -> Any:
    """A random graph in which nodes ``0..NO_IN_EDGES-1`` have no in-edges."""
    rng = np.random.default_rng(0)
    src = rng.integers(0, NUM_NODES, 1500)
    dst = rng.integers(NO_IN_EDGES, NUM_NODES, 1500)
    return dgl.graph((torch.from_numpy(src), torch.from_numpy(dst)), num_nodes=NUM_NODES)


def sample(dgl: Any, graph: Any, replace: bool) -> tuple[Any, Any, list[Any]]:
    """Two-layer blocks for seeds that include zero-in-degree nodes."""
    torch.manual_seed(1)
    seeds = torch.cat([torch.arange(0, 10), torch.arange(100, 140)])
    sampler = dgl.dataloading.NeighborSampler([5, 5], replace=replace)
    input_nodes, output_nodes, blocks = sampler.sample_blocks(graph, seeds)
    return input_nodes, output_nodes, blocks


@pytest.fixture(params=[False, True], ids=["no-replace", "replace"])
def blocks(request: Any, dgl: Any, graph: Any) -> list[Any]:
    """Blocks without and with multi-edges (sampling with replacement)."""
    return sample(dgl, graph, request.param)[2]


@pytest.fixture(params=["csr", "index"])
def path(request: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the CPU CSR aggregation path and on the index_add_ path."""
    force(monkeypatch, str(request.param))
    return str(request.param)


def force(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    """Make every aggregation take ``path`` ('csr' or 'index'), whatever its size."""
    if path == "csr":
        monkeypatch.setattr(ops, "CSR_MIN_WORK", 0)
    else:
        monkeypatch.setattr(ops, "uses_csr", lambda t: False)


def shuffled(layer: TorchLayer, seed: int = 0) -> TorchLayer:
    """The same layer with its edges in a random order."""
    perm = torch.randperm(layer.num_edges, generator=torch.Generator().manual_seed(seed))
    return dataclasses.replace(layer, src=layer.src[perm], dst=layer.dst[perm])


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter random values (DGL zero-initialises biases)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def compare_conv(
    ours: torch.nn.Module,
    theirs: torch.nn.Module,
    layer: TorchLayer,
    block: Any,
    in_dim: int,
    dtype: torch.dtype,
) -> None:
    """Outputs and all gradients of two convolutions agree on one block.

    float32 checks the output to ``ATOL`` and gradients (long sums, so more
    rounding) to 1e-4; float64 checks everything tightly.
    """
    ours.to(dtype)
    theirs.to(dtype)
    out_tol = {"atol": ATOL, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-9, "rtol": 1e-9}
    grad_tol = {"atol": 1e-4, "rtol": 1e-4} if dtype == torch.float32 else out_tol
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(block.num_src_nodes(), in_dim, generator=gen, dtype=dtype)
    x_ours = x.clone().requires_grad_(True)
    x_theirs = x.clone().requires_grad_(True)
    out_ours = ours(layer, x_ours)
    out_theirs = theirs(block, x_theirs)
    assert out_ours.shape == out_theirs.shape
    torch.testing.assert_close(out_ours, out_theirs, **out_tol)
    weight = torch.randn(out_ours.shape, generator=gen, dtype=dtype)
    (out_ours * weight).sum().backward()
    (out_theirs * weight).sum().backward()
    torch.testing.assert_close(x_ours.grad, x_theirs.grad, **grad_tol)
    grads_theirs = {name: p.grad for name, p in theirs.named_parameters()}
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads_theirs[name], **grad_tol, msg=lambda m, name=name: f"{name}: {m}")


# ---------------------------------------------------------------------------
# layers against DGL


DTYPES = pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])


@DTYPES
@pytest.mark.parametrize(("in_dim", "out_dim"), [(16, 8), (8, 16)])
@pytest.mark.parametrize("edge_order", ["dgl", "shuffled"])
def test_sageconv_matches_dgl(
    dgl: Any,
    blocks: list[Any],
    path: str,
    in_dim: int,
    out_dim: int,
    edge_order: str,
    dtype: torch.dtype,
) -> None:
    batch = to_torch(from_dgl_blocks(blocks))
    for i, (block, layer) in enumerate(zip(blocks, batch.layers, strict=True)):
        assert (block.in_degrees() == 0).any(), "fixture must include zero-in-degree nodes"
        theirs = dgl.nn.SAGEConv(in_dim, out_dim, "mean")
        randomize(theirs, seed=i)
        ours = SAGEConv(in_dim, out_dim)
        ours.load_state_dict(theirs.state_dict())
        used = shuffled(layer) if edge_order == "shuffled" else layer
        compare_conv(ours, theirs, used, block, in_dim, dtype)


@DTYPES
@pytest.mark.parametrize(
    ("in_dim", "out_dim", "heads", "residual"),
    [(16, 4, 3, False), (16, 4, 2, True), (8, 4, 2, True)],  # no residual, linear, identity
)
@pytest.mark.parametrize("edge_order", ["dgl", "shuffled"])
def test_gatconv_matches_dgl(
    dgl: Any,
    blocks: list[Any],
    path: str,
    in_dim: int,
    out_dim: int,
    heads: int,
    residual: bool,
    edge_order: str,
    dtype: torch.dtype,
) -> None:
    batch = to_torch(from_dgl_blocks(blocks))
    for i, (block, layer) in enumerate(zip(blocks, batch.layers, strict=True)):
        theirs = dgl.nn.GATConv(in_dim, out_dim, heads, residual=residual, allow_zero_in_degree=True)
        randomize(theirs, seed=i)
        ours = GATConv(in_dim, out_dim, heads, residual=residual)
        ours.load_state_dict(theirs.state_dict())
        used = shuffled(layer) if edge_order == "shuffled" else layer
        compare_conv(ours, theirs, used, block, in_dim, dtype)


def test_gatconv_parameter_layout_matches_dgl(dgl: Any) -> None:
    for residual, in_dim in [(False, 16), (True, 16), (True, 8)]:
        theirs = dgl.nn.GATConv(in_dim, 4, 2, residual=residual)
        ours = GATConv(in_dim, 4, 2, residual=residual)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in theirs.state_dict().items()
        }


# ---------------------------------------------------------------------------
# primitives


def tiny_layer() -> TorchLayer:
    """3 sources -> 3 destinations; destination 1 has no in-edges, (0 -> 2) twice."""
    src = torch.tensor([2, 0, 1, 0, 0])
    dst = torch.tensor([2, 0, 0, 2, 2])
    return TorchLayer(src, dst, torch.tensor([0, 1, 2]), num_src=3, num_dst=3)


def test_weighted_sum_gradcheck_csr(monkeypatch: pytest.MonkeyPatch) -> None:
    force(monkeypatch, "csr")
    layer = tiny_layer()
    weights = torch.rand(layer.num_edges, 2, dtype=torch.float64, requires_grad=True)
    feat = torch.randn(layer.num_src, 2, 3, dtype=torch.float64, requires_grad=True)
    assert ops.uses_csr(feat)
    assert torch.autograd.gradcheck(lambda w, f: weighted_sum(layer, w, f), (weights, feat))


def test_weighted_sum_paths_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = tiny_layer()
    weights = torch.rand(layer.num_edges, 2)
    feat = torch.randn(layer.num_src, 2, 3)
    with monkeypatch.context() as patch:
        force(patch, "csr")
        csr = weighted_sum(layer, weights, feat)
    force(monkeypatch, "index")
    torch.testing.assert_close(csr, weighted_sum(layer, weights, feat))
    assert torch.all(csr[1] == 0)


@pytest.mark.parametrize("path", ["csr", "index"])
def test_mean_of_no_neighbours_is_zero(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    force(monkeypatch, path)
    layer = tiny_layer()
    h = torch.randn(layer.num_src, 4)
    mean = ops.mean_neighbours(layer, h)
    assert torch.all(mean[1] == 0)
    torch.testing.assert_close(mean[2], (h[2] + 2 * h[0]) / 3)


def test_edge_softmax_is_stable_and_normalised() -> None:
    layer = tiny_layer()
    scores = torch.tensor([[1e4], [-1e4], [3.0], [1e4], [1e4 - 1.0]])
    attn = edge_softmax(layer, scores)
    assert torch.isfinite(attn).all()
    sums = torch.zeros(layer.num_dst, 1).index_add_(0, layer.dst, attn)
    torch.testing.assert_close(sums, torch.tensor([[1.0], [0.0], [1.0]]))


# ---------------------------------------------------------------------------
# models


def small_batch(num_layers: int = 2) -> tuple[TorchBatch, torch.Tensor]:
    """A synthetic batch (with multi-edges) and matching input rows."""
    batch = to_torch(synthetic_batch(32, [4] * num_layers, 500, seed=3))
    x = torch.randn(batch.num_inputs, 16, generator=torch.Generator().manual_seed(0))
    return batch, x


@pytest.mark.parametrize("name", ["sage", "gat", "mlp"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_model_forward_backward(name: str, num_layers: int, path: str) -> None:
    torch.manual_seed(0)
    batch, x = small_batch(num_layers)
    model = build_model(name, 16, 8, 5, num_layers, dropout=0.5, heads=2)
    out = model(batch, x)
    assert out.shape == (32, 5)
    torch.nn.functional.cross_entropy(out, torch.randint(0, 5, (32,))).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", ["sage", "gat", "mlp"])
def test_model_paths_agree(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    batch, x = small_batch()
    model = build_model(name, 16, 8, 5, 2, dropout=0.5, heads=2).eval()
    with monkeypatch.context() as patch:
        force(patch, "csr")
        csr = model(batch, x)
    force(monkeypatch, "index")
    torch.testing.assert_close(csr, model(batch, x), atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("name", ["sage", "gat", "mlp"])
def test_reordered_inputs_give_identical_output(name: str, path: str) -> None:
    torch.manual_seed(0)
    plain = synthetic_batch(32, [4, 4], 500, seed=3)
    x = torch.randn(plain.layers[0].num_src, 16)
    order = np.random.default_rng(1).permutation(plain.layers[0].num_src)
    moved = plain.reordered(order)
    model = build_model(name, 16, 8, 5, 2, dropout=0.5, heads=2).eval()
    with torch.no_grad():
        expected = model(to_torch(plain), x)
        got = model(to_torch(moved), x[torch.from_numpy(order)])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_seed_rows_find_the_seeds() -> None:
    plain = synthetic_batch(32, [4, 4, 4], 500, seed=3)
    moved = plain.reordered(np.random.default_rng(2).permutation(plain.layers[0].num_src))
    for batch in (plain, moved):
        tb = to_torch(batch)
        assert torch.equal(tb.input_ids[seed_rows(tb)], tb.seeds)


def test_model_rejects_mismatched_batch() -> None:
    batch, x = small_batch(2)
    with pytest.raises(ValueError, match="layers"):
        SAGE(16, 8, 5, 3, 0.0)(batch, x)
    with pytest.raises(ValueError, match="rows"):
        GAT(16, 8, 5, 2, 2, 0.0)(batch, x[:-1])


def test_build_model() -> None:
    assert isinstance(build_model("SAGE", 4, 8, 2, 2, 0.1), SAGE)
    assert isinstance(build_model("gat", 4, 8, 2, 2, 0.1, heads=3), GAT)
    assert isinstance(build_model("mlp", 4, 8, 2, 2, 0.1), MLP)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gcn", 4, 8, 2, 2, 0.1)


# ---------------------------------------------------------------------------
# conversions


def global_edges(batch: Batch) -> list[list[tuple[int, int]]]:
    """Each layer's edges as sorted (global src id, global dst id) lists."""
    ids = batch.input_ids
    out: list[list[tuple[int, int]]] = []
    for layer in batch.layers:
        dst_ids = ids[layer.dst_in_src]
        out.append(sorted(zip(ids[layer.src].tolist(), dst_ids[layer.dst].tolist(), strict=True)))
        ids = dst_ids
    return out


def test_from_dgl_blocks_preserves_edges(dgl: Any, graph: Any) -> None:
    for replace in (False, True):
        input_nodes, output_nodes, blocks = sample(dgl, graph, replace)
        batch = from_dgl_blocks(blocks)
        assert np.array_equal(batch.input_ids, input_nodes.numpy())
        assert np.array_equal(batch.seeds, output_nodes.numpy())
        expected = []
        for block in blocks:
            u, v = block.edges(order="eid")
            src_ids = block.srcdata[dgl.NID][u].tolist()
            dst_ids = block.dstdata[dgl.NID][v].tolist()
            expected.append(sorted(zip(src_ids, dst_ids, strict=True)))
        assert global_edges(batch) == expected
        for block, layer in zip(blocks, batch.layers, strict=True):
            assert (layer.num_src, layer.num_dst) == (block.num_src_nodes(), block.num_dst_nodes())
            assert layer.src.dtype == np.int64 and layer.dst.dtype == np.int64
        # Relabelling keeps the global edges.
        order = np.random.default_rng(0).permutation(batch.layers[0].num_src)
        assert global_edges(batch.reordered(order)) == expected


@pytest.fixture(params=["numba", "numpy"])
def served_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the compiled relabelling and with its numpy fallback."""
    if request.param == "numpy":
        monkeypatch.setattr("trainer.mfg._kernels", lambda: None)
    return str(request.param)


@pytest.mark.parametrize("int32", [False, True])
def test_served_matches_reordered(int32: bool, served_path: str) -> None:
    plain = synthetic_batch(32, [4, 4], 500, seed=3)
    if int32:  # as stored: int32 views of layer indices
        plain = Batch(
            plain.seeds,
            plain.input_ids,
            tuple(
                Layer(lay.src.astype(np.int32), lay.dst.astype(np.int32), lay.dst_in_src, lay.num_src, lay.num_dst)
                for lay in plain.layers
            ),
        )
    order = np.random.default_rng(5).permutation(plain.layers[0].num_src).astype(np.int64)
    got, want = served(plain, order), plain.reordered(order)
    assert np.array_equal(got.input_ids, want.input_ids)
    assert np.array_equal(got.seeds, want.seeds)
    for a, b in zip(got.layers, want.layers, strict=True):
        assert (a.num_src, a.num_dst) == (b.num_src, b.num_dst)
        for name in ("src", "dst", "dst_in_src"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert got.layers[0].src.dtype == np.int64 and got.layers[0].dst.dtype == np.int64


def test_served_rejects_a_bad_order(served_path: str) -> None:
    plain = synthetic_batch(16, [3, 3], 200, seed=0)
    n = plain.layers[0].num_src
    with pytest.raises(ValueError, match="entries"):
        served(plain, np.arange(n - 1))
    for bad in (np.r_[np.arange(n - 1), 0], np.r_[np.arange(n - 1), n], np.r_[-1, np.arange(1, n)]):
        with pytest.raises(ValueError, match="permutation"):
            served(plain, bad)
    first = plain.layers[0]
    for layer0 in (
        Layer(first.src, first.dst, np.r_[first.dst_in_src, 0], first.num_src, first.num_dst),
        Layer(first.src[:-1], first.dst, first.dst_in_src, first.num_src, first.num_dst),
    ):
        with pytest.raises(ValueError, match="sizes"):
            served(Batch(plain.seeds, plain.input_ids, (layer0, *plain.layers[1:])), np.arange(n))
    src = first.src.copy()
    src[0] = n  # an edge from a source that does not exist
    broken = Batch(
        plain.seeds, plain.input_ids, (Layer(src, first.dst, first.dst_in_src, n, first.num_dst), *plain.layers[1:])
    )
    with pytest.raises(ValueError, match="out of range"):
        served(broken, np.arange(n))


def test_from_dgl_blocks_rejects_bad_input(dgl: Any, graph: Any) -> None:
    _, _, blocks = sample(dgl, graph, False)
    with pytest.raises(ValueError, match="chain"):
        from_dgl_blocks([blocks[1], blocks[0]])
    with pytest.raises(ValueError, match="at least one"):
        from_dgl_blocks([])


def test_to_torch_types_and_read_only_arrays() -> None:
    plain = synthetic_batch(16, [3, 3], 200, seed=0)
    frozen_layers = []
    for layer in plain.layers:
        arrays = [layer.src.astype(np.int32), layer.dst.copy(), layer.dst_in_src.copy()]
        for arr in arrays:
            arr.flags.writeable = False
        frozen_layers.append(Layer(*arrays, layer.num_src, layer.num_dst))
    frozen = Batch(plain.seeds, plain.input_ids, tuple(frozen_layers))
    tb = to_torch(frozen, "cpu")
    assert tb.device == torch.device("cpu")
    for t_layer, layer in zip(tb.layers, plain.layers, strict=True):
        for name in ("src", "dst", "dst_in_src"):
            tensor = getattr(t_layer, name)
            assert tensor.dtype == torch.int64
            assert np.array_equal(tensor.numpy(), getattr(layer, name))
        assert (t_layer.num_src, t_layer.num_dst) == (layer.num_src, layer.num_dst)
    assert np.array_equal(tb.seeds.numpy(), plain.seeds)
    assert tb.num_inputs == len(plain.input_ids)


def test_synthetic_batch_shape() -> None:
    batch = synthetic_batch(64, [5, 10], 10_000, seed=0)
    assert len(batch.seeds) == 64 and len(np.unique(batch.seeds)) == 64
    last, first = batch.layers[1], batch.layers[0]
    assert last.num_dst == 64 and len(last.src) == 640
    assert first.num_dst == last.num_src and len(first.src) == 5 * first.num_dst
    assert first.num_src == len(batch.input_ids) == len(np.unique(batch.input_ids))
    # Destinations come first among sources, as in DGL.
    assert np.array_equal(batch.input_ids[: first.num_dst], batch.input_ids[first.dst_in_src])


@pytest.mark.parametrize("path", ["csr", "index"])
def test_layer_without_edges(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    force(monkeypatch, path)
    empty = torch.zeros(0, dtype=torch.int64)
    layer = TorchLayer(empty, empty, torch.tensor([0, 1]), num_src=3, num_dst=2)
    h = torch.randn(3, 4, requires_grad=True)
    mean = ops.mean_neighbours(layer, h)
    assert mean.shape == (2, 4) and torch.all(mean == 0)
    weights = torch.zeros(0, 2, requires_grad=True)
    summed = weighted_sum(layer, weights, h.view(3, 2, 2))
    assert summed.shape == (2, 2, 2) and torch.all(summed == 0)
    (mean.sum() + summed.sum()).backward()
    assert h.grad is not None and torch.all(h.grad == 0)
    conv = GATConv(4, 3, 2, residual=True)
    out = conv(layer, h)
    assert out.shape == (2, 2, 3) and torch.isfinite(out).all()
