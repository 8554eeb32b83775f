"""The public surface: the trainer uses only what featdb exports, and featdb imports nothing from it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import featdb

ROOT = Path(__file__).resolve().parent.parent


def _imports(package: str) -> list[tuple[str, str, int, str]]:
    """(file, imported module, line, name) for every ``from X import name`` and ``import X``."""
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out += [(path.name, node.module, node.lineno, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                out += [(path.name, a.name, node.lineno, "") for a in node.names]
    return out


def _attributes(package: str, root_name: str) -> set[str]:
    """Names used as ``featdb.<name>`` in the package's code."""
    names = set()
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == root_name:
                names.add(node.attr)
    return names


def test_featdb_imports_nothing_from_the_trainer() -> None:
    bad = [i for i in _imports("featdb") if i[1] == "trainer" or i[1].startswith("trainer.")]
    assert bad == []


def test_the_trainer_imports_only_exported_names() -> None:
    """Every ``from featdb... import name`` in trainer/ names something in that module's ``__all__``,
    and the module is featdb itself or one of its public sub-packages (or the error tree)."""
    public = {
        "featdb",
        "featdb.errors",
        "featdb.sampling",
        "featdb.serve",
        "featdb.layout",
        "featdb.cli",
        "featdb.distributed",
    }
    seen = 0
    for file, module, line, name in _imports("trainer"):
        if module != "featdb" and not module.startswith("featdb."):
            continue
        seen += 1
        assert module in public, f"trainer/{file}:{line} imports from internal module {module}"
        if name:
            exported = getattr(importlib.import_module(module), "__all__", ())
            assert name in exported, f"trainer/{file}:{line}: {module}.{name} is not in {module}.__all__"
    assert seen > 5
    used = _attributes("trainer", "featdb")
    assert used and used <= set(featdb.__all__), used - set(featdb.__all__)


@pytest.mark.parametrize(
    "module",
    [
        "featdb",
        "featdb.errors",
        "featdb.sampling",
        "featdb.traces",
        "featdb.serve",
        "featdb.layout",
        "featdb.cli",
        "featdb.adapters",
    ],
)
def test_every_exported_name_exists(module: str) -> None:
    mod = importlib.import_module(module)
    missing = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert missing == []


RANK = {  # the data flow: a module may import only modules of its own rank or lower
    **dict.fromkeys(
        (
            "errors",
            "units",
            "io",
            "catalog",
            "tables",
            "store",
            "memory",
            "progress",
            "names",
            "locks",
            "records",
            "integrity",
            "pagesums",
            "runs",
            "rowcopy",
            "rowformat",
            "rowkernels",
            "updates",
        ),
        0,
    ),
    "graph": 1,
    "ingest": 2,
    "sampling": 3,
    "traces": 3,
    "layout": 4,
    "serve": 5,
    **dict.fromkeys(
        ("bench", "bench_train", "bench_caps", "bench_plots", "cgroup", "cli", "distributed", "inspect"), 6
    ),  # inspect describes every stage's data (a stale sample set included)
    "adapters": 7,  # other libraries' faces over the whole of featdb
}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_the_data_flow_reads_one_way() -> None:
    """ingest -> sample -> plan -> pack -> serve: no stage imports a later one."""
    backwards = []
    for path in sorted((ROOT / "featdb").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        me = ".".join(p for p in rel.parts if p != "__init__")
        if _stage(me) == "":
            continue  # featdb/__init__.py: the public API re-exports every stage
        assert _stage(me) in RANK, f"{me}: place its stage in RANK"
        package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("featdb.") or _stage(target) not in RANK:
                continue
            if RANK[_stage(target)] > RANK[_stage(me)]:
                backwards.append(f"{me} imports {target}")
    assert backwards == []


def test_featdb_raises_only_its_own_errors() -> None:
    """Every ``raise SomeError(...)`` in featdb/ names a FeatDBError subclass (or click's, in the CLI)."""
    from featdb import errors

    ours = {n for n in errors.__all__ if issubclass(getattr(errors, n), errors.FeatDBError)}
    allowed = ours | {"ClickException", "BadParameter", "os_error"}  # os_error returns a StorageError
    bad = []
    for path in sorted((ROOT / "featdb").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
                func = node.exc.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name not in allowed:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} raises {name}")
    assert bad == []
