"""Run one command inside a cgroup memory cap, from a cold page cache of a store; print how it ended.

    .venv/bin/python tools/capped.py --cap 1.85GiB --store ./store -- featdb-train ./store ... --json

Drops the page cache of every file under STORE (``POSIX_FADV_DONTNEED``), then runs the command
(a console script of this virtualenv, or anything on ``PATH``) in its own cgroup with memory
limited to CAP (root; cgroup v1 or v2), and prints one JSON object: exit status, whether the OOM
killer ended it, seconds, its peak RSS, the bytes it read from storage, and its stdout parsed as
JSON where it is (``featdb-train --json``), else its last 2,000 characters.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from featdb import parse_size  # noqa: E402
from featdb.cgroup import MemoryCap, command_path  # noqa: E402
from featdb.io import drop_page_cache  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cap", type=parse_size, required=True, help="memory cap, e.g. 1.85GiB")
    p.add_argument("--store", type=Path, help="drop this folder's files from the page cache first")
    p.add_argument("--timeout", type=float, help="seconds before the command is killed")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    a = p.parse_args()
    argv = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not argv:
        p.error("no command given")
    for f in a.store.rglob("*") if a.store else ():
        if f.is_file():
            drop_page_cache(f)
    with MemoryCap(a.cap, "capped") as cg:
        capped, why = cg.capped, cg.why_uncapped
        done = cg.run([command_path(argv[0]), *argv[1:]], timeout=a.timeout)
    try:
        out = json.loads(done.stdout)
    except ValueError:
        out = done.stdout[-2000:]
    print(
        json.dumps(
            {
                "cap_bytes": a.cap,
                "capped": capped,
                "why_uncapped": why,
                "returncode": done.returncode,
                "oom_killed": done.oom_killed,
                "seconds": done.seconds,
                "peak_rss_bytes": done.peak_rss_bytes,
                "io_read_bytes": done.last_io_read_bytes,
                "stdout": out,
                "stderr_tail": done.stderr_tail[-1000:],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
