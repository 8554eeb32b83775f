"""Stale derived data is refused by content id: a sample set sampled from a graph since replaced, another
store's sample set of the same name."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import FEAT, assert_one_error_line, make_layout, make_sample_set, make_synth_store

import featdb
from featdb import errors
from featdb.cli import cli
from featdb.ingest.synth import synth
from featdb.sampling import SampleSet

pytest.importorskip("dgl")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stale") / "store"
    with make_synth_store(path, nodes=900) as st:
        make_sample_set(st, "tr", epochs=1, seed=3)
        make_layout(st, "tr")
    return path


def replace_graph(path: Path) -> None:
    """The same node count, a different graph and labels (what `ingest-graph --replace` does)."""
    with featdb.open(path, "a") as st:
        synth(st, 900, 6.0, 16, 4, seed=7, train_frac=0.3, community_size=200, replace=True)


def test_a_set_sampled_from_a_replaced_graph_is_refused(base: Path, tmp_path: Path) -> None:
    """After `ingest-graph --replace`, training on the old graph's sample set ran to exit 0 against the new
    labels."""
    store = tmp_path / "store"
    shutil.copytree(base, store)
    with featdb.open(store) as st:
        uid = st.catalog.get("sampleset/tr")["graph_uid"]
        assert uid and uid == st.catalog.get("graph")["uid"]
    replace_graph(store)
    with featdb.open(store) as st:
        with pytest.raises(errors.StaleDataError, match=r"featdb sample .* --name tr --fanouts 4,4") as err:
            SampleSet(st, "tr")
        assert SampleSet(st, "tr", check_fresh=False).num_batches > 0  # still inspectable
        old = st.catalog.get("sampleset/tr")
        stale = [s["stale"] for s in featdb.info(st)["sample_sets"]]
        assert stale == ["its graph has been replaced since it was sampled"]
    assert "STALE: its graph has been replaced" in CliRunner().invoke(cli, ["info", str(store)]).output
    from trainer.cli import main

    res = CliRunner().invoke(main, [str(store), "--sample-set", "tr", "--epochs", "1", "-q"])
    assert_one_error_line(res, "StaleDataError", "graph has been replaced")
    assert_one_error_line(CliRunner().invoke(cli, ["pack", str(store), "--sample-set", "tr"]), "StaleDataError")
    # the fix the message gives works, as given, and rebuilds the same kind of set
    fix = str(err.value).split("sample it again: ")[1]
    for command in fix.split(" && "):
        args = shlex.split(command)
        assert args[0] == "featdb"
        res = CliRunner().invoke(cli, [*args[1:], "-q"])
        assert res.exit_code == 0, res.output
    with featdb.open(store, "a") as st:
        new = st.catalog.get("sampleset/tr")
        assert SampleSet(st, "tr").num_batches == old["batches"]
    for k in ("fanouts", "batch_size", "epochs", "seed", "split", "parts"):
        assert new[k] == old[k], k
    with featdb.open(store) as st:
        assert [s["stale"] for s in featdb.info(st)["sample_sets"]] == [None]


def test_a_table_gets_a_new_content_id_when_replaced(base: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(base, store)
    with featdb.open(store, "a") as st:
        before = st.table_info(FEAT)["uid"]
        st.write_table(FEAT, st.read_all(FEAT), replace=True)
        assert st.table_info(FEAT)["uid"] != before


def test_a_reader_refuses_another_stores_set_of_the_same_name(base: Path, tmp_path: Path) -> None:
    """`LayoutReader.attach()` took another store's sample set of the same name."""
    other = tmp_path / "other"
    with make_synth_store(other, nodes=900) as st:
        make_sample_set(st, "tr", epochs=1)
    with featdb.open(base) as a, featdb.open(other) as b, featdb.open_reader(a) as reader:
        with SampleSet(b, "tr") as theirs, pytest.raises(errors.ConfigError, match="is not the one this layout was"):
            reader.attach(theirs)
        with SampleSet(a, "tr") as ours:
            reader.attach(ours)


def test_a_reader_refuses_a_set_sampled_again_under_the_packed_name(base: Path, tmp_path: Path) -> None:
    """A layout records its sample set's content id: a set removed and sampled again under the
    same name is another set, and its batches do not match the layout's maps."""
    store = tmp_path / "store"
    shutil.copytree(base, store)
    with featdb.open(store, "a") as st:
        doc = st.catalog.get(f"generation/{featdb.info(st)['layout']['id']}")
        with SampleSet(st, "tr") as ss:
            assert doc["sample_set_uid"] == ss.uid
        earlier = doc | {"sample_set_uid": "an-earlier-set"}
        st.catalog.write(lambda t: t.put(f"generation/{doc['id']}", earlier))
    with (
        featdb.open(store) as st,
        featdb.open_reader(st) as reader,
        SampleSet(st, "tr") as ss,
        pytest.raises(errors.ConfigError, match="featdb pack --sample-set tr"),
    ):
        reader.attach(ss)
