"""PNG plots of ``featdb bench train`` results (matplotlib, from the ``bench`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import ConfigError


def plot(doc: dict[str, Any], out: Path) -> list[str]:
    """Seconds per batch per system and featdb's tier hit rates; returns the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("--plot needs matplotlib: pip install 'featdb[bench]'") from exc
    out.mkdir(parents=True, exist_ok=True)
    written = []
    systems = doc["systems"]
    names = list(systems)
    shown = [s["s_per_batch"] for s in systems.values() if s["s_per_batch"]]
    vals = [systems[n]["s_per_batch"] or min(shown, default=1.0) / 10 for n in names]  # a stub for runs that died
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar(names, vals, color=["#2a7", "#c44", "#888", "#48c"][: len(names)])
    for bar, n in zip(bars, names, strict=True):
        s = systems[n]
        label = f"{s['s_per_batch']:.3f}" if s["completed"] else ("OOM-killed" if s["oom_killed"] else "failed")
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    cap = f"{doc['cap_bytes'] / 2**30:.2f} GiB cap" if doc["capped"] else "uncapped"
    ax.set_yscale("log")
    ax.set_ylabel("seconds per training batch (log)")
    ax.set_title(f"preset {doc['preset']}: {doc['table_bytes'] / 1e9:.2f} GB table, {cap}")
    fig.tight_layout()
    written.append(_save(fig, out / f"s_per_batch-{doc['preset']}.png"))
    hits = systems["featdb"].get("tier_hit_rates") or {}
    if hits:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.bar(list(hits), list(hits.values()), color="#2a7")
        ax.set_ylabel("share of rows served")
        ax.set_title(f"featdb tier hit rates (preset {doc['preset']})")
        fig.tight_layout()
        written.append(_save(fig, out / f"tier_hits-{doc['preset']}.png"))
    if doc.get("sweep"):
        written.append(_sweep(plt, doc, out))
    plt.close("all")
    return written


def _sweep(plt: Any, doc: dict[str, Any], out: Path) -> str:
    """Seconds per batch against table / cap; runs that could not complete are marked on the axis."""
    fig, ax = plt.subplots(figsize=(7, 4))
    floor = min((r["s_per_batch"] for r in doc["sweep"] if r["completed"]), default=0.1) / 2
    for system, color in (("featdb", "#2a7"), ("dgl-mmap", "#c44")):
        pts = [r for r in doc["sweep"] if r["system"] == system]
        ok = [r for r in pts if r["completed"]]
        ax.plot([r["table_over_cap"] for r in ok], [r["s_per_batch"] for r in ok], "o-", color=color, label=system)
        for r in pts:
            if not r["completed"]:
                why = "OOM-killed" if r["oom_killed"] else "timed out" if r.get("timed_out") else "refused"
                shift = 0.93 if system == "featdb" else 1.07  # side by side at one x
                ax.annotate(
                    f"{system}: {why}",
                    (r["table_over_cap"] * shift, floor),
                    color=color,
                    rotation=90,
                    va="bottom",
                    ha="center",
                    fontsize=8,
                )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ks = sorted({r["table_over_cap"] for r in doc["sweep"]})
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlim(ks[0] / 1.3, ks[-1] * 1.3)
    ax.set_ylim(bottom=floor / 2)
    ax.set_xlabel("table size / memory cap")
    ax.set_ylabel("seconds per training batch")
    ax.set_title(f"cap sweep, preset {doc['preset']} ({doc['table_bytes'] / 1e9:.2f} GB table)")
    ax.legend()
    fig.tight_layout()
    return _save(fig, out / f"cap_sweep-{doc['preset']}.png")


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=110)
    return str(path)
