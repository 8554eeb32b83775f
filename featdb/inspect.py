"""What ``featdb info`` reports: a plain dict describing a store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .sampling.sampleset import stale_reason
from .store import FORMAT_VERSION, Store


def info(store: Store) -> dict[str, Any]:
    """Tables, graph, sample sets, traces, each table's current layout (``layouts``; ``layout`` is the last
    packed) and generations: what `featdb info` prints."""
    meta = store.catalog.get("meta") or {}
    tables = [
        {
            "key": t["key"],
            "rows": t["rows"],
            "dim": t["dim"],
            "dtype": t["dtype"],
            "bytes": _size(store.root / t["file"]),
            "file": t["file"],
        }
        for t in store.tables()
    ]
    graph = store.catalog.get("graph")
    samples = [
        {**{k: v for k, v in doc.items() if k not in ("index", "files")}, "stale": stale_reason(store, doc) or None}
        for _, doc in store.catalog.scan("sampleset/")
    ]
    traces = [{k: v for k, v in doc.items() if k != "files"} for _, doc in store.catalog.scan("trace/")]
    current = store.catalog.get("layout/current")
    layout = store.catalog.get(f"generation/{current}") if current else None
    gens = [doc["id"] for _, doc in store.catalog.scan("generation/")]
    per_table = {k[len("layout/table/") :]: g for k, g in store.catalog.scan("layout/table/")}
    if layout is not None:
        per_table.setdefault(layout["table"], current)  # packed before layouts were per table
    layouts = {t: _layout_summary(store.catalog.get(f"generation/{g}")) for t, g in sorted(per_table.items())}
    return {
        "path": str(store.root),
        "format_version": meta.get("format_version", FORMAT_VERSION),
        "tables": tables,
        "graph": graph,
        "sample_sets": samples,
        "traces": traces,
        "layout": _layout_summary(layout),
        "layouts": layouts,
        "generations": gens,
    }


def _size(path: Path) -> int | None:
    """A file's size, or None when it is missing (``featdb verify`` says why)."""
    try:
        return path.stat().st_size
    except OSError:
        return None


def _layout_summary(doc: dict[str, Any] | None) -> dict[str, Any] | None:
    if doc is None:
        return None
    return {k: v for k, v in doc.items() if k not in ("files",)}


def render(info: dict[str, Any]) -> str:
    lines = [f"store {info['path']} (format {info['format_version']})"]
    lines.append(f"tables: {len(info['tables'])}")
    for t in info["tables"]:
        size = t["bytes"] if t["bytes"] is not None else "missing"
        lines.append(f"  {t['key']:<28} {t['rows']:>12,} x {t['dim']:<5} {t['dtype']:<8} {size:>14} B")
    g = info["graph"]
    lines.append(
        "graph: none"
        if g is None
        else f"graph: {g['num_nodes']:,} nodes, {g['num_edges']:,} edges, {g.get('num_classes', '?')} classes"
    )
    if g is not None and g.get("node_types"):
        spans = ", ".join(
            f"{t} [{lo:,}, {hi:,})" for t, (lo, hi) in sorted(g["node_types"].items(), key=lambda x: x[1])
        )
        lines.append(f"  node types: {spans}")
    if g is not None and g.get("edge_types"):
        lines.append(f"  edge types ({len(g['edge_types'])}): {', '.join(g['edge_types'])}")
    lines.append(f"sample sets: {len(info['sample_sets'])}")
    for s in info["sample_sets"]:
        lines.append(
            f"  {s['name']:<16} epochs={s['epochs']} batches={s['batches']} "
            f"fanouts={s['fanouts']}{' per relation' if s.get('per_relation') else ''} "
            f"batch_size={s['batch_size']} bytes={s['bytes']:,}" + (f"  STALE: {s['stale']}" if s.get("stale") else "")
        )
    lines.append(f"traces: {len(info.get('traces', []))}")
    for t in info.get("traces", []):
        lines.append(
            f"  {t['name']:<16} table={t['table']} batches={t['batches']} epochs={t['epochs']} "
            f"ids={t.get('ids', 0):,} distinct_rows={t.get('distinct_rows', 0):,}"
        )
    layouts = [lay for lay in info.get("layouts", {}).values() if lay]
    if not layouts:
        lines.append("layout: none (serving reads the base table)")
    for lay in layouts:
        source = f"trace={lay['trace']}" if lay.get("trace") else f"sample_set={lay['sample_set']}"
        lines.append(f"layout of {lay['table']}: generation {lay['id']} policy={lay['policy']} {source}")
        fmt = lay.get("row_format", lay.get("dtype"))
        lines.append(f"  row_format: {fmt} ({lay.get('stored_row_bytes', lay.get('row_bytes'))} bytes a row)")
        for k in (
            "l1_rows",
            "l2_rows",
            "l3_rows",
            "l4_rows",
            "segments",
            "blocks_segments",
            "blowup",
            "predicted_amplification",
        ):
            if k in lay:
                lines.append(f"  {k}: {lay[k]}")
    return "\n".join(lines)
