"""Where model packages live and how a name becomes a :class:`ModelPackage`.

Search order (the first package with a given name wins):

1. built-in packages, ``resources/models/<name>/`` (package data of an installed MedViewer, see
   :func:`medviewer.resources.builtin_models_dir`);
2. the user's models, ``<user data dir>/models/<name>/`` (``platformdirs.user_data_dir("medviewer")``,
   e.g. ``~/.local/share/medviewer/models`` on Linux), where ``medviewer models import`` copies them;
3. directories listed in the environment variable ``MEDVIEWER_MODEL_PATH`` (``os.pathsep``-separated).

An explicit path to a package directory always works and takes precedence over names.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import platformdirs

from medviewer import resources
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
    "MAX_IMPORT_NAME",
    "InvalidPackage",
]

#: the built-in model the app and ``medviewer infer`` use when none is named
DEFAULT_MODEL_NAME = "pneumonia-cxr"
#: extra package directories, ``os.pathsep``-separated
MODEL_PATH_ENV = "MEDVIEWER_MODEL_PATH"


def builtin_models_dir() -> Path:
    """The built-in models, :func:`medviewer.resources.builtin_models_dir` (package data or source tree)."""
    return resources.builtin_models_dir()


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


def resolve_model(name_or_path: str | Path | None, *, by_name_only: bool = False) -> ModelPackage:
    """A package by explicit path (directory, ``model.json`` or ``model.onnx``) or by card name.

    ``None`` or ``""`` means :func:`default_model`; ``by_name_only`` never treats the argument as a path
    (a folder of that name in the working directory does not count).

    Raises
    ------
    ModelPackageError
        No such package, or it fails validation.
    """
    if name_or_path is None or str(name_or_path) == "":
        return default_model()
    p = Path(name_or_path).expanduser()
    looks_like_path = isinstance(name_or_path, Path) or os.sep in str(name_or_path) or str(name_or_path) in (".", "..")
    if not by_name_only and (p.exists() or looks_like_path):
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
    """The package named :data:`DEFAULT_MODEL_NAME`, the first found in search order.

    Normally the built-in copy; if an install lacks it, one imported with ``medviewer models import`` or
    found through ``MEDVIEWER_MODEL_PATH`` serves.

    Raises
    ------
    ModelPackageError
        No package of that name in any search directory, or the first one found is invalid.
    """
    try:
        return resolve_model(DEFAULT_MODEL_NAME, by_name_only=True)
    except ModelPackageError as exc:
        if not exc.reason.startswith("no model named"):
            raise
    where = ", ".join(str(d) for _, d in search_dirs())
    raise ModelPackageError(
        DEFAULT_MODEL_NAME, f"the default model {DEFAULT_MODEL_NAME!r} is not installed (searched {where}); "
                            "reinstall MedViewer, import a package with 'medviewer models import PATH', "
                            "or pass --model PATH")


#: longest card name ``models import`` accepts: the name becomes a folder name (at most 255 bytes on
#: common file systems, and the copy is staged under ``<name>.importing``)
MAX_IMPORT_NAME = 128
_COPY_CHUNK = 1 << 20


def _copy_regular_file(src: Path, dst: Path) -> None:
    """Copy one regular file; refuse a symbolic link, FIFO, device or socket without blocking on it.

    ``O_NOFOLLOW`` refuses a link at open, ``O_NONBLOCK`` keeps a FIFO from blocking, and ``fstat`` on the
    open descriptor decides (no race between checking and copying).
    """
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    if src.is_symlink():
        raise ModelPackageError(src, "is a symbolic link; a model package holds regular files only")
    try:
        fd = os.open(src, flags)
    except OSError as exc:
        raise ModelPackageError(src, f"cannot be read ({exc.strerror or exc})") from None
    with os.fdopen(fd, "rb") as fin:
        if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
            raise ModelPackageError(src, "is not a regular file (a FIFO, device or socket); "
                                         "a model package holds regular files only")
        with open(dst, "xb") as fout:
            shutil.copyfileobj(fin, fout, _COPY_CHUNK)
    shutil.copystat(src, dst, follow_symlinks=False)


def _copy_regular_tree(src: Path, dst: Path) -> None:
    """Copy a folder of regular files and folders (e.g. ``plots/``); refuse links and special files."""
    dst.mkdir()
    for entry in sorted(src.iterdir()):
        if entry.is_symlink():
            raise ModelPackageError(entry, "is a symbolic link; a model package holds regular files only")
        if entry.is_dir():
            _copy_regular_tree(entry, dst / entry.name)
        else:
            _copy_regular_file(entry, dst / entry.name)


def import_model(path: str | Path, *, overwrite: bool = False) -> ModelPackage:
    """Validate the package at ``path`` and copy it into :func:`user_models_dir` ``/ <card name>``.

    Copies ``model.onnx``, ``model.json``, every file the card lists in ``files`` (schema 2, e.g.
    ``ood.npz``) and, when present, ``README.md`` and ``plots/`` -- regular files only: a symbolic link (``README.md -> /etc/passwd``), FIFO or device anywhere in them is refused, so
    nothing outside the package is copied and nothing blocks.

    Raises
    ------
    ModelPackageError
        The package is invalid, holds a link or special file, its name is longer than
        :data:`MAX_IMPORT_NAME` characters, it takes a built-in model's name, or a package with that
        name is already installed (``overwrite=False``).
    """
    src = ModelPackage.load(path, source="path")
    name = src.card.name
    if len(name) > MAX_IMPORT_NAME:
        raise ModelPackageError(path, f"the model name in model.json is {len(name)} characters long; at most "
                                      f"{MAX_IMPORT_NAME} fit a folder name, shorten it")
    for source, root in search_dirs():
        if source == "builtin" and (root / name).is_dir():
            raise ModelPackageError(
                path, f"{name!r} is the name of a built-in model; rename the package in its card")
    dest = user_models_dir() / name
    if dest.exists() or dest.is_symlink():
        if src.path == dest.resolve():
            return ModelPackage.load(dest, source="user")
        if not overwrite:
            raise ModelPackageError(dest, f"a model named {name!r} is already installed here; "
                                          "remove it first or import with --force")
    tmp = dest.with_name(dest.name + ".importing")
    try:
        if tmp.exists() or tmp.is_symlink():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        for fname in (ONNX_FILE, CARD_FILE, "README.md"):
            f = src.path / fname
            if f.is_symlink() or f.exists():
                _copy_regular_file(f, tmp / fname)
        plots = src.path / "plots"
        if plots.is_symlink() or plots.exists():
            if plots.is_symlink() or not plots.is_dir():
                raise ModelPackageError(plots, "is not a folder of regular files; a model package holds "
                                               "regular files only")
            _copy_regular_tree(plots, tmp / "plots")
        for rel in getattr(src.card, "files", None) or {}:  # schema 2 hashes every file (e.g. ood.npz)
            target = tmp / rel
            if not target.exists():  # load() checked that each lies inside the package
                target.parent.mkdir(parents=True, exist_ok=True)
                _copy_regular_file(src.path / rel, target)
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        elif dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except ModelPackageError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ModelPackageError(dest, f"could not copy the package ({exc.strerror or exc})") from None
    return ModelPackage.load(dest, source="user")
