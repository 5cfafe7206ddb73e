"""Honest evaluation of an exported model: patient-level bootstrap, calibration, shifted validation, CAM location.

Everything here works on arrays the exported ONNX graph produced (see :func:`training.ood.onnx_outputs`,
which preprocesses exactly as the app does), so the numbers describe the package a reader runs.

- :func:`patient_bootstrap` (defined in :mod:`training.metrics`, re-exported here) -- percentile intervals from resampling *patients* with replacement (a cluster
  bootstrap; Field & Welsh 2007). Resampling images treats a patient's several films as independent and gives
  intervals that are too narrow for a patient-level split.
- :func:`fit_temperature`, :func:`expected_calibration_error` -- temperature scaling (Guo et al. 2017, "On
  Calibration of Modern Neural Networks", ICML) and the equal-width-bin ECE it is judged by.
- :func:`shifted_copies` -- the validation images under acquisition shift (exposure, contrast, blur,
  noise, resolution, small rotations and zoom), on which an operating point that has to transfer is chosen.
- :func:`thorax_mask`, :func:`cam_in_thorax` -- how often the class activation map's peak lies inside the
  thorax (an image-processing approximation of the lung fields' convex hull; see its docstring).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from medviewer.inference.card import InputSpec, Preprocessing
from training.metrics import binary_metrics, choose_operating_point, patient_bootstrap

__all__ = [
    "patient_bootstrap",
    "fit_temperature",
    "logit_difference",
    "apply_temperature",
    "expected_calibration_error",
    "acquisition_shift",
    "shifted_copies",
    "thorax_mask",
    "ThoraxMask",
    "cam_peak",
    "cam_in_thorax",
    "transfer_report",
]


def _log_odds(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def logit_difference(logits: np.ndarray, positive: int) -> np.ndarray:
    """``z = l_pos - log(sum_{k != pos} exp(l_k))`` (float64 ``(N,)``) from logits ``(N, K)``: the positive
    class's log-odds under the softmax, ``p_pos = sigmoid(z)``."""
    lg = np.asarray(logits, np.float64)
    neg = [k for k in range(lg.shape[1]) if k != positive]
    return lg[:, positive] - np.logaddexp.reduce(lg[:, neg], axis=1)


def apply_temperature(logit_diff: np.ndarray, temperature: float) -> np.ndarray:
    """Positive-class probability ``sigmoid(z / T)`` from the logit difference ``z = l_pos - l_neg`` (float64)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logit_diff, np.float64) / float(temperature)))


def fit_temperature(y_true: np.ndarray, logit_diff: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)
                    ) -> float:
    """The temperature ``T`` minimising the validation negative log-likelihood of ``sigmoid(z / T)``.

    For a two-class softmax, dividing both logits by ``T`` divides their difference ``z`` by ``T``, so the
    fitted ``T`` can be folded into the classifier (weights and bias divided by ``T``) without changing the
    ranking (AUROC) or the CAM's shape (Guo et al. 2017).
    """
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true).astype(np.float64)
    z = np.asarray(logit_diff, np.float64)

    def nll(log_t: float) -> float:
        zt = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0.0, zt) - y * zt))

    r = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(r.x))


def expected_calibration_error(y_true: np.ndarray, scores: np.ndarray, n_bins: int = 15) -> float:
    """ECE: ``sum_b |B_b|/N * |mean(y in B_b) - mean(p in B_b)|`` over equal-width probability bins (Naeini 2015)."""
    y = np.asarray(y_true).astype(np.float64)
    p = np.asarray(scores, np.float64)
    bins = np.minimum((p * n_bins).astype(int), n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(ece)


def acquisition_shift(image_u8: np.ndarray, rng: np.random.Generator, severity: float = 1.0) -> np.ndarray:
    """One random acquisition shift of a display image (uint8 ``(H, W)`` -> uint8 ``(H, W)``).

    At ``severity`` s: gamma ``exp(+-0.5 s)``, contrast ``1 +- 0.4 s``, brightness ``+-10 s %``, Gaussian blur
    (half of the time, sigma up to ``2.5 s`` px), down-sampling by ``1 - 0.7 s``..1 and back (half of the time),
    noise with SD up to ``4 s %`` of full scale, rotation +-7 degrees and zoom 1-1.18x. s = 0 leaves only the
    rotation and zoom.
    """
    g = image_u8[..., 0] if image_u8.ndim == 3 else image_u8
    h, w = g.shape
    f = g.astype(np.float32) / 255.0
    f = np.power(f, float(np.exp(rng.uniform(-0.5, 0.5) * severity)))
    f = (f - 0.5) * rng.uniform(1 - 0.4 * severity, 1 + 0.4 * severity) + 0.5 + rng.uniform(-0.1, 0.1) * severity
    if rng.random() < 0.5 and severity > 0:
        f = cv2.GaussianBlur(f, (0, 0), rng.uniform(0.3, max(0.3, 2.5 * severity)))
    if rng.random() < 0.5 and severity > 0:
        k = rng.uniform(max(0.15, 1 - 0.7 * severity), 1.0)
        f = cv2.resize(cv2.resize(f, (max(8, int(w * k)), max(8, int(h * k))), interpolation=cv2.INTER_AREA),
                       (w, h), interpolation=cv2.INTER_LINEAR)
    f = f + rng.normal(0.0, rng.uniform(0.0, 0.04 * severity), f.shape).astype(np.float32)
    m = cv2.getRotationMatrix2D((w / 2, h / 2), rng.uniform(-7, 7), 1 / rng.uniform(0.85, 1.0))
    f = cv2.warpAffine(f, m, (w, h), borderMode=cv2.BORDER_REFLECT)
    return np.clip(f * 255.0 + 0.5, 0, 255).astype(np.uint8)


def shifted_copies(images_u8: Sequence[np.ndarray], copies: int = 3, seed: int = 0, severity: float = 1.0
                   ) -> list[np.ndarray]:
    """``copies`` :func:`acquisition_shift` versions of every image (uint8 ``(H, W)``), image-major order."""
    rng = np.random.default_rng(seed)
    return [acquisition_shift(im, rng, severity) for im in images_u8 for _ in range(copies)]


@dataclass(frozen=True)
class ThoraxMask:
    """The approximate thorax of one radiograph: ``mask`` bool ``(H, W)``; ``ok`` when it looks plausible."""

    mask: np.ndarray
    ok: bool
    lungs: int


def thorax_mask(image_u8: np.ndarray, margin: float = 0.04) -> ThoraxMask:
    """Approximate the thorax (above the diaphragm, within the rib cage) of a frontal chest radiograph.

    The lung fields are the largest dark regions (MONOCHROME2 display, air is dark) that do not touch the
    image border (air outside the body does); the thorax is the convex hull of the (at most two) largest
    such regions and of their mirror image about the spine (the brightest column of the central band), so an
    opacified lung does not halve it, dilated by ``margin`` of the image width for the ribs and pleura. Otsu's threshold on
    the central region is tried first, then 0.85x and 0.7x of it if no plausible lung region appears.

    Parameters
    ----------
    image_u8
        uint8 ``(H, W)`` or ``(H, W, 3)`` display image.

    Returns
    -------
    ThoraxMask
        ``ok`` is False (and ``mask`` the whole image) when no hull of 10-80 % of the image was found; callers
        report such images separately instead of counting them as hits.

    Notes
    -----
    An approximation, not a segmentation: dense consolidation can hide part of a lung (the hull of the other
    lung and the rest still spans the thorax in most films), and it assumes a frontal view.
    """
    g = image_u8[..., 0] if image_u8.ndim == 3 else image_u8
    h, w = g.shape
    sm = cv2.GaussianBlur(g, (0, 0), max(1.0, w / 160))
    centre = sm[h // 8: 7 * h // 8, w // 8: 7 * w // 8]
    otsu, _ = cv2.threshold(np.ascontiguousarray(centre), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    for factor in (1.0, 0.85, 0.7):
        dark = (sm < otsu * factor).astype(np.uint8)
        dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        n, lab, stats, cent = cv2.connectedComponentsWithStats(dark, connectivity=4)
        cand = []
        for i in range(1, n):
            x, y, bw, bh, area = stats[i]
            if x == 0 or y == 0 or x + bw >= w or y + bh >= h:
                continue  # touches the border: air outside the body
            if area < 0.01 * h * w or cent[i][1] > 0.85 * h:
                continue
            cand.append((area, i))
        cand.sort(reverse=True)
        if not cand:
            continue
        pts = np.concatenate([np.argwhere(lab == i)[:, ::-1] for _, i in cand[:2]]).astype(np.int32)
        # the thorax is left-right symmetric about the spine (the brightest column of the central band over
        # the lungs' rows): mirror the found lung field(s) so one opacified lung does not halve the thorax
        rows = slice(int(pts[:, 1].min()), int(pts[:, 1].max()) + 1)
        band = sm[rows, int(0.3 * w): int(0.7 * w)].astype(np.float32).mean(axis=0)
        spine = int(0.3 * w) + int(np.argmax(cv2.GaussianBlur(band[None, :], (0, 0), 3)[0]))
        mirrored = pts.copy()
        mirrored[:, 0] = np.clip(2 * spine - pts[:, 0], 0, w - 1)
        hull = cv2.convexHull(np.concatenate([pts, mirrored]))
        mask = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(mask, hull, 1)
        r = max(1, int(round(margin * w)))
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        frac = float(mask.mean())
        if 0.10 <= frac <= 0.80:
            return ThoraxMask(mask.astype(bool), True, min(2, len(cand)))
    return ThoraxMask(np.ones((h, w), bool), False, 0)


def cam_peak(cam: np.ndarray, shape: tuple[int, int]) -> tuple[int, int]:
    """``(row, col)`` of the maximum of one class's CAM ``(h, w)`` bilinearly resized to ``shape`` ``(H, W)``."""
    up = cv2.resize(np.asarray(cam, np.float32), (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
    r, c = np.unravel_index(int(np.argmax(up)), up.shape)
    return int(r), int(c)


def cam_in_thorax(images_u8: Sequence[np.ndarray], cams: np.ndarray) -> dict[str, float | int]:
    """How often the CAM peak lies inside the approximate thorax (:func:`thorax_mask`).

    Parameters
    ----------
    images_u8
        The display images the CAMs belong to (uint8 ``(H, W)``), e.g. the correctly flagged validation
        images.
    cams
        ``(N, h, w)`` float32 CAMs of the positive class.

    Returns
    -------
    dict
        ``n`` images, ``n_mask`` with a plausible thorax mask, ``inside`` peaks inside it, ``rate`` =
        inside / n_mask, and ``mean_mask_fraction`` (the mask's mean share of the image, for judging the
        rate against chance).
    """
    n_mask = inside = 0
    fracs = []
    for im, cam in zip(images_u8, cams, strict=True):
        g = im[..., 0] if im.ndim == 3 else im
        tm = thorax_mask(g)
        if not tm.ok:
            continue
        n_mask += 1
        fracs.append(float(tm.mask.mean()))
        r, c = cam_peak(cam, g.shape)
        inside += bool(tm.mask[r, c])
    return {"n": len(images_u8), "n_mask": n_mask, "inside": inside,
            "rate": inside / n_mask if n_mask else float("nan"),
            "mean_mask_fraction": float(np.mean(fracs)) if fracs else float("nan")}


def transfer_report(onnx_path: str | Path, spec: Preprocessing, inp: InputSpec, images: Sequence[np.ndarray],
                    labels: np.ndarray, groups: Sequence[str], positive: int, criterion: str = "youden",
                    op_split: str = "shifted", copies: int = 3, n_boot: int = 2000, seed: int = 0,
                    temperature: float = 1.0, severity: float = 1.0, threshold: float | None = None) -> dict:
    """Evaluate an exported graph on validation images the way the app runs it, and under acquisition shift.

    Parameters
    ----------
    onnx_path, spec, inp
        The package's graph and its card's preprocessing and input spec.
    images, labels, groups
        Validation display images (uint8 ``(H, W)`` or ``(H, W, 3)``, any size, e.g. from
        :func:`training.data.read_display_u8`), their class indices ``(N,)`` and patient ids.
    positive
        Index of the positive class.
    criterion, op_split
        The operating point's criterion (``youden``, ``sensitivity>=X``) and the split it is chosen on:
        ``"validation"`` or ``"shifted"`` (:func:`shifted_copies` of the validation images, pooled).
    temperature
        Divide the logit difference by this before the softmax (1: as exported). Used to measure a graph
        before its temperature is folded in.
    severity
        :func:`acquisition_shift` severity of the shifted copies.
    threshold
        Use this operating point instead of choosing one (e.g. a shipped card's, for comparison).

    Returns
    -------
    dict
        ``threshold``, ``criterion``, ``op_split``; ``validation`` and ``shifted`` (binary_metrics at the
        threshold plus ``ci95`` by patient, ``ece``); ``z_val`` (logit differences, for temperature
        fitting); ``cam_in_thorax`` (on the correctly flagged validation images).
    """
    from training.ood import onnx_outputs

    gray = [im[..., 0] if im.ndim == 3 else im for im in images]
    y = (np.asarray(labels) == positive).astype(int)
    groups = np.asarray(groups)
    logits, cams = onnx_outputs(onnx_path, gray, spec, inp, names=["logits", "cam"])
    z = logit_difference(logits, positive)
    p = apply_temperature(z, temperature)
    shifted = shifted_copies(gray, copies, seed, severity)
    (logits_s,) = onnx_outputs(onnx_path, shifted, spec, inp, names=["logits"])
    zs = logit_difference(logits_s, positive)
    ps = apply_temperature(zs, temperature)
    ys, gs = np.repeat(y, copies), np.repeat(groups, copies)
    if op_split not in ("validation", "shifted"):
        raise ValueError(f"op_split must be 'validation' or 'shifted', not {op_split!r}")
    if threshold is None:
        choice = (choose_operating_point(ys, ps, criterion) if op_split == "shifted"
                  else choose_operating_point(y, p, criterion))
        threshold = choice.threshold
    out: dict = {"threshold": float(threshold), "criterion": criterion, "op_split": op_split, "copies": copies,
                 "severity": severity, "z_val": z, "y_val": y, "p_val": p}
    for name, yy, pp, gg in (("validation", y, p, groups), ("shifted", ys, ps, gs)):
        m = binary_metrics(yy, pp, threshold, n_boot=0, seed=seed)
        m["ci95"] = patient_bootstrap(yy, pp, gg, threshold, n_boot, seed)
        m["ci_method"] = f"percentile bootstrap over {len(np.unique(gg))} patients, {n_boot} resamples"
        m["auroc_ci95"] = m["ci95"]["auroc"]
        m["ece"] = expected_calibration_error(yy, pp)
        out[name] = m
    tp = np.flatnonzero((y == 1) & (p >= threshold))
    out["cam_in_thorax"] = cam_in_thorax([gray[i] for i in tp], cams[tp, positive])
    out["validation"]["cam_in_thorax"] = out["cam_in_thorax"]["rate"]
    return out
