"""Fit and calibrate the out-of-distribution detector that a model package carries (card schema 2).

What the app computes (:class:`medviewer.inference.ood.OODDetector`) is fitted here, from the exported
ONNX graph's ``features`` output -- the same pixels, preprocessing and runtime as in the viewer:

1. features of the training split -> per block, class-conditional means and a shared covariance
   (Ledoit-Wolf shrinkage, :class:`sklearn.covariance.LedoitWolf`), inverted to a precision matrix
   (Lee et al. 2018, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and
   Adversarial Attacks", NeurIPS);
2. each block's distance is normalised by its median on the validation split (held-out patients);
3. the threshold is the larger of the validation score's ``1 - target`` quantile and the ``1 -
   shifted_target`` quantile on a *shifted* validation set: the same images under photometric and
   geometric perturbations a real test set brings (exposure, gamma, contrast, blur, noise, small
   rotations and zoom) -- so the false-rejection rate is controlled where the data shift, not only on
   an easy validation split.

Example
-------
>>> spec, arrays = fit_ood(F_train, y_train, F_val, blocks, F_shifted)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from medviewer.imaging.preprocess import preprocess
from medviewer.inference.card import InputSpec, OODLayer, OODSpec, Preprocessing
from medviewer.inference.ood import OODDetector, transform_features

__all__ = ["onnx_outputs", "shift_image", "fit_ood", "save_ood", "ood_rates"]


def onnx_outputs(onnx_path: str | Path, images_u8: Sequence[np.ndarray], spec: Preprocessing, inp: InputSpec,
                 batch: int = 64, names: Sequence[str] = ("logits", "features")) -> list[np.ndarray]:
    """Run the exported graph (onnxruntime, CPU) on display images exactly as the app does.

    ``images_u8``: uint8 ``(H, W)`` / ``(H, W, 3)`` display images of any size. Returns one float32 array
    per output name, concatenated over the images.
    """
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outs: list[list[np.ndarray]] = [[] for _ in names]
    for i in range(0, len(images_u8), batch):
        x = np.stack([preprocess(im, spec, inp)[0] for im in images_u8[i : i + batch]]).astype(np.float32)
        for j, a in enumerate(sess.run(list(names), {inp.name: x})):
            outs[j].append(np.asarray(a, np.float32))
    return [np.concatenate(o) for o in outs]


def shift_image(image_u8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One random, plausible acquisition shift of a display image (uint8 ``(H, W)`` or ``(H, W, 3)`` ->
    uint8 ``(H, W)``): gamma 0.7-1.4, contrast x0.8-1.2, brightness +-8 %, Gaussian blur (half of the
    time, sigma 0.5-1.5 px), noise (SD up to 3 %), rotation +-7 degrees and zoom 1-1.18x."""
    g = image_u8[..., 0] if image_u8.ndim == 3 else image_u8
    f = g.astype(np.float32) / 255.0
    f = np.power(f, rng.uniform(0.7, 1.4))
    f = (f - 0.5) * rng.uniform(0.8, 1.2) + 0.5 + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.5:
        f = cv2.GaussianBlur(f, (0, 0), rng.uniform(0.5, 1.5))
    f = f + rng.normal(0.0, rng.uniform(0.0, 0.03), f.shape).astype(np.float32)
    h, w = f.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-7, 7), 1 / rng.uniform(0.85, 1.0))
    f = cv2.warpAffine(f, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)


def fit_ood(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
            blocks: Sequence[tuple[str, int]], shifted_features: np.ndarray | None = None, *,
            target: float = 0.01, shifted_target: float = 0.03, transform: str = "log1p",
            split: str = "validation") -> tuple[OODSpec, dict[str, np.ndarray]]:
    """Fit the detector on training features and calibrate its threshold on validation.

    Parameters
    ----------
    train_features, val_features, shifted_features
        float ``(N, D)`` features outputs; ``shifted_features`` of the shifted validation images (optional).
    train_labels
        int ``(N,)`` class indices of the training images (class-conditional means).
    blocks
        ``(name, F_l)`` per block, in the column order of the features output (``sum F_l == D``).
    target, shifted_target
        Wanted false-rejection rates on validation and on shifted validation.
    split
        Words naming the validation split, for the card.

    Returns
    -------
    (OODSpec, dict)
        The card's spec and the arrays for ``ood.npz`` (``<block>.means``, ``<block>.precision``).
    """
    from sklearn.covariance import LedoitWolf

    d = sum(f for _, f in blocks)
    if train_features.shape[1] != d:
        raise ValueError(f"features have D = {train_features.shape[1]} but the blocks add up to {d}")
    labels = np.asarray(train_labels)
    classes = np.unique(labels)
    start = 0
    arrays: dict[str, np.ndarray] = {}
    proto_layers, means, precs = [], [], []
    for name, f in blocks:
        x = transform_features(train_features[:, start : start + f], transform)
        mu = np.stack([x[labels == c].mean(axis=0) for c in classes])
        resid = x - mu[np.searchsorted(classes, labels)]
        prec = np.linalg.inv(LedoitWolf().fit(resid).covariance_)
        arrays[f"{name}.means"], arrays[f"{name}.precision"] = mu, prec
        means.append(mu)
        precs.append(prec)
        proto_layers.append(OODLayer(name=name, start=start, stop=start + f, normaliser=1.0))
        start += f
    proto = OODSpec(layers=proto_layers, threshold=1.0, transform=transform,  # type: ignore[arg-type]
                    calibration="provisional: normalisers 1", target_false_rejection=target,
                    validation_false_rejection=0.0, n_fit=int(len(labels)))
    raw_val = OODDetector(proto, tuple(means), tuple(precs)).layer_scores(val_features)  # the app's own scoring
    norms = np.maximum(np.median(raw_val, axis=0), 1e-12)
    layers = [layer.model_copy(update={"normaliser": float(n)}) for layer, n in zip(proto_layers, norms, strict=True)]
    normalised = OODDetector(proto.model_copy(update={"layers": layers}), tuple(means), tuple(precs))
    val_score = normalised.score(val_features)
    thr = float(np.quantile(val_score, 1 - target))
    rule = f"the {1 - target:.1%} quantile of {split} scores"
    shifted_frr = None
    if shifted_features is not None and len(shifted_features):
        sh = normalised.score(shifted_features)
        thr_sh = float(np.quantile(sh, 1 - shifted_target))
        if thr_sh > thr:
            thr = thr_sh
            rule = (f"the {1 - shifted_target:.0%} quantile of shifted {split} scores (exposure, gamma, contrast, "
                    f"blur, noise, +-7 deg rotation, zoom), above the {1 - target:.1%} quantile of {split}")
        else:
            rule += f", above the {1 - shifted_target:.0%} quantile of shifted {split} scores"
        shifted_frr = float(np.mean(sh > thr))
    spec = OODSpec(layers=layers, threshold=thr, transform=transform,  # type: ignore[arg-type]
                   calibration=f"threshold = {rule}; statistics fitted on {len(labels)} training images",
                   target_false_rejection=target, validation_false_rejection=float(np.mean(val_score > thr)),
                   shifted_false_rejection=shifted_frr, n_fit=int(len(labels)))
    return spec, arrays


def save_ood(arrays: dict[str, np.ndarray], path: str | Path) -> Path:
    """Write the detector's arrays as an uncompressed ``.npz`` (no pickles); returns the path."""
    path = Path(path)
    np.savez(path, **{k: np.asarray(v, np.float64) for k, v in arrays.items()})
    return path


def ood_rates(scores: np.ndarray, threshold: float) -> float:
    """Fraction of ``scores`` above ``threshold`` (called out of distribution)."""
    s = np.asarray(scores, np.float64)
    return float(np.mean(~(s <= threshold))) if len(s) else float("nan")
