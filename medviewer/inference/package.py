"""Model packages: a directory with ``model.onnx`` and its card ``model.json``, validated before use.

Loading checks, in order, and stops at the first failure with a one-line
:class:`~medviewer.errors.ModelPackageError`:

1. the card parses and satisfies schema v1 or v2 (:func:`medviewer.inference.card.load_card`), and its
   input size (height x width) is within the model-input pixel budget (:func:`check_input_size`,
   ``MEDVIEWER_MAX_MODEL_INPUT_PIXELS``), checked before anything of that size is allocated;
2. ``model.onnx`` exists and its SHA-256 equals ``card.sha256`` (the card describes *these* weights); for
   schema 2, every file listed in ``card.files`` (``ood.npz``, README, plots) exists, is a regular file
   inside the package and has the listed SHA-256 (tampered statistics are refused);
3. the ONNX graph loads in onnxruntime (CPU) and has exactly one input, named ``card.input.name``,
   float32, shape ``(N, channels, height, width)``, and the outputs ``card.outputs.logits`` (rank 2),
   ``card.outputs.cam`` (rank 4) and, when the card names one, ``card.outputs.features`` (rank 2);
4. dry runs on a real-looking input (a smooth gradient with texture, not zeros) at batch 1 and batch 2,
   each under a time limit (``MEDVIEWER_DRY_RUN_SECONDS``, default :data:`DRY_RUN_SECONDS`), return logits ``(N, K)``, CAMs ``(N, K, h, w)``
   with ``h, w >= 1`` and features ``(N, D)``, all finite, with ``K = len(card.labels)``;
5. the OOD statistics (``card.ood``) load without pickles and fit the features output: blocks within
   ``D``, means ``(K_l, D_l)`` and precisions ``(D_l, D_l)``, all finite.

Example
-------
>>> pkg = ModelPackage.load("resources/models/pneumonia-cxr")  # doctest: +SKIP
>>> pkg.card.labels  # doctest: +SKIP
['NORMAL', 'PNEUMONIA']
"""

from __future__ import annotations

import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medviewer.errors import ModelPackageError
from medviewer.inference._ort import (  # dry_run_input: re-exported
    dry_run_input,
    quiet_session,
)
from medviewer.inference.card import ModelCard, load_card, sha256_file
from medviewer.inference.ood import OODDetector
from medviewer.limits import DEFAULT_MODEL_VALIDATION_SECONDS, MAX_MODEL_INPUT_PIXELS_ENV, get_limits
from medviewer.providers import ExecutionProvider

__all__ = ["ModelPackage", "CARD_FILE", "ONNX_FILE", "DRY_RUN_SECONDS", "check_files", "check_graph",
           "check_input_size", "input_size_problem"]

CARD_FILE = "model.json"
ONNX_FILE = "model.onnx"
#: default time limit of each validation dry run, seconds; the limit in force is read at each validation
#: from ``MEDVIEWER_DRY_RUN_SECONDS`` (:attr:`medviewer.limits.Limits.model_validation_seconds`)
DRY_RUN_SECONDS = DEFAULT_MODEL_VALIDATION_SECONDS

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
    feature_dim
        ``D`` of the features output (0 when the graph has none).
    ood
        The :class:`~medviewer.inference.ood.OODDetector` of ``card.ood``, or None.
    """

    path: Path
    card: ModelCard
    onnx_path: Path
    source: str = "path"
    feature_shape: tuple[int, int] = (0, 0)
    readme_path: Path | None = None
    plots: tuple[Path, ...] = field(default_factory=tuple)
    feature_dim: int = 0
    ood: OODDetector | None = None

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
        key = (p, source, _stat(card_path), _stat(onnx_path), _tree_stat(p))
        with _cache_lock:
            hit = _cache.get(key)
        if hit is not None:
            return hit
        card = load_card(card_path)
        check_input_size(card, p)
        if not onnx_path.is_file():
            raise ModelPackageError(p, f"{ONNX_FILE} not found next to {CARD_FILE}")
        digest = sha256_file(onnx_path)
        if digest != card.sha256:
            raise ModelPackageError(
                p, f"{ONNX_FILE} SHA-256 {digest[:12]}... does not match the card's {card.sha256[:12]}... "
                   "(the weights were changed or the card belongs to another model; re-export the package)")
        check_files(p, card)
        feature_shape, feature_dim = check_graph(onnx_path, card)
        ood = None
        if card.ood is not None:
            ood = OODDetector.load(p, card.ood, feature_dim)
        if card.gate is not None:
            from medviewer.inference.gate import check_gate_graph  # lazily: onnxruntime graph checks

            check_gate_graph(p, card.gate)
        readme = p / "README.md"
        pkg = cls(path=p, card=card, onnx_path=onnx_path, source=source, feature_shape=feature_shape,
                  readme_path=readme if readme.is_file() else None,
                  plots=tuple(sorted((p / "plots").glob("*.png"))), feature_dim=feature_dim, ood=ood)
        with _cache_lock:
            _cache[key] = pkg
        return pkg


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _tree_stat(root: Path) -> tuple:
    """(name, size, mtime) of every file in the package (the cache must notice a changed ood.npz or plot)."""
    try:
        return tuple(sorted((str(f.relative_to(root)), _stat(f)) for f in root.rglob("*") if f.is_file()))
    except OSError:
        return ()


def _dims(shape) -> str:
    return "(" + ", ".join(str(d) if d is not None else "?" for d in shape) + ")"


def input_size_problem(card: ModelCard) -> str | None:
    """None when the card's input size is within ``max_model_input_pixels`` (:mod:`medviewer.limits`), else
    a one-line reason naming the size, the limit and its environment variable.

    The input size decides what validation and every inference allocate (``(N, C, H, W)`` float32, and the
    graph's activations), and a graph with dynamic height and width accepts whatever the card declares: a
    card declaring 20000 x 20000 would make the dry run alone allocate 9.6 GB.

    Raises
    ------
    medviewer.limits.LimitError
        ``MEDVIEWER_MAX_MODEL_INPUT_PIXELS`` is set to something that is not a positive integer.
    """
    limit = get_limits().max_model_input_pixels
    h, w = int(card.input.height), int(card.input.width)
    if h * w > limit:
        return (f"the card's input size {w}x{h} = {h * w:,} pixels exceeds the limit of {limit:,} "
                f"({MAX_MODEL_INPUT_PIXELS_ENV})")
    return None


def check_input_size(card: ModelCard, where: Path) -> None:
    """Refuse a card whose input height x width exceeds the model-input pixel budget (see
    :func:`input_size_problem`).

    Raises
    ------
    ModelPackageError
        One line: ``where: the card's input size WxH = N pixels exceeds the limit of L (VARIABLE)``.
    """
    problem = input_size_problem(card)
    if problem is not None:
        raise ModelPackageError(where, problem)


def check_files(package_dir: Path, card: ModelCard) -> None:
    """Check every file the card hashes (schema 2): a regular file inside the package with that SHA-256.

    Raises
    ------
    ModelPackageError
        A missing, non-regular or escaping file, or a digest mismatch (names the file).
    """
    root = package_dir.resolve()
    for rel, digest in card.files.items():
        if rel == ONNX_FILE:
            continue  # checked against card.sha256 before
        f = package_dir / rel
        try:
            st = f.lstat()
        except OSError:
            raise ModelPackageError(package_dir, f"{rel} is listed in the card's files but missing") from None
        if not stat.S_ISREG(st.st_mode):
            raise ModelPackageError(package_dir, f"{rel} is not a regular file (links and special files are refused)")
        if root not in f.resolve().parents:
            raise ModelPackageError(package_dir, f"{rel} lies outside the package")
        got = sha256_file(f)
        if got != digest:
            raise ModelPackageError(
                package_dir, f"{rel} SHA-256 {got[:12]}... does not match the card's {digest[:12]}... "
                             "(the file was changed after export; re-export the package)")


def _run_limited(sess, names: list[str], feed: dict, seconds: float) -> list[np.ndarray]:
    """``sess.run`` that is terminated (``RunOptions.terminate``) after ``seconds``; raises TimeoutError."""
    import onnxruntime as ort

    opts = ort.RunOptions()
    timer = threading.Timer(seconds, lambda: setattr(opts, "terminate", True))
    timer.daemon = True
    timer.start()
    try:
        return sess.run(names, feed, opts)
    except Exception:
        if opts.terminate:
            raise TimeoutError(f"did not finish within {seconds:g} s") from None
        raise
    finally:
        timer.cancel()


def check_graph(onnx_path: Path, card: ModelCard) -> tuple[tuple[int, int], int]:
    """Check the ONNX graph's inputs/outputs against ``card``; returns the CAM's ``(h, w)`` and the
    features output's ``D`` (0 without one).

    Raises
    ------
    ModelPackageError
        One line naming the tensor and the mismatch.
    """
    where = onnx_path.parent
    try:
        sess = quiet_session(onnx_path, [ExecutionProvider.CPU.value], optimize=False, intra_op_threads=1)
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
    wanted = [(card.outputs.logits, 2, "logits (N, K)"), (card.outputs.cam, 4, "cam (N, K, h, w)")]
    if card.outputs.features:
        wanted.append((card.outputs.features, 2, "features (N, D)"))
    for name, rank, what in wanted:
        if name not in outs:
            raise ModelPackageError(where, f"graph has no output {name!r} ({what}); outputs are {sorted(outs)}")
        shape = outs[name].shape
        if len(shape) != rank:
            raise ModelPackageError(where, f"graph output {name!r} has shape {_dims(shape)}, expected {what}")
        if what.startswith(("logits", "cam")) and isinstance(shape[1], int) and shape[1] != k:
            raise ModelPackageError(
                where, f"graph output {name!r} has {shape[1]} classes but the card lists {k} labels {card.labels}")
    fixed = gi.shape[0] if isinstance(gi.shape[0], int) else None
    names = [n for n, _, _ in wanted]
    feature_dim = 0
    cam_hw = (0, 0)
    seconds = get_limits().model_validation_seconds
    for batch in ((fixed,) if fixed else (1, 2)):
        x = dry_run_input(batch, inp.channels, inp.height, inp.width)
        try:
            got = _run_limited(sess, names, {inp.name: x}, seconds)
        except TimeoutError as exc:
            raise ModelPackageError(where, f"dry run of {ONNX_FILE} at batch {batch} {exc} (a graph that does "
                                           "not terminate, or far too slow for this machine)") from None
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelPackageError(where, f"dry run of {ONNX_FILE} at batch {batch} failed ({first})") from None
        logits, cam = got[0], got[1]
        if logits.shape != (batch, k):
            raise ModelPackageError(
                where, f"graph output {card.outputs.logits!r} is {logits.shape} for {batch} input(s); the card's "
                       f"{k} labels need ({batch}, {k})")
        if cam.ndim != 4 or cam.shape[:2] != (batch, k) or min(cam.shape[2:]) < 1:
            raise ModelPackageError(
                where, f"graph output {card.outputs.cam!r} is {cam.shape} for {batch} input(s); expected "
                       f"({batch}, {k}, h, w) with h, w >= 1")
        cam_hw = (int(cam.shape[2]), int(cam.shape[3]))
        if card.outputs.features:
            feats = got[2]
            if feats.ndim != 2 or feats.shape[0] != batch or feats.shape[1] < 1:
                raise ModelPackageError(
                    where, f"graph output {card.outputs.features!r} is {feats.shape} for {batch} input(s); "
                           f"expected ({batch}, D)")
            feature_dim = int(feats.shape[1])
        for name, arr in zip(names, got, strict=True):
            if not np.all(np.isfinite(arr)):
                raise ModelPackageError(
                    where, f"graph output {name!r} is not finite (NaN or infinity) on a real-looking input at "
                           f"batch {batch}: the weights or the card's preprocessing are broken")
    return cam_hw, feature_dim
