"""Image-based out-of-distribution (OOD) detection from a model's pooled features.

A model package of card schema 2 may carry a third graph output, ``card.outputs.features`` ``(N, D)``: the
global-average-pooled feature maps of the network (its penultimate layer, and for the networks of
``training.models`` also earlier stages), and ``ood.npz``, the class-conditional means and shared
precision matrices fitted on the training split. :class:`OODDetector` turns features into one score per
image, the Mahalanobis distance of Lee et al. (2018), "A Simple Unified Framework for Detecting
Out-of-Distribution Samples and Adversarial Attacks", NeurIPS, averaged over feature blocks (their
"feature ensemble"), each block normalised by its median on the validation split, so in-distribution
images score about 1 and the card's ``ood.threshold`` was calibrated on held-out patients (see
:class:`medviewer.inference.card.OODSpec`).

Headers can be missing or wrong and PNG/JPEG files have none: this score is what lets the app say "this
is not the kind of image the model was trained on" from pixels alone.

Example
-------
>>> det = package.ood  # doctest: +SKIP
>>> det.score(features)  # (N,) float64, > det.threshold = out of distribution  # doctest: +SKIP
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medviewer.errors import ModelPackageError
from medviewer.inference.card import OODSpec

__all__ = ["OODDetector", "mahalanobis_min", "transform_features"]


def transform_features(features: np.ndarray, transform: str) -> np.ndarray:
    """The card's feature transform: ``log1p(max(x, 0))`` for ``"log1p"``, identity for ``"none"``.

    ``features`` float ``(N, D)``; returns float64 ``(N, D)``. The log compresses the heavy right tail of
    post-ReLU averages, which makes the Gaussian model behind the Mahalanobis distance fit better.
    """
    f = np.asarray(features, np.float64)
    if transform == "log1p":
        return np.log1p(np.maximum(f, 0.0))
    return f


def mahalanobis_min(features: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``min_k (f - mu_k)^T P (f - mu_k)`` per row: float64 ``(N,)`` from ``(N, D)``, ``(K, D)``, ``(D, D)``."""
    d = np.empty((features.shape[0], means.shape[0]), np.float64)
    for k, mu in enumerate(means):
        r = features - mu
        d[:, k] = np.einsum("nd,de,ne->n", r, precision, r)
    return d.min(axis=1)


@dataclass(frozen=True)
class OODDetector:
    """Scores pooled features against the statistics of a model's training distribution.

    Attributes
    ----------
    spec
        The card's :class:`~medviewer.inference.card.OODSpec` (blocks, transform, threshold).
    means
        Per block: float64 ``(K, D_l)`` class-conditional means of the transformed features.
    precisions
        Per block: float64 ``(D_l, D_l)`` inverse of the shared (Ledoit-Wolf) covariance.
    """

    spec: OODSpec
    means: tuple[np.ndarray, ...]
    precisions: tuple[np.ndarray, ...]

    @property
    def threshold(self) -> float:
        """Scores above this are out of distribution (calibrated on validation; see ``spec.calibration``)."""
        return float(self.spec.threshold)

    @classmethod
    def load(cls, package_dir: str | Path, spec: OODSpec, feature_dim: int) -> OODDetector:
        """Read ``spec.file`` (an ``.npz`` without pickles) and check it against the features output.

        Raises
        ------
        ModelPackageError
            Unreadable file, a missing array, shapes that do not fit ``feature_dim``, non-finite values.
        """
        where = Path(package_dir)
        path = where / spec.file
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k], np.float64) for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelPackageError(where, f"{spec.file}: cannot read the OOD statistics ({exc})") from None
        means, precisions = [], []
        for layer in spec.layers:
            if layer.stop > feature_dim:
                raise ModelPackageError(
                    where, f"OOD block {layer.name!r} spans features [{layer.start}, {layer.stop}) but the graph's "
                           f"features output has D = {feature_dim}")
            d = layer.stop - layer.start
            mu, prec = arrays.get(f"{layer.name}.means"), arrays.get(f"{layer.name}.precision")
            if mu is None or prec is None:
                raise ModelPackageError(where, f"{spec.file} lacks {layer.name}.means / {layer.name}.precision")
            if mu.ndim != 2 or mu.shape[1] != d or mu.shape[0] < 1 or prec.shape != (d, d):
                raise ModelPackageError(
                    where, f"{spec.file}: block {layer.name!r} has means {mu.shape} and precision {prec.shape}; "
                           f"expected (K, {d}) and ({d}, {d})")
            if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(prec))):
                raise ModelPackageError(where, f"{spec.file}: block {layer.name!r} holds NaN or infinity")
            means.append(mu)
            precisions.append(prec)
        return cls(spec, tuple(means), tuple(precisions))

    def layer_scores(self, features: np.ndarray) -> np.ndarray:
        """Normalised distance per block: float64 ``(N, L)`` from float ``(N, D)`` features."""
        f = np.atleast_2d(np.asarray(features))
        out = np.empty((f.shape[0], len(self.spec.layers)), np.float64)
        for j, (layer, mu, prec) in enumerate(zip(self.spec.layers, self.means, self.precisions, strict=True)):
            block = transform_features(f[:, layer.start : layer.stop], self.spec.transform)
            out[:, j] = mahalanobis_min(block, mu, prec) / layer.normaliser
        return out

    def score(self, features: np.ndarray) -> np.ndarray:
        """OOD score per image: float64 ``(N,)``, about 1 in distribution; ``> threshold`` = out of distribution.

        Non-finite features give ``inf`` (never "in distribution").
        """
        s = self.layer_scores(features).mean(axis=1)
        return np.where(np.isfinite(s), s, np.inf)
