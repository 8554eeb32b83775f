"""The cost of read-path checksums on training: featdb-train alternating with and without
``--no-verify-reads``, each run its own process, nothing else should be running.

    .venv/bin/python tools/bench_verify_cost.py STORE --sample-set train --pairs 4 --epochs 3 \\
        --memory-budget 1.6GiB

Prints one JSON object: every run's epoch seconds, stage busy and stall seconds and the CPU
seconds the process used (user, system); then per mode the mean epoch, the ratio of the means
(``verify_over_off``) and what checking added to each stage's busy time and to the CPU time.

``--control DUTY`` runs a control instead: every run without checks, alternately alone and beside
a process at ``SCHED_IDLE`` priority that hashes a 1 MiB buffer of its own (no memory or lock
shared with the trainer) for DUTY of every 26 ms. ``verify_over_off`` is then that run's ratio:
what work on the core the model step leaves idle costs the step. ``--threads N`` is passed to
featdb-train (torch's intra-op threads).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featdb.cgroup import command_path  # noqa: E402

MODES = {"verify": [], "off": ["--no-verify-reads"]}
HASHER = """
import os, sys, time, crc32c
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
buf, busy, period = bytes(1 << 20), float(sys.argv[1]) * 0.026, 0.026
while True:
    t = time.perf_counter()
    while time.perf_counter() - t < busy:
        crc32c.crc32c(buf)
    time.sleep(max(0.0, period - (time.perf_counter() - t)))
"""


def beside_hasher(duty: float, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()`` with the idle-priority hasher running beside it."""
    p = subprocess.Popen([sys.executable, "-c", HASHER, str(duty)])
    try:
        time.sleep(0.5)  # started and hashing
        if p.poll() is not None:
            raise SystemExit(f"the control's hasher exited ({p.returncode}) before the run")
        return fn()
    finally:
        p.kill()
        p.wait()


def train(a: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """One featdb-train run: its summary's timings and the CPU seconds it used."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [command_path("featdb-train"), a.store, "--sample-set", a.sample_set, "--epochs", str(a.epochs)]
        args += ["--memory-budget", a.memory_budget, "--threads", str(a.threads)]
        args += ["--checkpoint", str(Path(tmp) / "ckpt.pt"), "--json", *extra]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        done = subprocess.run(args, capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)}: exit {done.returncode}\n{done.stderr[-2000:]}")
    s = json.loads(done.stdout)
    return {
        "epoch_s": s["epoch_s"],
        "stage_busy_s": s["stage_s"],
        "stage_stall_s": s.get("stage_stall_s", {}),
        "cpu_user_s": round(after.ru_utime - before.ru_utime, 2),
        "cpu_sys_s": round(after.ru_stime - before.ru_stime, 2),
    }


def mean_of(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    stages = runs[0][key]
    return {k: statistics.mean(r[key][k] for r in runs) for k in stages}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("store")
    ap.add_argument("--sample-set", default="train")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--memory-budget", default="1.6GiB")
    ap.add_argument("--threads", type=int, default=0, help="featdb-train --threads (0: torch's default)")
    ap.add_argument("--control", type=float, default=None, metavar="DUTY")
    a = ap.parse_args()
    if a.control is not None and not 0 < a.control < 1:
        ap.error("--control DUTY is a fraction of each 26 ms, between 0 and 1")

    def unchecked() -> dict[str, Any]:
        return train(a, MODES["off"])

    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for i in range(a.pairs):
        order = list(MODES) if i % 2 == 0 else list(MODES)[::-1]  # neither mode always runs first
        for mode in order:
            if a.control is None:
                r = train(a, MODES[mode])
            else:  # "verify" stands for the run beside the hasher; both runs unchecked
                r = beside_hasher(a.control, unchecked) if mode == "verify" else unchecked()
            runs[mode].append(r)
            print(f"pair {i + 1}/{a.pairs} {mode}: epochs {r['epoch_s']}", file=sys.stderr)
    epoch = {m: statistics.mean(statistics.mean(r["epoch_s"]) for r in rs) for m, rs in runs.items()}
    busy = {m: mean_of(rs, "stage_busy_s") for m, rs in runs.items()}
    stall = {m: {k: round(v, 3) for k, v in mean_of(rs, "stage_stall_s").items()} for m, rs in runs.items()}
    cpu = {m: statistics.mean(r["cpu_user_s"] + r["cpu_sys_s"] for r in rs) for m, rs in runs.items()}
    out = {
        "runs": runs,
        "mean_epoch_s": {m: round(v, 3) for m, v in epoch.items()},
        "verify_over_off": round(epoch["verify"] / epoch["off"], 4),
        "added_stage_busy_s_per_run": {k: round(busy["verify"][k] - busy["off"][k], 3) for k in busy["off"]},
        "added_cpu_s_per_run": round(cpu["verify"] - cpu["off"], 2),
        "mean_stage_stall_s": stall,
        "control_duty": a.control,
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
