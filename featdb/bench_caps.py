"""``featdb bench caps``: epoch time and disk bytes against the disk budget (and the row format),
in one run.

For each row format and each cap (uncapped, then each ``--max-blowup``; 0 is
the blocks policy, nothing stored) earlier layouts are garbage-collected
(``featdb gc``), the store is packed (a failed pack is reported and nothing
trained), the page cache dropped, and ``featdb-train`` run for a few epochs,
once per seed; the in-memory baseline runs once per seed beside them. Every
step is a separate process, optionally under one cgroup memory cap.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .bench_train import featdb_argv, run_step
from .cgroup import MemoryCap, command_path
from .errors import ConfigError
from .rowformat import FORMATS

Say = Callable[[str], None]


def parse_caps(text: str) -> list[float | None]:
    """``none,5,3,2,0`` -> [None, 5.0, 3.0, 2.0, 0.0]."""
    caps: list[float | None] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part.lower() in ("none", "uncapped"):
            caps.append(None)
            continue
        try:
            v = float(part)
        except ValueError:
            raise ConfigError(f"--caps {text!r}: numbers (table copies) or 'none'") from None
        if not v >= 0 or v == float("inf"):
            raise ConfigError(f"--caps {text!r}: {part} is not a finite number of at least 0")
        caps.append(v)
    if not caps:
        raise ConfigError("--caps: give at least one cap")
    return caps


def parse_formats(text: str) -> list[str | None]:
    """``float32,int8`` -> ["float32", "int8"]; empty -> [None] (the table's own dtype)."""
    names = [p.strip() for p in text.split(",") if p.strip()]
    bad = [n for n in names if n not in FORMATS]
    if bad:
        raise ConfigError(f"--row-formats {text!r}: {', '.join(bad)} not one of {', '.join(FORMATS)}")
    return list(names) or [None]


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` -> [0, 1, 2]."""
    try:
        seeds = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: comma-separated integers") from None
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    return seeds


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(
    store: Path,
    sample_set: str,
    caps: Sequence[float | None],
    host_cache: int,
    segment_cache: int,
    epochs: int,
    memory_budget: int,
    memory_cap: int | None,
    baseline: bool,
    say: Say,
    formats: Sequence[str | None] = (None,),
    seeds: Sequence[int] = (0,),
) -> dict[str, Any]:
    cap = MemoryCap(memory_cap, "featdb-bench-caps")
    capped, why_uncapped = cap.capped, cap.why_uncapped  # as run (closing the group forgets it)
    runs: list[dict[str, Any]] = []
    try:
        for fmt in formats:
            for c in caps:
                label = ("uncapped" if c is None else f"cap {c:g}") + (f", {fmt} rows" if fmt else "")
                argv = featdb_argv("pack", store, "--sample-set", sample_set, "--host-cache", host_cache)
                argv += ["--segment-cache", str(segment_cache), "--memory-budget", str(memory_budget)]
                argv += (["--max-blowup", f"{c:g}"] if c is not None else []) + (["--row-format", fmt] if fmt else [])
                run_step(cap, featdb_argv("gc", store), store, say, f"{label}: gc")  # earlier layouts fill the disk
                packed = run_step(cap, argv, store, say, f"{label}: pack")
                doc = packed["summary"] or {}
                if not packed["completed"]:  # training now would read the layout before: no figure at all
                    failed = {"completed": False, "error": packed.get("error"), "summary": None, "peak_rss_bytes": 0}
                    runs.append(_result(c, packed, doc, [failed], store) | {"pack_error": packed.get("error")})
                    continue
                trains = [
                    run_step(cap, _train(store, sample_set, "featdb", epochs, memory_budget, s), store, say,
                             f"{label}: train, seed {s}")
                    for s in seeds
                ]  # fmt: skip
                runs.append(_result(c, packed, doc, trains, store))
        base = None
        if baseline:
            base = _seeds_result(
                [
                    run_step(cap, _train(store, sample_set, "in-memory", epochs, 0, s), store, say, f"in-memory {s}")
                    for s in seeds
                ]
            )
    finally:
        cap.close()
    for r in runs:
        ref = next((x for x in runs if x["cap"] is None and x["epoch_s"] and x["row_format"] == r["row_format"]), None)
        wide = next((x for x in runs if x["cap"] == r["cap"] and x["row_format"] == "float32" and x["test_acc"]), None)
        r["epoch_over_uncapped"] = _ratio(r["epoch_s"], ref["epoch_s"]) if ref else None
        r["epoch_over_inmemory"] = _ratio(r["epoch_s"], base["epoch_s"]) if base else None
        if wide is not None and r["test_acc"] is not None and wide["test_acc"] is not None:
            r["test_acc_minus_float32"] = round(r["test_acc"] - wide["test_acc"], 4)
    return {
        "store": str(store),
        "sample_set": sample_set,
        "host_cache": host_cache,
        "segment_cache": segment_cache,
        "epochs": epochs,
        "seeds": list(seeds),
        "memory_budget": memory_budget,
        "capped": capped,
        "cap_bytes": cap.limit if capped else None,
        "why_uncapped": why_uncapped,
        "runs": runs,
        "in_memory": base,
    }


def _train(store: Path, sample_set: str, loader: str, epochs: int, budget: int, seed: int = 0) -> list[str]:
    argv = [command_path("featdb-train"), str(store), "--sample-set", sample_set, "--loader", loader]
    argv += ["--seed", str(seed)]
    at = store.resolve()  # beside the store, also when it is given as "."
    ckpt = at.parent / f"{at.name}-caps.pt"
    argv += ["--epochs", str(epochs), "--json", "-q", "--checkpoint", str(ckpt)]
    return argv + (["--memory-budget", str(budget)] if budget else [])


def _train_result(step: dict[str, Any]) -> dict[str, Any]:
    s = step["summary"] or {}
    epochs = s.get("epoch_s") or []
    return {
        "completed": step["completed"],
        "error": step.get("error"),
        "epoch_s": round(statistics.mean(epochs), 3) if epochs else None,
        "epochs_s": epochs,
        "eval_s": round(statistics.mean(s["eval_s"]), 3) if s.get("eval_s") else None,
        "measured_amplification": s.get("epoch_read_amplification"),
        "io_read_bytes_per_epoch": s.get("epoch_io_read_bytes"),
        "test_acc": s.get("test_acc"),
        "peak_rss_bytes": step["peak_rss_bytes"],
    }


def _seeds_result(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's figures over its seeds: the first seed's, with epoch time and test accuracy the means
    over every seed (each seed's accuracy listed)."""
    per = [_train_result(s) for s in steps]
    out = dict(per[0])
    times = [r["epoch_s"] for r in per if r["epoch_s"]]
    accs = [r["test_acc"] for r in per if r["test_acc"] is not None]
    out["epoch_s"] = round(statistics.mean(times), 3) if len(times) == len(per) else None
    out["test_acc"] = round(statistics.mean(accs), 4) if len(accs) == len(per) else None
    out["test_acc_per_seed"] = [r["test_acc"] for r in per]
    out["completed"] = all(r["completed"] for r in per)
    out["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in per)
    return out


def _result(
    c: float | None, packed: dict[str, Any], doc: dict[str, Any], trains: list[dict[str, Any]], store: Path
) -> dict[str, Any]:
    gen = store / "gens" / str(doc.get("id", ""))
    pred = doc.get("predictions") or {}
    res = {
        "cap": c,
        "row_format": doc.get("row_format"),
        "packed": packed["completed"],
        "pack_s": doc.get("pack_s"),
        "pack_peak_rss_bytes": packed["peak_rss_bytes"],
        "blowup": doc.get("blowup"),
        "layout_disk_bytes": _dir_bytes(gen) if doc.get("id") and gen.is_dir() else None,
        "segments": doc.get("segments"),
        "blocks_segments": doc.get("blocks_segments"),
        "predicted_amplification": doc.get("predicted_amplification"),
        "predicted_disk_bytes_per_pass": pred.get("disk_bytes_per_pass"),
        "predicted_disk_bytes_per_epoch": pred.get("disk_bytes_per_epoch"),
        "predicted_amplification_per_epoch": pred.get("predicted_amplification_per_epoch"),
        "candidates": pred.get("candidates"),
        "warnings": doc.get("warnings"),
    } | _seeds_result(trains)
    amp = res["measured_amplification"]
    want = res["predicted_amplification_per_epoch"] or res["predicted_amplification"]
    if amp and want:
        res["measured_over_predicted"] = _ratio(statistics.mean(amp), want)
    return res


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def render(res: dict[str, Any]) -> str:
    lines = [
        f"{res['store']} / {res['sample_set']}: host cache {res['host_cache'] >> 20} MiB, segment cache "
        f"{res['segment_cache'] >> 20} MiB, {res['epochs']} epochs"
        + (f", cap {res['cap_bytes'] >> 20} MiB" if res["capped"] else ""),
        f"{'rows':>8} {'cap':>8} {'blowup':>7} {'layout GB':>9} {'epoch s':>8} {'x uncap':>7} {'x in-mem':>8} "
        f"{'amp pred':>8} {'amp meas':>8} {'test acc':>8}",
    ]
    for r in res["runs"]:
        amp = r["measured_amplification"]
        lines.append(
            f"{r.get('row_format') or '?':>8} {'none' if r['cap'] is None else format(r['cap'], 'g'):>8} "
            f"{r['blowup'] or 0:>7} "
            f"{(r['layout_disk_bytes'] or 0) / 1e9:>9.2f} {r['epoch_s'] or float('nan'):>8} "
            f"{r['epoch_over_uncapped'] or float('nan'):>7} {r['epoch_over_inmemory'] or float('nan'):>8} "
            f"{r['predicted_amplification'] or float('nan'):>8} "
            f"{statistics.mean(amp) if amp else float('nan'):>8.3f} {r['test_acc'] or float('nan'):>8}"
        )
    if res["in_memory"]:
        b = res["in_memory"]
        lines.append(f"in-memory baseline: {b['epoch_s']} s per epoch, test acc {b['test_acc']}")
    return "\n".join(lines)


def plot(res: dict[str, Any], out_dir: Path) -> list[str]:
    """epoch time and layout bytes against the cap (one PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in res["runs"] if r["epoch_s"]]
    labels = ["none" if r["cap"] is None else f"{r['cap']:g}x" + (" (blocks)" if r["cap"] == 0 else "") for r in runs]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(labels, [r["epoch_s"] for r in runs], color="tab:blue", label="featdb epoch")
    if res["in_memory"] and res["in_memory"]["epoch_s"]:
        ax.axhline(res["in_memory"]["epoch_s"], color="tab:red", ls="--", label="in-memory epoch")
    ax.set_xlabel("disk cap (--max-blowup)")
    ax.set_ylabel("seconds per epoch")
    ax2 = ax.twinx()
    ax2.plot(labels, [(r["layout_disk_bytes"] or 0) / 1e9 for r in runs], "o-", color="tab:green", label="layout GB")
    ax2.set_ylabel("layout on disk (GB)")
    fig.legend(loc="upper center", bbox_to_anchor=(0.55, 0.95))
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "epoch_vs_disk_cap.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [str(path)]
