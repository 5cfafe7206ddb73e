"""Model packages: a directory with ``model.onnx`` and its card ``model.json``, validated before use.

Loading checks, in order, and stops at the first failure with a one-line
:class:`~medviewer.errors.ModelPackageError`:

1. the card parses and satisfies schema v1 (:func:`medviewer.inference.card.load_card`);
2. ``model.onnx`` exists and its SHA-256 equals ``card.sha256`` (the card describes *these* weights);
3. the ONNX graph loads in onnxruntime (CPU) and has exactly one input, named ``card.input.name``,
   float32, shape ``(N, channels, height, width)``, and the outputs ``card.outputs.logits`` (rank 2)
   and ``card.outputs.cam`` (rank 4);
4. a dry run on one all-zero input returns logits ``(1, K)`` and CAMs ``(1, K, h, w)`` with
   ``K = len(card.labels)``, so symbolic dimensions are checked too.

Example
-------
>>> pkg = ModelPackage.load("resources/models/pneumonia-cxr")  # doctest: +SKIP
>>> pkg.card.labels  # doctest: +SKIP
['NORMAL', 'PNEUMONIA']
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medviewer.errors import ModelPackageError
from medviewer.inference._ort import quiet_session
from medviewer.inference.card import ModelCard, load_card, sha256_file

__all__ = ["ModelPackage", "CARD_FILE", "ONNX_FILE"]

CARD_FILE = "model.json"
ONNX_FILE = "model.onnx"

_cache: dict[tuple, ModelPackage] = {}
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class ModelPackage:
    """A validated model package.

    Attributes
    ----------
    path
        The package directory.
    card
        Its :class:`~medviewer.inference.card.ModelCard`.
    onnx_path
        ``path / "model.onnx"``.
    source
        Where it was found: ``"builtin"`` (``resources/models``), ``"user"`` (user data dir),
        ``"env"`` (``MEDVIEWER_MODEL_PATH``) or ``"path"`` (given explicitly).
    feature_shape
        ``(h, w)`` of the CAM output observed in the dry run.
    """

    path: Path
    card: ModelCard
    onnx_path: Path
    source: str = "path"
    feature_shape: tuple[int, int] = (0, 0)
    readme_path: Path | None = None
    plots: tuple[Path, ...] = field(default_factory=tuple)

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def sha256(self) -> str:
        return self.card.sha256

    def describe(self) -> str:
        """``name version (task, K labels) from source``: one line for lists and logs."""
        return (f"{self.card.name} {self.card.version} ({self.card.task.value}, "
                f"{len(self.card.labels)} labels) [{self.source}] {self.path}")

    @classmethod
    def load(cls, path: str | Path, source: str = "path") -> ModelPackage:
        """Validate and load the package at ``path`` (its directory, or its ``model.json``/``model.onnx``).

        Results are cached per (directory, card and ONNX file size and modification time), so
        listing models repeatedly does not re-run the checks.

        Raises
        ------
        ModelPackageError
            With a one-line reason: see the module docstring for the checks.
        """
        p = Path(path).expanduser()
        if p.is_file() and p.name in (CARD_FILE, ONNX_FILE):
            p = p.parent
        if not p.exists():
            raise ModelPackageError(p, "no such model package (expected a directory with model.json and model.onnx)")
        if not p.is_dir():
            raise ModelPackageError(p, "a model package is a directory holding model.json and model.onnx")
        p = p.resolve()
        card_path, onnx_path = p / CARD_FILE, p / ONNX_FILE
        key = (p, source, _stat(card_path), _stat(onnx_path))
        with _cache_lock:
            hit = _cache.get(key)
        if hit is not None:
            return hit
        card = load_card(card_path)
        if not onnx_path.is_file():
            raise ModelPackageError(p, f"{ONNX_FILE} not found next to {CARD_FILE}")
        digest = sha256_file(onnx_path)
        if digest != card.sha256:
            raise ModelPackageError(
                p, f"{ONNX_FILE} SHA-256 {digest[:12]}... does not match the card's {card.sha256[:12]}... "
                   "(the weights were changed or the card belongs to another model; re-export the package)")
        feature_shape = check_graph(onnx_path, card)
        readme = p / "README.md"
        pkg = cls(path=p, card=card, onnx_path=onnx_path, source=source, feature_shape=feature_shape,
                  readme_path=readme if readme.is_file() else None,
                  plots=tuple(sorted((p / "plots").glob("*.png"))))
        with _cache_lock:
            _cache[key] = pkg
        return pkg


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _dims(shape) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in shape) + ")"


def check_graph(onnx_path: Path, card: ModelCard) -> tuple[int, int]:
    """Check the ONNX graph's inputs/outputs against ``card``; returns the CAM's ``(h, w)``.

    Raises
    ------
    ModelPackageError
        One line naming the tensor and the mismatch.
    """
    where = onnx_path.parent
    try:
        sess = quiet_session(onnx_path, ["CPUExecutionProvider"], optimize=False, intra_op_threads=1)
    except Exception as exc:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelPackageError(where, f"{ONNX_FILE} is not a loadable ONNX model ({first})") from None
    inputs = sess.get_inputs()
    names = [i.name for i in inputs]
    inp = card.input
    if len(inputs) != 1 or inputs[0].name != inp.name:
        raise ModelPackageError(where, f"graph inputs {names} do not match the card's single input {inp.name!r}")
    gi = inputs[0]
    if gi.type != "tensor(float)":
        raise ModelPackageError(where, f"graph input {inp.name!r} is {gi.type}, the card says float32")
    if len(gi.shape) != 4:
        raise ModelPackageError(where, f"graph input {inp.name!r} has shape {_dims(gi.shape)}, expected (N, C, H, W)")
    for axis, want, what in ((1, inp.channels, "channels"), (2, inp.height, "height"), (3, inp.width, "width")):
        got = gi.shape[axis]
        if isinstance(got, int) and got != want:
            raise ModelPackageError(
                where, f"graph input {inp.name!r} shape {_dims(gi.shape)} does not match the card's "
                       f"{what} {want} (card input {inp.channels}x{inp.height}x{inp.width})")
    outs = {o.name: o for o in sess.get_outputs()}
    k = len(card.labels)
    for name, rank, what in ((card.outputs.logits, 2, "logits (N, K)"), (card.outputs.cam, 4, "cam (N, K, h, w)")):
        if name not in outs:
            raise ModelPackageError(where, f"graph has no output {name!r} ({what}); outputs are {sorted(outs)}")
        shape = outs[name].shape
        if len(shape) != rank:
            raise ModelPackageError(where, f"graph output {name!r} has shape {_dims(shape)}, expected {what}")
        if isinstance(shape[1], int) and shape[1] != k:
            raise ModelPackageError(
                where, f"graph output {name!r} has {shape[1]} classes but the card lists {k} labels {card.labels}")
    batch = gi.shape[0] if isinstance(gi.shape[0], int) else 1
    x = np.zeros((batch, inp.channels, inp.height, inp.width), np.float32)
    try:
        logits, cam = sess.run([card.outputs.logits, card.outputs.cam], {inp.name: x})
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelPackageError(where, f"dry run of {ONNX_FILE} on a zero input failed ({first})") from None
    if logits.shape != (batch, k):
        raise ModelPackageError(
            where, f"graph output {card.outputs.logits!r} is {logits.shape} for one input; the card's {k} labels "
                   f"need ({batch}, {k})")
    if cam.ndim != 4 or cam.shape[:2] != (batch, k):
        raise ModelPackageError(
            where, f"graph output {card.outputs.cam!r} is {cam.shape} for one input; expected ({batch}, {k}, h, w)")
    return int(cam.shape[2]), int(cam.shape[3])
