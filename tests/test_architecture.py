"""The layer order of ``medviewer`` and ``training``, checked on every import statement with :mod:`ast`.

Every ``import`` and ``from ... import`` counts, at module level *and* inside functions (a lazy import
still points an arrow at the module it names). The layers, lowest first; a module may import its own
package and any package of a *lower* layer, never one of its own layer or above:

====  =============================================================================================
 0    ``medviewer`` (the version), ``errors``, ``spec``, ``providers``, ``resources`` -- leaves
 1    ``limits``, ``audit``
 2    ``io`` -- reading DICOM files and folders
 3    ``imaging`` -- the display pipeline (modality LUT, VOI LUT, MPR)
 4    ``inference`` -- model packages, sessions, the intended-use policy, overlays
 5    ``deid``, ``pacs`` -- de-identification; DIMSE/DICOMweb clients
 6    ``export`` -- DICOM SR / Secondary Capture / GSPS writers
 7    ``workstation`` -- the Qt-free reading-session models
 8    ``serve`` (the headless DICOM node), ``gui`` (the Qt views) -- peers, neither imports the other
 9    ``cli`` -- the command line; it starts the GUI
10    ``__main__``
====  =============================================================================================

Beside the order: Qt (PySide6/shiboken6) only under ``medviewer/gui/``; ``torch`` and ``training`` never
from ``medviewer``; ``training`` imports only ``medviewer``'s layers up to ``export`` (no app layer, no Qt);
no import cycle between modules (in-function imports included); no file in ``medviewer/`` over 600 lines.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 600

#: package (or top-level module) of medviewer -> layer; lower layers never import higher ones
LAYERS: dict[str, int] = {
    "medviewer": 0, "medviewer.errors": 0, "medviewer.spec": 0, "medviewer.providers": 0,
    "medviewer.resources": 0,
    "medviewer.limits": 1, "medviewer.audit": 1,
    "medviewer.io": 2,
    "medviewer.imaging": 3,
    "medviewer.inference": 4,
    "medviewer.deid": 5, "medviewer.pacs": 5,
    "medviewer.export": 6,
    "medviewer.workstation": 7,
    "medviewer.serve": 8, "medviewer.gui": 8,
    "medviewer.cli": 9,
    "medviewer.__main__": 10,
}
#: the highest medviewer layer that ``training`` may import (Qt-free library code, not the app)
TRAINING_MAX_LAYER = LAYERS["medviewer.export"]
QT = ("PySide6", "shiboken6")

#: TEMPORARY: arrows that point the wrong way today and are being removed by the typed-applicability
#: work (issue #22 item 4: the policy and the overlay composition move from ``workstation`` into
#: ``inference``). Each entry is "importer -> imported". This list must end empty.
KNOWN_UPWARD_IMPORTS: set[str] = set()
#: TEMPORARY: module cycles being removed. Empty: keep it so.
KNOWN_CYCLES: set[frozenset[str]] = set()
#: TEMPORARY: files over 600 lines that are being split. Must end empty (ai_panel.py was split: gui/ai_rows.py).
KNOWN_OVERSIZED: set[str] = set()


def _python_files() -> list[Path]:
    return sorted(p for top in ("medviewer", "training") for p in (ROOT / top).rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in _python_files()}


@functools.cache
def _imported_names(path: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` for every import anywhere in the file; ``from pkg import sub`` yields
    ``pkg.sub`` when ``sub`` is a module, else ``pkg``. Relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((node.lineno, sub if sub in MODULES else target))
    return out


def _resolve(name: str) -> str | None:
    """The medviewer/training module a dotted import name refers to (its longest known prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _layer_key(module: str) -> str | None:
    """The key of :data:`LAYERS` that ``module`` belongs to (its package, or the top-level module)."""
    parts = module.split(".")
    if parts[0] != "medviewer":
        return None
    for n in (2, 1):
        key = ".".join(parts[:n])
        if key in LAYERS:
            return key
    return None


@functools.cache
def _arrows() -> list[tuple[str, int, str]]:
    """``(importer, line, imported module)`` for every import of a medviewer/training module."""
    out = []
    for mod, path in MODULES.items():
        for line, name in _imported_names(path):
            target = _resolve(name)
            if target is not None and target != mod:
                out.append((mod, line, target))
    return out


def _foreign(top: str) -> list[str]:
    """``module:line -> name`` for every import of the top-level package ``top`` (e.g. PySide6)."""
    return [f"{mod}:{line} -> {name}" for mod, path in MODULES.items() for line, name in _imported_names(path)
            if name == top or name.startswith(top + ".")]


def _upward() -> list[str]:
    bad = []
    for mod, _line, target in _arrows():
        src, dst = _layer_key(mod), _layer_key(target)
        if dst is None:
            if mod.startswith("medviewer") and target.startswith("training"):
                bad.append(f"{mod} -> {target}")
            continue
        if mod.startswith("training"):
            if LAYERS[dst] > TRAINING_MAX_LAYER:
                bad.append(f"{mod} -> {target}")
            continue
        if src is None or src == dst:
            continue
        if LAYERS[dst] >= LAYERS[src]:
            bad.append(f"{mod} -> {target}")
    return sorted(set(bad))


def _cycles() -> list[frozenset[str]]:
    """Strongly connected components (more than one module) of the module import graph."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, _line, target in _arrows():
        graph[mod].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(frozenset(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(MODULES)))
    try:
        for v in graph:
            if v not in index:
                visit(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_every_medviewer_package_has_a_layer():
    """A new package must be placed in the order, not silently escape the check."""
    packages = {".".join(m.split(".")[:2]) for m in MODULES if m.startswith("medviewer.")}
    assert sorted(p for p in packages if p not in LAYERS) == []


def test_the_checker_sees_imports_inside_functions():
    """Not vacuous: a lazy import inside a function is an arrow (the CLI starts the GUI that way), and a
    synthetic upward arrow is reported."""
    arrows = {(m, t) for m, _line, t in _arrows()}
    assert ("medviewer.cli", "medviewer.gui.app") in arrows  # ``from medviewer.gui.app import run_app`` in main()
    assert ("medviewer.inference.session", "medviewer.imaging.preprocess") in arrows
    assert len(arrows) > 200
    assert LAYERS[_layer_key("medviewer.io.instance")] < LAYERS[_layer_key("medviewer.gui.viewport")]


def test_no_module_imports_a_higher_layer():
    bad = [a for a in _upward() if a not in KNOWN_UPWARD_IMPORTS]
    assert bad == [], "imports pointing up the layer order (see this module's docstring):\n" + "\n".join(bad)


def test_the_temporary_allow_list_only_holds_arrows_that_still_exist():
    """When an allow-listed arrow is removed, its entry must go too (the list shrinks to empty)."""
    assert sorted(KNOWN_UPWARD_IMPORTS - set(_upward())) == []
    assert [sorted(c) for c in KNOWN_CYCLES - set(_cycles())] == []


def test_no_import_cycles():
    """Not even through imports inside functions (which only hide a cycle from the interpreter)."""
    bad = [sorted(c) for c in _cycles() if c not in KNOWN_CYCLES]
    assert bad == []


def test_qt_only_under_gui():
    bad = [a for top in QT for a in _foreign(top) if not a.startswith("medviewer.gui")]
    assert bad == []


def test_every_gui_module_uses_qt():
    """Qt-free code lives below ``gui`` (workstation models, measurements, key bindings, corner text); a
    module under ``medviewer/gui/`` either imports Qt or is a re-export shim of a moved module."""
    bad = []
    for path in sorted((ROOT / "medviewer" / "gui").glob("*.py")):
        names = [n for _line, n in _imported_names(path)]
        if any(n.split(".")[0] in QT for n in names) or path.name == "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        if not doc.startswith("Moved"):
            bad.append(path.name)
    assert bad == []


def test_medviewer_never_imports_torch_or_training():
    bad = [a for top in ("torch", "training") for a in _foreign(top) if a.startswith("medviewer")]
    assert bad == []


def test_no_medviewer_file_over_600_lines():
    sizes = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
             for p in (ROOT / "medviewer").rglob("*.py")}
    assert len(sizes) > 100
    big = {f: n for f, n in sizes.items() if n > MAX_LINES}
    assert sorted(set(big) - KNOWN_OVERSIZED) == [], f"split these into cohesive modules: {big}"
    assert sorted(KNOWN_OVERSIZED - set(big)) == []  # a file that was split leaves the allow-list
