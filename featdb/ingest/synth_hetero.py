"""A seeded heterogeneous graph in OGB's node-property folder layout (ogbn-mag's types and relations).

Data sets cannot be downloaded here, so this writes what ``featdb ingest-ogb``
reads for ogbn-mag, generated: papers, authors, fields of study and
institutions; ``author writes paper``, ``paper cites paper``, ``paper has_topic
field_of_study`` and ``author affiliated_with institution``. Papers are labelled
(``classes`` venues) and split; institutions have no features (as in ogbn-mag,
where only papers do: here authors and fields have some too, of other widths).

The model: every paper, author and field has a latent class (unit-norm random
centroids ``mu``); a node's features are ``mu[class] + noise * N(0, I)``, a
weak signal alone. Each relation links nodes of one class with its own
probability (``HOMOPHILY``), else uniformly, so each relation says something
different about a paper's venue and a relational model (R-GCN) can weigh them.
A fraction ``label_noise`` of papers is labelled at random. Everything follows
from ``seed``.
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import AlreadyExistsError, InvalidInputError
from ..memory import DEFAULT_BUDGET, MemoryBudget

HOMOPHILY = {"writes": 0.35, "cites": 0.25, "has_topic": 0.3}
"""Per relation, the probability that an edge joins two nodes of one latent class."""
PER_PAPER = {"writes": 3, "cites": 5, "has_topic": 2}
"""Per relation, the mean number of edges each paper takes part in."""
BYTES_PER_PAPER = 160
"""What generating holds per paper, besides features: latent classes, labels, splits, and every
relation's edge arrays (about 11 edges a paper, two int64 ids each) until they are written."""


def write_mag_folder(
    folder: str | Path,
    *,
    papers: int = 20_000,
    classes: int = 16,
    dims: tuple[int, int, int] = (64, 32, 16),
    noise: float = 2.5,
    label_noise: float = 0.1,
    seed: int = 0,
    memory_budget: int = DEFAULT_BUDGET,
) -> dict[str, Any]:
    """Write the folder (which must not exist or be empty); returns the node counts and edge counts.

    ``dims`` are the feature widths of papers, authors and fields of study. Everything is generated
    in memory, one array at a time: ``BudgetExceededError`` before anything is written if that does
    not fit ``memory_budget`` (at 256 MiB, about 220,000 papers)."""
    root = Path(folder)
    if root.exists() and any(root.iterdir()):
        raise AlreadyExistsError(f"{root} exists and is not empty")
    if papers < 10 or classes < 2 or min(dims) < 1 or noise < 0 or not 0 <= label_noise <= 1:
        raise InvalidInputError("need papers >= 10, classes >= 2, dims >= 1, noise >= 0, label_noise in [0, 1]")
    memory = MemoryBudget(memory_budget, "synth-mag")
    memory.charge("classes, labels, splits and one relation's edges", papers * BYTES_PER_PAPER)
    memory.charge("the widest feature table (float64, noise and rows)", 2 * 8 * papers * max(dims))
    memory.check()
    rng = np.random.default_rng(seed)
    counts = {
        "author": max(2, papers // 2),
        "field_of_study": max(classes, papers // 100),
        "institution": max(2, papers // 100),
        "paper": papers,
    }
    cls = {t: rng.integers(0, classes, n) for t, n in counts.items() if t != "institution"}
    mu = rng.standard_normal((classes, max(dims)))
    raw = root / "raw"
    _csv(raw / "num-node-dict.csv.gz", None, ",".join(counts) + "\n" + ",".join(map(str, counts.values())) + "\n")
    for t, dim in zip(("paper", "author", "field_of_study"), dims, strict=True):
        m = mu[:, :dim] / np.linalg.norm(mu[:, :dim], axis=1, keepdims=True)
        x = m[cls[t]] + noise * rng.standard_normal((counts[t], dim)) / np.sqrt(dim)
        _csv(raw / "node-feat" / t / "node-feat.csv.gz", x.astype(np.float32), fmt="%.4f")
    labels = np.where(rng.random(papers) < label_noise, rng.integers(0, classes, papers), cls["paper"])
    _csv(raw / "node-label" / "paper" / "node-label.csv.gz", labels.reshape(-1, 1))
    edges = {
        "author___writes___paper": _linked(rng, cls["paper"], cls["author"], "writes")[::-1],
        "paper___cites___paper": _linked(rng, cls["paper"], cls["paper"], "cites"),
        "paper___has_topic___field_of_study": _linked(rng, cls["paper"], cls["field_of_study"], "has_topic"),
        "author___affiliated_with___institution": (
            np.arange(counts["author"]),
            rng.integers(0, counts["institution"], counts["author"]),
        ),
    }
    for name, (src, dst) in edges.items():
        _csv(raw / "relations" / name / "edge.csv.gz", np.stack([src, dst], 1))
    perm = rng.permutation(papers)
    cut = (papers // 2, papers // 2 + papers // 10)
    for split, ids in zip(("train", "valid", "test"), np.split(perm, cut), strict=True):
        _csv(root / "split" / "random" / "paper" / f"{split}.csv.gz", np.sort(ids).reshape(-1, 1))
    return {"nodes": counts, "edges": {k: len(v[0]) for k, v in edges.items()}}


def _linked(
    rng: np.random.Generator, paper_cls: NDArray[Any], other_cls: NDArray[Any], rel: str
) -> tuple[NDArray[Any], NDArray[Any]]:
    """(paper, other) pairs: each paper gets about ``PER_PAPER[rel]`` partners, of its own latent
    class with probability ``HOMOPHILY[rel]``, else any."""
    n = len(paper_cls)
    src = np.repeat(np.arange(n), rng.poisson(PER_PAPER[rel] - 1, n) + 1)
    by_cls = np.argsort(other_cls, kind="stable")
    starts = np.searchsorted(other_cls[by_cls], np.arange(paper_cls.max() + 2))
    c = paper_cls[src]
    size = np.maximum(starts[c + 1] - starts[c], 1)
    same = by_cls[np.minimum(starts[c] + (rng.random(len(src)) * size).astype(np.int64), len(by_cls) - 1)]
    any_ = rng.integers(0, len(other_cls), len(src))
    dst = np.where(rng.random(len(src)) < HOMOPHILY[rel], same, any_)
    if rel == "cites":  # no self-citations
        keep = src != dst
        src, dst = src[keep], dst[keep]
    return src, dst


def _csv(path: Path, arr: NDArray[Any] | None, text: str = "", fmt: str = "%d") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with (  # mtime 0: the same seed writes the same bytes
        open(path, "wb") as raw,
        gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz,
        io.TextIOWrapper(gz, encoding="ascii") as f,
    ):
        if arr is None:
            f.write(text)
        else:
            np.savetxt(f, arr, fmt=fmt, delimiter=",")


__all__ = ["BYTES_PER_PAPER", "HOMOPHILY", "PER_PAPER", "write_mag_folder"]
