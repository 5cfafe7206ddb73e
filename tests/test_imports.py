"""The core packages import in any order, and the package graph has no imaging -> inference edge.

``medviewer.imaging.preprocess`` once imported ``medviewer.inference.card`` while
``medviewer.inference.session`` imported ``medviewer.imaging.preprocess``: a cycle that a lazy module
``__getattr__`` hid. The input spec / preprocessing types now live in the leaf module ``medviewer.spec``.
"""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

import medviewer

PACKAGE_ROOT = Path(medviewer.__file__).resolve().parent
CORE = ("medviewer.imaging", "medviewer.inference", "medviewer.io")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE_ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every medviewer module named by an import statement anywhere in the file (top level or in a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{alias.name}" for alias in node.names)  # "from pkg import module"
    return {m for m in out if m == "medviewer" or m.startswith("medviewer.")}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE_ROOT.rglob("*.py")}


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _edges(graph: dict[str, set[str]], src: str, dst: str) -> list[str]:
    return sorted(f"{m} -> {t}" for m, targets in graph.items() if _in(m, src) for t in targets if _in(t, dst))


def test_graph_parser_sees_real_edges():
    """The checker is not vacuous: it finds the edges that do exist."""
    graph = _graph()
    assert "medviewer.inference.session -> medviewer.imaging.preprocess" in _edges(
        graph, "medviewer.inference", "medviewer.imaging")
    assert "medviewer.imaging.preprocess -> medviewer.spec" in _edges(graph, "medviewer.imaging", "medviewer.spec")
    assert len(graph) > 40


def test_no_imaging_to_inference_edge():
    assert _edges(_graph(), "medviewer.imaging", "medviewer.inference") == []


def test_io_imports_neither_imaging_nor_inference():
    graph = _graph()
    assert _edges(graph, "medviewer.io", "medviewer.imaging") == []
    assert _edges(graph, "medviewer.io", "medviewer.inference") == []


@pytest.mark.parametrize("leaf", ["medviewer.spec", "medviewer.providers"])
def test_leaf_modules_import_no_medviewer_module(leaf):
    """medviewer.spec (card input/preprocessing types, used by imaging and inference) and medviewer.providers
    (provider names, used by the command line at start-up) import no other medviewer module."""
    assert _graph()[leaf] == set()


def test_a_leaf_of_inference_loads_neither_pydicom_nor_the_display_pipeline():
    """The package loads its submodules on first access (import time, not a cycle): a model card or a colour
    map, which the GUI needs before its window shows, comes without pydicom, imaging, io or onnxruntime."""
    code = ("import sys\n"
            "import medviewer.inference.card, medviewer.inference.heatmap\n"
            "bad = [m for m in ('pydicom', 'onnxruntime', 'medviewer.imaging', 'medviewer.io', "
            "'medviewer.inference.session', 'medviewer.inference.batch') if m in sys.modules]\n"
            "print(bad)\n"
            "import medviewer.inference as mi\n"
            "assert mi.Session is mi.session.Session and 'score_instances' in dir(mi)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    import medviewer.inference as mi

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mi.nope  # noqa: B018


@pytest.mark.parametrize("order", list(itertools.permutations(CORE)), ids="-".join)
def test_core_packages_import_in_any_order(order):
    """Each order in a fresh interpreter: every public name resolves, and the card types are one class."""
    code = (
        "import importlib, sys\n"
        f"mods = [importlib.import_module(m) for m in {list(order)!r}]\n"
        "for m in mods:\n"
        "    missing = [n for n in getattr(m, '__all__', []) if not hasattr(m, n)]\n"
        "    assert not missing, (m.__name__, missing)\n"
        "import medviewer.inference.card as card, medviewer.spec as spec, medviewer.imaging.preprocess as pre\n"
        "assert card.InputSpec is spec.InputSpec is pre.InputSpec\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_card_json_and_pickle_keep_working_after_the_move():
    """Cards and their parts round-trip through JSON and pickle, by the old import path and the new one."""
    import pickle

    from medviewer.inference.card import InputSpec, Preprocessing, ResizeMode
    from medviewer.spec import InputSpec as LeafInputSpec

    assert InputSpec is LeafInputSpec
    pre = Preprocessing(resize=ResizeMode.LETTERBOX, pad_value=3, mean=[0.1, 0.2, 0.3], std=[1, 1, 1])
    assert Preprocessing.model_validate_json(pre.model_dump_json()) == pre
    assert pre.model_dump(mode="json")["resize"] == "letterbox"
    spec = InputSpec(channels=3, height=224, width=200)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert pickle.loads(pickle.dumps(pre)) == pre
    # a pickle written before the move names the class by its old module; it still loads
    old = pickle.dumps(spec, protocol=0).replace(b"medviewer.spec\n", b"medviewer.inference.card\n")
    assert b"medviewer.inference.card" in old and pickle.loads(old) == spec
