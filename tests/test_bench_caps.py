"""featdb bench caps: parsing --caps and rendering a result (the runs themselves are benchmarks)."""

from __future__ import annotations

from pathlib import Path

import pytest

from featdb.bench_caps import parse_caps, render
from featdb.errors import ConfigError


def test_caps_parse_numbers_and_none_in_order() -> None:
    assert parse_caps("none,5,3, 2,0") == [None, 5.0, 3.0, 2.0, 0.0]
    assert parse_caps("uncapped,1.5") == [None, 1.5]


@pytest.mark.parametrize("text", ["", "five", "-1", "nan", "inf", ",,"])
def test_bad_caps_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--caps"):
        parse_caps(text)


def test_render_shows_each_cap_against_uncapped_and_in_memory() -> None:
    run = {
        "blowup": 4.2,
        "layout_disk_bytes": 5_000_000_000,
        "epoch_s": 11.5,
        "epoch_over_uncapped": 1.49,
        "epoch_over_inmemory": 0.9,
        "predicted_amplification": 0.93,
        "measured_amplification": [0.94, 0.94],
        "test_acc": 0.84,
        "row_format": "float32",
    }
    res = {
        "store": "s",
        "sample_set": "t",
        "host_cache": 100 << 20,
        "segment_cache": 512 << 20,
        "epochs": 2,
        "capped": False,
        "runs": [run | {"cap": None, "epoch_over_uncapped": 1.0}, run | {"cap": 5.0}],
        "in_memory": {"epoch_s": 12.9, "test_acc": 0.845},
    }
    lines = render(res).splitlines()
    assert lines[2].split()[:2] == ["float32", "none"] and lines[3].split()[:3] == ["float32", "5", "4.2"]
    assert "1.49" in lines[3] and "0.940" in lines[3]
    assert lines[-1] == "in-memory baseline: 12.9 s per epoch, test acc 0.845"


def test_the_result_says_the_runs_were_capped_after_the_group_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The report read `capped` after removing the cgroup, so a capped run said it was not."""
    from featdb import bench_caps

    class Group:
        def __init__(self, limit: int | None, name: str) -> None:
            self.limit, self.path, self.why_uncapped = limit, Path("/sys/fs/cgroup/memory/x"), None

        @property
        def capped(self) -> bool:
            return self.path is not None

        def close(self) -> None:
            self.path = None

    failed = {"completed": False, "error": ["no"], "summary": None, "peak_rss_bytes": 0, "last_io_read_bytes": 0}
    monkeypatch.setattr(bench_caps, "MemoryCap", Group)
    monkeypatch.setattr(bench_caps, "run_step", lambda *a, **k: failed)
    res = bench_caps.run(tmp_path, "t", [3.0], 1 << 20, 1 << 20, 1, 1 << 30, 2 << 30, False, lambda s: None)
    assert res["capped"] is True and res["cap_bytes"] == 2 << 30 and res["why_uncapped"] is None
