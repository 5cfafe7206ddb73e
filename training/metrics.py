"""Evaluation metrics (scikit-learn) for a positive label: AUROC with a bootstrap CI, threshold metrics.

The decision threshold (operating point) is chosen on a validation split (:func:`choose_operating_point`)
and then applied unchanged to any evaluation split (:func:`binary_metrics`).

Example
-------
>>> op = choose_operating_point(y_val, p_val, "youden")
>>> m = binary_metrics(y_test, p_test, op.threshold)
>>> m["auroc"], m["sensitivity"], m["specificity"]
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    confusion_matrix,
    f1_score,
    precision_score,
    roc_auc_score,
    roc_curve,
)

from medviewer.inference.card import Metrics

__all__ = [
    "OperatingPointChoice",
    "choose_operating_point",
    "bootstrap_auroc_ci",
    "binary_metrics",
    "calibration",
    "patient_bootstrap",
    "to_card_metrics",
]


@dataclass(frozen=True)
class OperatingPointChoice:
    """A threshold on the positive-class probability (``p >= threshold`` -> positive)."""

    threshold: float
    criterion: str
    sensitivity: float
    specificity: float


def choose_operating_point(y_true: np.ndarray, scores: np.ndarray, criterion: str = "youden"
                           ) -> OperatingPointChoice:
    """Choose a threshold on validation scores.

    Parameters
    ----------
    y_true
        ``(N,)`` 0/1 ground truth (1 = positive label).
    scores
        ``(N,)`` probabilities of the positive label in [0, 1].
    criterion
        ``"youden"`` (maximise sensitivity + specificity - 1; Youden 1950) or ``"sensitivity>=X"`` (the
        highest threshold whose sensitivity is at least X, i.e. the best specificity at that sensitivity).

    Raises
    ------
    ValueError
        Unknown criterion, or only one class present.
    """
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise ValueError("choosing an operating point needs both classes in the validation split")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)  # every threshold: exact target-sensitivity points
    thr = np.clip(thr, 0.0, 1.0)
    if criterion == "youden":
        j = np.argmax(tpr - fpr)
    else:
        m = re.fullmatch(r"sensitivity\s*>=\s*([0-9.]+)", criterion)
        if not m:
            raise ValueError(f"unknown operating-point criterion {criterion!r} (use 'youden' or 'sensitivity>=0.95')")
        target = float(m.group(1))
        ok = np.flatnonzero(tpr >= target)
        j = int(ok[0])  # thresholds decrease along the curve: the first reaching the target is the highest
    return OperatingPointChoice(float(thr[j]), criterion, float(tpr[j]), float(1 - fpr[j]))


def _threshold_metrics(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, float]:
    pred = s >= threshold
    tp = float(np.sum(pred & (y == 1)))
    tn = float(np.sum(~pred & (y == 0)))
    npos, nneg = float(np.sum(y == 1)), float(np.sum(y == 0))
    return {"sensitivity": tp / npos if npos else np.nan, "specificity": tn / nneg if nneg else np.nan,
            "accuracy": (tp + tn) / len(y)}


def patient_bootstrap(y_true: np.ndarray, scores: np.ndarray, groups: Sequence[str], threshold: float,
                      n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile confidence intervals by resampling patients (clusters) with replacement.

    Parameters
    ----------
    y_true
        ``(N,)`` 0/1 truth per image (1 = positive label).
    scores
        ``(N,)`` positive-class probabilities in [0, 1].
    groups
        ``(N,)`` patient id of each image; all images of a drawn patient enter the resample together.
    threshold
        The operating point (``p >= threshold`` -> positive) at which sensitivity, specificity and accuracy
        are measured.

    Returns
    -------
    dict
        ``{"auroc", "sensitivity", "specificity", "accuracy"} -> (low, high)``, e.g. 95 % intervals.

    Raises
    ------
    ValueError
        Lengths differ, or fewer than two patients.
    """
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    g = np.asarray(groups)
    if not (len(y) == len(s) == len(g)):
        raise ValueError(f"y_true, scores and groups differ in length ({len(y)}, {len(s)}, {len(g)})")
    uniq, inv = np.unique(g, return_inverse=True)
    if len(uniq) < 2:
        raise ValueError("a patient-level bootstrap needs at least two patients")
    members = [np.flatnonzero(inv == i) for i in range(len(uniq))]
    rng = np.random.default_rng(seed)
    vals: dict[str, list[float]] = {"auroc": [], "sensitivity": [], "specificity": [], "accuracy": []}
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        yb, sb = y[idx], s[idx]
        if yb.min() == yb.max():
            continue
        vals["auroc"].append(float(roc_auc_score(yb, sb)))
        for k, v in _threshold_metrics(yb, sb, threshold).items():
            vals[k].append(v)
    a = (1 - level) / 2
    return {k: (float(np.quantile(v, a)), float(np.quantile(v, 1 - a))) for k, v in vals.items()}


def bootstrap_auroc_ci(y_true: np.ndarray, scores: np.ndarray, n_boot: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUROC, resampling cases with replacement (Efron 1979): the
    patient-level bootstrap (:func:`patient_bootstrap`) with each case its own patient."""
    return patient_bootstrap(y_true, scores, np.arange(len(y_true)), 0.5, n_boot, seed, level)["auroc"]


def binary_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float, n_boot: int = 1000,
                   seed: int = 0, groups: np.ndarray | None = None) -> dict:
    """All metrics for one positive label at ``threshold``.

    ``groups`` (``(N,)`` patient ids): the intervals come from resampling patients
    (:func:`patient_bootstrap`), as a patient-level split needs, and ``ci95`` (AUROC,
    sensitivity, specificity, accuracy) and ``ci_method`` are added; without it cases are resampled.

    Returns
    -------
    dict
        ``n, auroc, auroc_ci95, accuracy, sensitivity (recall), specificity, precision, f1, brier,
        confusion_matrix`` (``[[TN, FP], [FN, TP]]``, rows = truth), ``threshold``.
    """
    y = np.asarray(y_true).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    pred = (s >= threshold).astype(int)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    both = len(np.unique(y)) == 2
    return {
        "n": int(len(y)),
        "threshold": float(threshold),
        "auroc": float(roc_auc_score(y, s)) if both else None,
        "auroc_ci95": None,  # from the bootstrap below
        "accuracy": float(accuracy_score(y, pred)),
        "sensitivity": tp / (tp + fn) if tp + fn else None,
        "specificity": tn / (tn + fp) if tn + fp else None,
        "precision": float(precision_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "brier": float(brier_score_loss(y, s)),
        "confusion_matrix": cm.tolist(),
    } | _patient_intervals(y, s, groups, threshold, n_boot, seed, both)


def _patient_intervals(y: np.ndarray, s: np.ndarray, groups: np.ndarray | None, threshold: float, n_boot: int,
                       seed: int, both: bool) -> dict:
    """``auroc_ci95`` by resampling patients (``groups``), else cases; with patients also ``ci95``/``ci_method``."""
    if not both or n_boot <= 0:
        return {}
    if groups is None or len(np.unique(groups)) < 2:
        return {"auroc_ci95": bootstrap_auroc_ci(y, s, n_boot, seed)}
    ci = patient_bootstrap(y, s, groups, threshold, n_boot, seed)
    return {"auroc_ci95": ci["auroc"], "ci95": ci,
            "ci_method": f"percentile bootstrap over {len(np.unique(groups))} patients, {n_boot} resamples"}


def calibration(y_true: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Reliability curve (fraction of positives, mean predicted probability) over ``n_bins`` bins."""
    return calibration_curve(np.asarray(y_true).astype(int), np.asarray(scores, np.float64), n_bins=n_bins)


def to_card_metrics(m: dict, split: str) -> Metrics:
    """:func:`binary_metrics` output -> the card's :class:`~medviewer.inference.card.Metrics`."""
    keys = set(Metrics.model_fields) - {"split"}
    return Metrics(split=split, **{k: v for k, v in m.items() if k in keys})
