"""The applicability gate of a model package (card schema 3): what an image is, from its pixels alone.

A package may ship a second, small ONNX classifier (``card.gate.file``, hashed in the card) trained with
real out-of-scope images -- adult chest films, other radiographs, images that are no radiograph -- what
Hendrycks, Mazeika & Dietterich (2019, "Deep Anomaly Detection with Outlier Exposure", ICLR) call outlier
exposure. :class:`Gate` runs it on the display image the model sees and :func:`verdict` turns its
probabilities into the words a reader sees: "looks like an adult chest film (0.97)".

The decision that combines the gate with the header checks and the Mahalanobis score is the intended-use
policy's (:func:`medviewer.workstation.intended_use.assess`); this module only measures.

Example
-------
>>> gate = Gate(package.path, package.card.gate)  # doctest: +SKIP
>>> probs = gate.probabilities(gate.prepare(display_u8)[None])  # (1, K) float32  # doctest: +SKIP
>>> verdict(package.card.gate, probs[0]).reason  # doctest: +SKIP
'looks like an adult chest film (0.97)'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medviewer.errors import InferenceError, ModelPackageError
from medviewer.imaging.preprocess import preprocess
from medviewer.inference import _ort
from medviewer.inference.card import GateSpec
from medviewer.providers import ExecutionProvider

__all__ = ["Gate", "GateVerdict", "verdict", "check_gate_graph"]


@dataclass(frozen=True)
class GateVerdict:
    """What the gate says about one image.

    Attributes
    ----------
    probabilities
        class -> probability (sums to 1).
    in_scope_probability
        The probability of the card's ``in_scope_class``.
    threshold
        The card's gate threshold: in scope by appearance when ``in_scope_probability >= threshold``.
    looks_like
        The most probable class other than the in-scope one when out of scope, else the in-scope class.
    looks_like_probability
        Its probability.
    reason
        One line for a reader when out of scope ("looks like an adult chest film (0.97)"), else None.
    """

    probabilities: dict[str, float]
    in_scope_probability: float
    threshold: float
    looks_like: str
    looks_like_probability: float
    reason: str | None

    @property
    def in_scope(self) -> bool:
        return self.reason is None

    def to_dict(self) -> dict:
        """What ``results.json`` stores under ``applicability.gate``."""
        return {"probabilities": {k: round(v, 4) for k, v in self.probabilities.items()},
                "in_scope_probability": round(self.in_scope_probability, 4), "threshold": round(self.threshold, 4),
                "looks_like": self.looks_like, "looks_like_probability": round(self.looks_like_probability, 4)}


def verdict(spec: GateSpec, probabilities: np.ndarray | dict[str, float]) -> GateVerdict:
    """The :class:`GateVerdict` of one image's gate output (float ``(K,)`` in ``spec.classes`` order, or a
    class -> probability dict).

    Raises
    ------
    ValueError
        The output does not have one finite value per class.
    """
    if isinstance(probabilities, dict):
        probs = {c: float(probabilities[c]) for c in spec.classes}
    else:
        arr = np.asarray(probabilities, np.float64).reshape(-1)
        if arr.shape != (len(spec.classes),):
            raise ValueError(f"the gate returned {arr.shape[0]} values for {len(spec.classes)} classes")
        probs = {c: float(v) for c, v in zip(spec.classes, arr, strict=True)}
    if not all(np.isfinite(v) for v in probs.values()):
        raise ValueError("the gate returned non-finite probabilities")
    p_in = probs[spec.in_scope_class]
    if p_in >= spec.threshold:
        return GateVerdict(probs, p_in, spec.threshold, spec.in_scope_class, p_in, None)
    others = {c: p for c, p in probs.items() if c != spec.in_scope_class}
    top = max(others, key=others.__getitem__)
    if others[top] >= p_in:
        reason = f"looks like {spec.phrase(top)} ({others[top]:.2f})"
    else:  # rejected though the in-scope class is still the most probable: say so, not a guess
        reason = (f"does not clearly look like {spec.phrase(spec.in_scope_class)} "
                  f"({p_in:.2f} < {spec.threshold:.2f}; next: {spec.phrase(top)} {others[top]:.2f})")
    return GateVerdict(probs, p_in, spec.threshold, top, others[top], reason)


class Gate:
    """An ONNX Runtime session of a package's gate, created once and reused (thread-safe).

    Parameters
    ----------
    package_dir
        The package directory (``spec.file`` is relative to it).
    spec
        The card's :class:`~medviewer.inference.card.GateSpec`.
    providers
        ONNX Runtime execution providers in priority order (default: CPU). The gate is tiny
        (about 0.3 M parameters at 64 x 64 px): the CPU runs it in about a millisecond.

    Raises
    ------
    InferenceError
        onnxruntime could not create the session.
    """

    def __init__(self, package_dir: Path, spec: GateSpec, providers: list[str] | None = None) -> None:
        self.spec = spec
        self.path = Path(package_dir) / spec.file
        try:
            self._sess = _ort.quiet_session(self.path, providers or [ExecutionProvider.CPU.value], intra_op_threads=1)
        except Exception as exc:
            raise InferenceError(f"{self.path}: onnxruntime could not create the gate session "
                                 f"({_ort.first_line(exc)})") from None
        self._input = self._sess.get_inputs()[0].name

    def prepare(self, image_u8: np.ndarray) -> np.ndarray:
        """Display image (uint8 ``(H, W)`` or ``(H, W, 3)``) -> float32 ``(C, H, W)`` gate input.

        Raises
        ------
        InferenceError
            Not an 8-bit 2-D grey or RGB image.
        """
        try:
            x, _ = preprocess(image_u8, self.spec.preprocessing, self.spec.input)
        except ValueError as exc:
            raise InferenceError(f"cannot prepare the image for the applicability gate: {exc}") from None
        return x

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(N, C, H, W)`` -> float32 ``(N, K)`` class probabilities.

        Raises
        ------
        InferenceError
            onnxruntime failed or returned the wrong shape.
        """
        x = np.ascontiguousarray(batch, np.float32)
        try:
            (p,) = self._sess.run([self.spec.output], {self._input: x})
        except Exception as exc:
            raise InferenceError(f"the applicability gate failed ({_ort.first_line(exc)})") from None
        p = np.asarray(p, np.float32)
        if p.shape != (x.shape[0], len(self.spec.classes)):
            raise InferenceError(f"the applicability gate returned {p.shape}; expected "
                                 f"({x.shape[0]}, {len(self.spec.classes)})")
        return p

    def assess(self, image_u8: np.ndarray) -> GateVerdict:
        """The :class:`GateVerdict` of one display image."""
        return verdict(self.spec, self.probabilities(self.prepare(image_u8)[None])[0])


def check_gate_graph(package_dir: Path, spec: GateSpec) -> None:
    """Load the gate graph and dry-run it at batch 1 and 2 on a real-looking input.

    Raises
    ------
    ModelPackageError
        One line: not loadable, wrong input/output, or non-probability output.
    """
    path = Path(package_dir) / spec.file
    try:
        gate = Gate(package_dir, spec)
    except InferenceError as exc:
        raise ModelPackageError(package_dir, f"{spec.file} is not a loadable ONNX model ({exc})") from None
    inp = spec.input
    for batch in (1, 2):
        try:
            p = gate.probabilities(_ort.dry_run_input(batch, inp.channels, inp.height, inp.width))
        except InferenceError as exc:
            raise ModelPackageError(package_dir, f"dry run of {path.name}: {exc}") from None
        if not np.all(np.isfinite(p)) or np.any(p < -1e-4) or not np.allclose(p.sum(1), 1.0, atol=1e-3):
            raise ModelPackageError(package_dir, f"{path.name} output {spec.output!r} is not a probability "
                                                 "distribution over the gate's classes")
