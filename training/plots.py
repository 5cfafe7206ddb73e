"""Evaluation plots as PNG (matplotlib, Agg backend): ROC, precision-recall, confusion, calibration, curves."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve  # noqa: E402

from training.metrics import calibration  # noqa: E402

__all__ = ["plot_roc", "plot_roc_overlay", "plot_pr", "plot_confusion", "plot_calibration", "plot_training_curves", "plot_all"]


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_roc(y: np.ndarray, s: np.ndarray, path: Path, title: str = "ROC",
             op: tuple[float, float] | None = None) -> Path:
    """ROC curve; ``op`` = (sensitivity, specificity) of the operating point, marked."""
    fpr, tpr, _ = roc_curve(y, s)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, lw=2, label=f"AUROC {roc_auc_score(y, s):.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    if op is not None:
        ax.plot([1 - op[1]], [op[0]], "ro", label=f"operating point (sens {op[0]:.3f}, spec {op[1]:.3f})")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_roc_overlay(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: Path, title: str = "ROC") -> Path:
    """Several ROC curves ``(name, y, scores)`` on one plot."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, y, s in curves:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} ({roc_auc_score(y, s):.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_pr(y: np.ndarray, s: np.ndarray, path: Path, title: str = "Precision-recall") -> Path:
    prec, rec, _ = precision_recall_curve(y, s)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(rec, prec, lw=2, label=f"AP {average_precision_score(y, s):.3f}")
    ax.axhline(float(np.mean(y)), color="k", ls="--", lw=0.8, label="prevalence")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_confusion(cm: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str = "Confusion") -> Path:
    cm_a = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(4, 3.6))
    ax.imshow(cm_a, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm_a):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm_a.max() / 2 else "black")
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="truth", title=title)
    return _save(fig, path)


def plot_calibration(y: np.ndarray, s: np.ndarray, path: Path, title: str = "Calibration") -> Path:
    frac, mean = calibration(y, s, n_bins=10)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect")
    ax.plot(mean, frac, "o-", label="model")
    ax.set(xlabel="mean predicted probability", ylabel="fraction positive", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def plot_training_curves(log_csv: Path, path: Path) -> Path | None:
    """Loss and validation AUROC per epoch from the engine's ``log.csv``."""
    if not Path(log_csv).is_file():
        return None
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    ep = [int(r["epoch"]) for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.5))
    a1.plot(ep, [float(r["train_loss"]) for r in rows], label="train")
    a1.plot(ep, [float(r["val_loss"]) for r in rows], label="validation")
    a1.set(xlabel="epoch", ylabel="cross-entropy", title="Loss")
    a1.legend(fontsize=8)
    a2.plot(ep, [float(r["val_auroc"]) for r in rows], color="C2")
    a2.set(xlabel="epoch", ylabel="AUROC", title="Validation AUROC")
    return _save(fig, path)


def plot_all(y: np.ndarray, s: np.ndarray, metrics: dict, labels: Sequence[str], out_dir: Path,
             split: str = "validation", log_csv: Path | None = None) -> list[Path]:
    """ROC, PR, confusion and calibration (and training curves when ``log_csv`` is given) in ``out_dir``."""
    out_dir = Path(out_dir)
    op = (metrics["sensitivity"], metrics["specificity"]) if metrics.get("sensitivity") is not None else None
    paths = [
        plot_roc(y, s, out_dir / "roc.png", f"ROC ({split})", op),
        plot_pr(y, s, out_dir / "pr.png", f"Precision-recall ({split})"),
        plot_confusion(metrics["confusion_matrix"], labels, out_dir / "confusion.png", f"Confusion ({split})"),
        plot_calibration(y, s, out_dir / "calibration.png", f"Calibration ({split})"),
    ]
    if log_csv is not None:
        p = plot_training_curves(log_csv, out_dir / "training_curves.png")
        if p is not None:
            paths.append(p)
    return paths
