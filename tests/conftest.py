"""Shared fixtures: small stores built the way users build them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import featdb

DIRECT_ROOT = Path(__file__).resolve().parent.parent / ".test-tmp"


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_path: Path):  # type: ignore[no-untyped-def]
    st = featdb.create(store_path)
    yield st
    st.close()


def disk_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A directory on a disk filesystem (O_DIRECT works), even when /tmp is tmpfs."""
    DIRECT_ROOT.mkdir(exist_ok=True)
    import tempfile

    return Path(tempfile.mkdtemp(prefix=name, dir=DIRECT_ROOT))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
