"""Where model packages live and how a name becomes a :class:`ModelPackage`.

Search order (the first package with a given name wins):

1. built-in packages in ``resources/models/<name>/`` of the source tree;
2. the user's models, ``<user data dir>/models/<name>/`` (``platformdirs.user_data_dir("medviewer")``,
   e.g. ``~/.local/share/medviewer/models`` on Linux), where ``medviewer models import`` copies them;
3. directories listed in the environment variable ``MEDVIEWER_MODEL_PATH`` (``os.pathsep``-separated).

An explicit path to a package directory always works and takes precedence over names.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from medviewer.errors import ModelPackageError
from medviewer.inference.card import load_card
from medviewer.inference.package import CARD_FILE, ONNX_FILE, ModelPackage

__all__ = [
    "DEFAULT_MODEL_NAME",
    "MODEL_PATH_ENV",
    "builtin_models_dir",
    "user_models_dir",
    "search_dirs",
    "scan_models",
    "find_models",
    "resolve_model",
    "default_model",
    "import_model",
    "InvalidPackage",
]

#: the built-in model the app and ``medviewer infer`` use when none is named
DEFAULT_MODEL_NAME = "pneumonia-cxr"
#: extra package directories, ``os.pathsep``-separated
MODEL_PATH_ENV = "MEDVIEWER_MODEL_PATH"


def builtin_models_dir() -> Path:
    """``resources/models`` beside the ``medviewer`` package (the repository's built-in models)."""
    return Path(__file__).resolve().parents[2] / "resources" / "models"


def user_models_dir() -> Path:
    """The user's model directory, ``platformdirs.user_data_dir("medviewer") / "models"`` (may not exist)."""
    return Path(platformdirs.user_data_dir("medviewer", appauthor=False)) / "models"


def search_dirs() -> list[tuple[str, Path]]:
    """``(source, directory)`` pairs in search order: builtin, user, then ``MEDVIEWER_MODEL_PATH``."""
    dirs = [("builtin", builtin_models_dir()), ("user", user_models_dir())]
    for entry in os.environ.get(MODEL_PATH_ENV, "").split(os.pathsep):
        if entry.strip():
            dirs.append(("env", Path(entry.strip()).expanduser()))
    return dirs


@dataclass(frozen=True)
class InvalidPackage:
    """A directory that looks like a model package but failed validation."""

    path: Path
    source: str
    reason: str


def _candidates(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    if (root / CARD_FILE).is_file():  # the directory is itself a package
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and ((d / CARD_FILE).is_file() or (d / ONNX_FILE).is_file()))


def scan_models() -> tuple[list[ModelPackage], list[InvalidPackage]]:
    """All packages in the search directories: the valid ones (first of each name) and the invalid ones."""
    found: list[ModelPackage] = []
    bad: list[InvalidPackage] = []
    names: set[str] = set()
    for source, root in search_dirs():
        for d in _candidates(root):
            try:
                pkg = ModelPackage.load(d, source=source)
            except ModelPackageError as exc:
                bad.append(InvalidPackage(d, source, exc.reason))
                continue
            if pkg.card.name not in names:
                names.add(pkg.card.name)
                found.append(pkg)
    return found, bad


def find_models() -> list[ModelPackage]:
    """Valid model packages in search order (see module docstring); invalid ones are left out."""
    return scan_models()[0]


def resolve_model(name_or_path: str | Path | None) -> ModelPackage:
    """A package by explicit path (directory, ``model.json`` or ``model.onnx``) or by card name.

    ``None`` or ``""`` means :func:`default_model`.

    Raises
    ------
    ModelPackageError
        No such package, or it fails validation.
    """
    if name_or_path is None or str(name_or_path) == "":
        return default_model()
    p = Path(name_or_path).expanduser()
    looks_like_path = isinstance(name_or_path, Path) or os.sep in str(name_or_path) or str(name_or_path) in (".", "..")
    if p.exists() or looks_like_path:
        return ModelPackage.load(p, source="path")
    name = str(name_or_path)
    first_error: InvalidPackage | None = None
    for source, root in search_dirs():
        for d in _candidates(root):
            try:  # the card alone says whether this is the one; only that package is fully validated
                card = load_card(d)
            except ModelPackageError as exc:
                if d.name == name and first_error is None:
                    first_error = InvalidPackage(d, source, exc.reason)
                continue
            if card.name != name:
                continue
            try:
                return ModelPackage.load(d, source=source)
            except ModelPackageError as exc:
                if first_error is None:
                    first_error = InvalidPackage(d, source, exc.reason)
    if first_error is not None:
        raise ModelPackageError(first_error.path, first_error.reason)
    known = ", ".join(sorted(m.card.name for m in find_models())) or "none"
    raise ModelPackageError(
        name, f"no model named {name!r} (installed: {known}); give a package path or run 'medviewer models list'")


def default_model() -> ModelPackage:
    """The built-in :data:`DEFAULT_MODEL_NAME` package.

    Raises
    ------
    ModelPackageError
        It is missing (not trained/shipped yet) or invalid.
    """
    d = builtin_models_dir() / DEFAULT_MODEL_NAME
    if not d.is_dir():
        raise ModelPackageError(
            d, f"the default model {DEFAULT_MODEL_NAME!r} is not installed; train and export it "
               "(see README) or pass --model PATH")
    return ModelPackage.load(d, source="builtin")


def import_model(path: str | Path, *, overwrite: bool = False) -> ModelPackage:
    """Validate the package at ``path`` and copy it into :func:`user_models_dir` ``/ <card name>``.

    Copies ``model.onnx``, ``model.json`` and, when present, ``README.md`` and ``plots/``.

    Raises
    ------
    ModelPackageError
        The package is invalid, or a package with that name is already installed (``overwrite=False``).
    """
    src = ModelPackage.load(path, source="path")
    dest = user_models_dir() / src.card.name
    if dest.exists():
        if src.path == dest.resolve():
            return ModelPackage.load(dest, source="user")
        if not overwrite:
            raise ModelPackageError(dest, f"a model named {src.card.name!r} is already installed here; "
                                          "remove it first or import with --force")
        shutil.rmtree(dest)
    for source, root in search_dirs():
        if source == "builtin" and (root / src.card.name).is_dir():
            raise ModelPackageError(
                path, f"{src.card.name!r} is the name of a built-in model; rename the package in its card")
    tmp = dest.with_name(dest.name + ".importing")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        for name in (ONNX_FILE, CARD_FILE, "README.md"):
            if (src.path / name).is_file():
                shutil.copy2(src.path / name, tmp / name)
        if (src.path / "plots").is_dir():
            shutil.copytree(src.path / "plots", tmp / "plots")
        tmp.rename(dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelPackageError(dest, f"could not copy the package ({exc.strerror or exc})") from None
    return ModelPackage.load(dest, source="user")
