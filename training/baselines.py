"""Classical baselines: handcrafted image features + scikit-learn classifiers, on the CNN's patient split.

Features (per image, from the same 8-bit display image the CNN sees, resized to ``feature_size``):

* intensity: 32-bin histogram, mean, standard deviation, skewness, kurtosis, percentiles;
* texture: uniform LBP histogram (Ojala et al. 2002) and GLCM contrast/homogeneity/energy/correlation
  (Haralick et al. 1973), scikit-image;
* shape: HOG (Dalal & Triggs 2005) on a 64x64 version;
* edges: Canny edge density on a 4x4 grid and Sobel gradient statistics.

Classifiers (standardised features, balanced class weights): logistic regression, RBF SVM, random forest,
decision tree, each tuned by grid search with patient-grouped stratified k-fold CV (AUROC) on the training
part. As for the CNN, the operating point is chosen on the validation split (Youden's J) and metrics are
reported there, so the rows are comparable to the CNN's.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from medviewer.inference.card import InputSpec, Preprocessing, ResizeMode

__all__ = ["FEATURE_GROUPS", "image_features", "extract_features", "CLASSIFIERS", "fit_baseline", "run_baselines"]

FEATURE_GROUPS = ("intensity", "lbp", "glcm", "hog", "edges")


def image_features(img: np.ndarray) -> np.ndarray:
    """Handcrafted features of one uint8 ``(H, W)`` grayscale image -> float32 ``(D,)`` (D = 421 at any size)."""
    from scipy.stats import kurtosis, skew
    from skimage.feature import graycomatrix, graycoprops, hog, local_binary_pattern

    x = img.astype(np.float32)
    hist = np.bincount((img // 8).ravel(), minlength=32).astype(np.float32) / img.size
    flat = x.ravel()
    stats = [flat.mean(), flat.std(), float(skew(flat)), float(kurtosis(flat)), *np.percentile(flat, [5, 25, 50, 75, 95])]
    lbp = local_binary_pattern(img, P=8, R=1, method="uniform")
    lbp_hist = np.bincount(lbp.astype(np.int64).ravel(), minlength=10).astype(np.float32) / img.size
    glcm = graycomatrix(img // 8, distances=[1, 3], angles=[0, np.pi / 2], levels=32, symmetric=True, normed=True)
    glcm_f = np.concatenate([graycoprops(glcm, p).ravel() for p in ("contrast", "homogeneity", "energy", "correlation")])
    small = cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA)
    hog_f = hog(small, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2), feature_vector=True)
    edges = cv2.Canny(img, 50, 150) > 0
    h, w = edges.shape
    grid = [edges[i * h // 4 : (i + 1) * h // 4, j * w // 4 : (j + 1) * w // 4].mean() for i in range(4) for j in range(4)]
    gx = cv2.Sobel(x, cv2.CV_32F, 1, 0)
    gy = cv2.Sobel(x, cv2.CV_32F, 0, 1)
    mag = np.hypot(gx, gy)
    edge_f = [edges.mean(), *grid, mag.mean(), mag.std()]
    return np.concatenate([hist, np.asarray(stats, np.float32), lbp_hist, glcm_f, hog_f,
                           np.asarray(edge_f, np.float32)]).astype(np.float32)


def extract_features(images_u8: np.ndarray, progress: bool = True) -> np.ndarray:
    """float32 ``(N, D)`` features of uint8 ``(N, H, W[, 1])`` images."""
    imgs = images_u8[..., 0] if images_u8.ndim == 4 else images_u8
    return np.stack([image_features(im) for im in tqdm(imgs, desc="features", disable=not progress, leave=False)])


def _classifiers(seed: int) -> dict[str, tuple[object, dict, str]]:
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    return {
        "logreg": (LogisticRegression(max_iter=3000, class_weight="balanced"),
                   {"clf__C": [0.01, 0.1, 1.0]}, "logistic regression"),
        "svm": (SVC(kernel="rbf", class_weight="balanced", random_state=seed),
                {"clf__C": [1.0, 10.0]}, "RBF support vector machine (Platt-scaled probabilities)"),
        "rf": (RandomForestClassifier(n_estimators=150, class_weight="balanced", random_state=seed, n_jobs=1),
               {"clf__min_samples_leaf": [1, 5]}, "random forest (150 trees)"),
        "tree": (DecisionTreeClassifier(class_weight="balanced", random_state=seed),
                 {"clf__max_depth": [4, 8, 12], "clf__min_samples_leaf": [5, 20]}, "decision tree"),
    }


#: Names accepted by ``--classifiers``.
CLASSIFIERS = ("logreg", "svm", "rf", "tree")


def fit_baseline(name: str, x_tr: np.ndarray, y_tr: np.ndarray, groups: Sequence[str], folds: int = 5,
                 seed: int = 0, jobs: int = 1) -> tuple[object, dict, str]:
    """Grid-search one classifier with patient-grouped stratified k-fold CV (scoring AUROC).

    Returns
    -------
    (estimator, best_params, description)
        The refitted best pipeline (``StandardScaler`` + classifier), its parameters and a description.
    """
    from sklearn.model_selection import GridSearchCV, StratifiedGroupKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    table = _classifiers(seed)
    if name not in table:
        raise ValueError(f"unknown baseline classifier {name!r}; choose from {', '.join(CLASSIFIERS)}")
    clf, grid, desc = table[name]
    pipe = Pipeline([("scale", StandardScaler()), ("clf", clf)])
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    search = GridSearchCV(pipe, grid, scoring="roc_auc", cv=cv, n_jobs=jobs, refit=True)
    search.fit(x_tr, y_tr, groups=list(groups))
    best = search.best_estimator_
    if name == "svm":  # the search ranks by the decision function; then Platt scaling on grouped folds
        from sklearn.calibration import CalibratedClassifierCV

        svc = SVC(kernel="rbf", class_weight="balanced", random_state=seed, C=search.best_params_["clf__C"])
        splits = list(cv.split(x_tr, y_tr, groups=list(groups)))
        best = Pipeline([("scale", StandardScaler()),
                         ("clf", CalibratedClassifierCV(svc, method="sigmoid", cv=splits, ensemble=False))])
        best.fit(x_tr, y_tr)
    return best, search.best_params_, desc


def run_baselines(args: argparse.Namespace) -> list[dict]:
    """The ``baseline`` subcommand: features, grid search per classifier, metrics on validation, JSON + plot.

    Writes ``OUT/baselines.json`` (``{"split", "rows": [{"name", "description", "metrics", "params"}]}``,
    read by ``export`` as the card's ``comparisons``) and ``OUT/plots/baselines_roc.png``.
    """
    from training.engine import FitConfig, split_index
    from training.metrics import binary_metrics, choose_operating_point
    from training.plots import plot_roc_overlay

    cfg = FitConfig(data=args.data, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
                    patient_regex=args.patient_regex, positive=args.positive, limit=args.limit,
                    input_size=args.feature_size, resize=args.resize, cache_dir=args.cache_dir,
                    progress=not args.no_progress)
    train, val, _test, desc = split_index(cfg)
    spec = Preprocessing(resize=ResizeMode(args.resize))
    inp = InputSpec(channels=1, height=args.feature_size, width=args.feature_size)
    from training.data import load_fitted

    kw = {"cache_dir": args.cache_dir, "progress": cfg.progress}
    x_tr = extract_features(load_fitted([s.path for s in train.samples], spec, inp, **kw), cfg.progress)
    x_va = extract_features(load_fitted([s.path for s in val.samples], spec, inp, **kw), cfg.progress)
    pos = train.classes.index(args.positive) if args.positive else len(train.classes) - 1
    y_tr = (train.labels == pos).astype(int)
    y_va = (val.labels == pos).astype(int)
    groups = [s.patient_id for s in train.samples]
    rows, curves = [], []
    names = [n.strip() for n in args.classifiers.split(",") if n.strip()]
    for name in names:
        t0 = time.time()
        est, params, cdesc = fit_baseline(name, x_tr, y_tr, groups, args.folds, args.seed, args.jobs)
        s_va = est.predict_proba(x_va)[:, 1]
        op = choose_operating_point(y_va, s_va, "youden")
        m = binary_metrics(y_va, s_va, op.threshold, n_boot=args.bootstrap, seed=args.seed,
                           groups=np.array([s.patient_id for s in val.samples]))
        label = {"logreg": "LogReg", "svm": "SVM", "rf": "RandomForest", "tree": "DecisionTree"}[name]
        rows.append({"name": f"features+{label}",
                     "description": (f"handcrafted features (intensity, LBP, GLCM, HOG, edges) + {cdesc}; "
                                     f"{args.folds}-fold patient-grouped grid search {params}; Youden threshold "
                                     f"on validation"),
                     "params": {k.removeprefix("clf__"): v for k, v in params.items()},
                     "seconds": round(time.time() - t0, 1),
                     "metrics": {"split": f"{desc}; threshold chosen on this split",
                                 **{k: m[k] for k in ("n", "auroc", "auroc_ci95", "accuracy", "sensitivity",
                                                      "specificity", "precision", "f1", "brier",
                                                      "confusion_matrix")}}})
        curves.append((rows[-1]["name"], y_va, s_va))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps({"split": desc, "rows": rows}, indent=2) + "\n")
    plot_roc_overlay(curves, out / "plots" / "baselines_roc.png", "Baselines (validation)")
    return rows
