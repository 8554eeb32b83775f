"""featdb bench caps: parsing --caps and rendering a result (the runs themselves are benchmarks)."""

from __future__ import annotations

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
