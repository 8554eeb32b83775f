"""Reading a stored sample set: batches, input ids, and the trace the layout planner uses."""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import CorruptDataError, SampleSetNotFoundError, StaleDataError
from ..io import crc32_blocks
from ..store import Store
from ..tables import check_index
from .format import RecordRef, SegmentFiles, decode, decode_inputs
from .mfg import Batch


class SampleSet:
    """A named, immutable set of offline-sampled batches (``epochs * batches_per_epoch``).

    Opening a set sampled from a graph that has since been replaced raises :class:`StaleDataError`
    (``check_fresh=False`` opens it anyway, to inspect it).
    """

    def __init__(self, store: Store, name: str, check_fresh: bool = True) -> None:
        doc = store.catalog.get(f"sampleset/{name}")
        if doc is None:
            raise SampleSetNotFoundError(f"no sample set {name!r} in {store.root}")
        if check_fresh:
            check_fresh_set(store, doc)
        self.doc: dict[str, Any] = doc
        self.name = name
        self.root = store.root
        self.id_dtype = np.dtype(doc["id_dtype"])
        cols = int(doc.get("index_columns", 5))
        self._records = {rel: store.catalog.get(f"file/{rel}") for rel in doc["files"]}
        idx = np.frombuffer(self._checked("index.i64"), dtype=np.int64).copy()
        if idx.size != cols * doc["batches"]:
            raise CorruptDataError(
                f"sample set {name!r}: index holds {idx.size / cols:g} batches, catalog says {doc['batches']}"
            )
        self.index = idx.reshape(-1, cols)
        self._files = SegmentFiles(store.root / doc["path"], doc["segments"])

    @property
    def uid(self) -> str | None:
        """This set's content id (None for sets written before sets had one)."""
        return self.doc.get("uid")

    def same_as(self, store: Store) -> bool:
        """True if this is the set that ``store`` holds under this name (not another store's, not a
        set since removed and sampled again under the same name)."""
        doc = store.catalog.get(f"sampleset/{self.name}")
        return (
            doc is not None
            and os.path.realpath(self.root) == os.path.realpath(store.root)
            and doc.get("uid") == self.uid
        )

    @property
    def num_batches(self) -> int:
        return int(self.doc["batches"])

    @property
    def epochs(self) -> int:
        return int(self.doc["epochs"])

    @property
    def batches_per_epoch(self) -> int:
        return int(self.doc["batches_per_epoch"])

    @property
    def num_nodes(self) -> int:
        return int(self.doc["num_nodes"])

    def epoch_of(self, b: int) -> int:
        """Batches are stored epoch by epoch, the same number in each."""
        return b // self.batches_per_epoch

    def epoch_batches(self, epoch: int) -> NDArray[Any]:
        check_index(epoch, self.epochs, "epoch")
        return np.arange(epoch * self.batches_per_epoch, (epoch + 1) * self.batches_per_epoch)

    @property
    def parts(self) -> dict[str, tuple[int, int]]:
        """Batch id ranges [lo, hi) by split: the training epochs, then each evaluation split."""
        default = {str(self.doc.get("split", "train")): [0, self.epochs * self.batches_per_epoch]}
        return {k: (int(v[0]), int(v[1])) for k, v in self.doc.get("parts", default).items()}

    def part_batches(self, split: str) -> NDArray[Any]:
        """The batch ids of one split's part (empty when the set has none)."""
        lo, hi = self.parts.get(split, (0, 0))
        return np.arange(lo, hi)

    def _ref(self, b: int) -> RecordRef:
        check_index(b, self.num_batches, "batch")
        seg, off, length, crc, n_in = (int(x) for x in self.index[b, :5])
        return RecordRef(seg, off, length, crc, n_in)

    def batch(self, b: int) -> Batch:
        raw = self._files.read(self._ref(b))
        return decode(raw, self.id_dtype, f"{self.name}[{b}]")

    def input_ids(self, b: int) -> NDArray[Any]:
        """The batch's input node ids, reading only the record's head."""
        ref = self._ref(b)
        # one read long enough for any batch of this set: header, seeds (<= batch size), input ids
        prefix = (
            32 + 24 * len(self.doc["fanouts"]) + (int(self.doc["batch_size"]) + ref.n_inputs) * self.id_dtype.itemsize
        )
        raw = self._files.read(ref, head_only=min(prefix, ref.length))
        try:
            ids, head = decode_inputs(raw, self.id_dtype)
        except CorruptDataError as exc:
            raise CorruptDataError(f"{self.name}[{b}]: {exc}") from exc
        if self.index.shape[1] > 5 and zlib.crc32(memoryview(raw)[:head]) != int(self.index[b, 5]):
            raise CorruptDataError(
                f"{self.name}[{b}]: the head of the batch record at byte "
                f"{ref.offset} of {self.doc['segments'][ref.segment]} fails its checksum"
            )
        return ids

    def inputs_of(self, batch_ids: Iterable[int]) -> Iterator[NDArray[Any]]:
        """Input ids of several batches, in order (the planner's trace)."""
        return (self.input_ids(b) for b in batch_ids)

    def num_inputs(self) -> NDArray[Any]:
        return self.index[:, 4].copy()

    def counts(self) -> NDArray[Any]:
        """Per node, how many batches of the whole set read it."""
        return np.frombuffer(self._checked("counts.i32"), dtype=np.int32).copy()

    def _checked(self, name: str) -> bytes:
        """A whole small file of the set, checked against its catalog checksums."""
        rel = f"{self.doc['path']}/{name}"
        raw = (self.root / rel).read_bytes()
        rec = self._records.get(rel)
        if rec is not None and (len(raw) != rec["size"] or crc32_blocks(raw) != rec["crcs"]):
            raise CorruptDataError(f"{rel}: fails its checksum (sample set {self.name!r}); run featdb verify")
        return raw

    def trace(self) -> Iterator[tuple[int, NDArray[Any]]]:
        """(batch id, its input ids) for every batch, one at a time."""
        for b in range(self.num_batches):
            yield b, self.input_ids(b)

    def close(self) -> None:
        self._files.close()

    def __enter__(self) -> SampleSet:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def stale_reason(store: Store, doc: dict[str, Any]) -> str:
    """Why the sample set ``doc`` is stale ("" when it is not): sampled from a graph other than the stored
    one (compared by content id; by node count for sets and graphs written before content ids)."""
    graph = store.catalog.get("graph")
    if graph is None:
        return "the store no longer holds a graph"
    if doc.get("graph_uid") and graph.get("uid"):
        return "" if doc["graph_uid"] == graph["uid"] else "its graph has been replaced since it was sampled"
    return "" if int(doc["num_nodes"]) == int(graph["num_nodes"]) else "the graph now has a different node count"


def check_fresh_set(store: Store, doc: dict[str, Any]) -> None:
    """:class:`StaleDataError`, with the commands that rebuild it, if the sample set ``doc`` is stale."""
    name = doc["name"]
    why = stale_reason(store, doc)
    if why:
        fanouts = ",".join(map(str, doc["fanouts"]))
        raise StaleDataError(
            f"sample set {name!r} is stale: {why}; sample it again: featdb gc {store.root} --sample-set {name} --force "
            f"&& featdb sample {store.root} --name {name} --fanouts {fanouts} --batch-size {doc['batch_size']} "
            f"--epochs {doc['epochs']} --seed {doc.get('seed', 0)}"
            + ("" if doc.get("split", "train") == "train" else f" --split {doc['split']}")
            + ("" if doc.get("parts", {}).keys() - {doc.get("split", "train")} else " --no-eval")
            + (" --per-relation" if doc.get("per_relation") else "")
        )
