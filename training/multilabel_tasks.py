"""``evaluate`` and ``baseline`` for multi-label models (``medviewer-train ... --task multilabel``).

* :func:`evaluate_multilabel` scores a labelled table with a multi-label ``best.pt`` (torch) or a model
  package (ONNX Runtime, exactly the app's code path: read -> display image -> preprocess -> sigmoid) and
  reports every finding at its operating point, with macro and micro AUROC and patient-bootstrap
  intervals (:func:`training.multilabel.multilabel_metrics`).
* :func:`baseline_multilabel` is the classical comparison: the handcrafted features of
  :mod:`training.baselines` (intensity, LBP, GLCM, HOG, edges) + one-vs-rest logistic regression (one per
  finding, balanced class weights), ``C`` chosen on patient-level iteratively stratified folds by macro
  AUROC, evaluated on the same validation split as ``fit``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

__all__ = ["is_multilabel", "evaluate_multilabel", "baseline_multilabel"]


def is_multilabel(checkpoint: str | Path) -> bool:
    """True for a model package whose card says ``multilabel``, or a ``best.pt`` whose run's
    ``metrics.json`` (or the checkpoint itself) says so."""
    path = Path(checkpoint)
    if (path / "model.json").is_file():
        from medviewer.inference.card import Task, load_card

        return load_card(path).task == Task.MULTILABEL
    metrics = path.parent / "metrics.json"
    if metrics.is_file():
        try:
            return json.loads(metrics.read_text()).get("task") == "multilabel"
        except (OSError, ValueError):
            return False
    if path.is_file():
        import torch

        return torch.load(path, map_location="cpu", weights_only=False).get("task") == "multilabel"
    return False


def _package_scores(args: argparse.Namespace, index) -> tuple[list[str], np.ndarray, dict[str, float]]:
    from tqdm import tqdm

    from medviewer.imaging import display_image
    from medviewer.inference import ModelPackage, open_session
    from medviewer.io import read_instance

    pkg = ModelPackage.load(args.checkpoint)
    card = pkg.card
    session = open_session(pkg, "cpu" if args.device == "cpu" else "auto")
    scores = []
    for i in tqdm(range(0, len(index), args.batch_size), desc=f"{card.name} on {session.provider_short}"):
        batch = [display_image(read_instance(p)) for p in index.paths[i:i + args.batch_size]]
        scores += [[pr.scores[lab] for lab in card.labels] for pr in session.predict(batch)]
    thr = {op.label: op.threshold for op in card.operating_points}
    return list(card.labels), np.asarray(scores, np.float64), thr


def evaluate_multilabel(args: argparse.Namespace) -> int:
    """``medviewer-train evaluate`` for a multi-label checkpoint or package: writes ``OUT/metrics.json``,
    ``OUT/probabilities.csv`` and ``OUT/plots/roc_per_finding.png``; prints macro/micro AUROC and one line
    per finding. ``--threshold`` replaces every finding's operating point."""
    from training.multilabel import multilabel_metrics
    from training.multilabel_data import read_multilabel_csv
    from training.plots import plot_roc_overlay

    if args.split:
        raise ValueError("--split applies to folder layouts; a multilabel table is evaluated whole")
    rule = None
    if args.patient_regex:
        from training.data import regex_patient_rule

        rule = regex_patient_rule(args.patient_regex)
    if (Path(args.checkpoint) / "model.json").is_file():
        from medviewer.inference.card import load_card

        labels = list(load_card(args.checkpoint).labels)
        index = read_multilabel_csv(args.data, labels, rule)
        labels, probs, thr = _package_scores(args, index)
    else:
        from medviewer.inference.card import InputSpec, Preprocessing
        from training.engine import load_checkpoint_model, resolve_device
        from training.multilabel import _sigmoid, predict_logits
        from training.multilabel_data import TargetDataset

        device = resolve_device(args.device)
        model, ck = load_checkpoint_model(args.checkpoint, device)
        labels = list(ck["classes"])
        index = read_multilabel_csv(args.data, labels, rule)
        ds = TargetDataset(index.targets.astype(np.float32), Preprocessing.model_validate(ck["preprocessing"]),
                           InputSpec.model_validate(ck["input"]), paths=list(index.paths))
        probs = _sigmoid(predict_logits(model, ds, device, args.batch_size))
        thr = {lab: o["threshold"] for lab, o in ck.get("operating_points", {}).items()}
    if args.threshold is not None:
        thr = {lab: args.threshold for lab in labels}
    m = multilabel_metrics(index.targets, probs, labels, np.asarray(index.patients), thr, n_boot=args.bootstrap)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"task": "multilabel", "split": str(args.data),
                                                  "checkpoint": str(args.checkpoint), "thresholds": thr,
                                                  "metrics": m}, indent=2) + "\n")
    np.savetxt(out / "probabilities.csv", probs, delimiter=",", header=",".join(labels), comments="")
    y = index.targets.astype(int)
    curves = [(lab, y[:, k], probs[:, k]) for k, lab in enumerate(labels) if 0 < y[:, k].sum() < len(y)]
    if curves:
        plot_roc_overlay(curves, out / "plots" / "roc_per_finding.png", "ROC per finding (evaluation)")
    macro = "-" if m["macro_auroc"] is None else f"{m['macro_auroc']:.4f}"
    micro = "-" if m["micro_auroc"] is None else f"{m['micro_auroc']:.4f}"
    print(f"{args.data}: n {m['n']} ({m['patients']} patients), macro AUROC {macro}, micro AUROC {micro}; "
          f"written to {out}")
    for lab in labels:
        lm = m["per_label"][lab]
        auc = "-" if lm["auroc"] is None else f"{lm['auroc']:.3f}"
        sens = "-" if lm["sensitivity"] is None else f"{lm['sensitivity']:.3f}"
        print(f"  {lab}: AUROC {auc}, {lm['positives']} positive, sensitivity {sens}, specificity "
              f"{lm['specificity']:.3f} at {thr.get(lab, 0.5):.3f}")
    return 0


def baseline_multilabel(args: argparse.Namespace) -> list[dict]:
    """``medviewer-train baseline --task multilabel``: features + one-vs-rest logistic regression.

    Writes ``OUT/baselines.json`` (``rows[0]["metrics"]`` is card-ready: macro AUROC with its patient-bootstrap
    interval; ``per_label`` and ``micro_auroc`` beside it) and ``OUT/plots/baselines_roc.png``.
    """
    import time
    import warnings

    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from medviewer.inference.card import InputSpec, Preprocessing, ResizeMode
    from training.baselines import extract_features
    from training.data import load_fitted
    from training.engine import FitConfig
    from training.multilabel import _macro_auc, multilabel_metrics, split_multilabel_index
    from training.multilabel_data import multilabel_folds
    from training.plots import plot_roc_overlay

    if args.classifiers not in ("logreg", "logreg,svm,rf,tree"):
        raise ValueError("--task multilabel has one baseline: logreg (one-vs-rest logistic regression)")
    cfg = FitConfig(data=args.data, task="multilabel", labels=args.labels, val_fraction=args.val_fraction,
                    test_fraction=args.test_fraction, seed=args.seed, patient_regex=args.patient_regex,
                    limit=args.limit, progress=not args.no_progress)
    train, val, _test, desc = split_multilabel_index(cfg)
    spec = Preprocessing(resize=ResizeMode(args.resize))
    inp = InputSpec(channels=1, height=args.feature_size, width=args.feature_size)
    kw = {"cache_dir": args.cache_dir, "progress": cfg.progress}
    x_tr = extract_features(load_fitted(train.paths, spec, inp, **kw), cfg.progress)
    x_va = extract_features(load_fitted(val.paths, spec, inp, **kw), cfg.progress)
    y_tr, y_va = train.targets.astype(int), val.targets.astype(int)
    labels = train.labels
    keep = [k for k in range(len(labels)) if 0 < y_tr[:, k].sum() < len(y_tr)]  # a finding needs both classes

    def model(c: float) -> Pipeline:
        return Pipeline([("scale", StandardScaler()), ("clf", OneVsRestClassifier(
            LogisticRegression(C=c, max_iter=3000, class_weight="balanced"), n_jobs=args.jobs))])

    t0 = time.time()
    folds = multilabel_folds(train, args.folds, args.seed)
    grid = {}
    for c in (0.001, 0.01, 0.1):
        scores = []
        for f in range(args.folds):
            tr, va = folds != f, folds == f
            with warnings.catch_warnings():  # a rare finding absent from a fold's training part: constant
                warnings.simplefilter("ignore", UserWarning)
                est = model(c).fit(x_tr[tr], y_tr[tr][:, keep])
            scores.append(_macro_auc(y_tr[va][:, keep], est.predict_proba(x_tr[va])))
        grid[c] = float(np.nanmean(scores))
    best_c = max(grid, key=grid.__getitem__)
    est = model(best_c).fit(x_tr, y_tr[:, keep])
    p = np.zeros(y_va.shape)
    p[:, keep] = est.predict_proba(x_va)
    m = multilabel_metrics(y_va, p, labels, np.asarray(val.patients), n_boot=args.bootstrap, seed=args.seed)
    row = {"name": "features+LogReg (one-vs-rest)",
           "description": (f"handcrafted features (intensity, LBP, GLCM, HOG, edges) + one logistic regression per "
                           f"finding (balanced), C={best_c} chosen by {args.folds}-fold patient-level iteratively "
                           f"stratified CV on macro AUROC ({ {str(k): round(v, 4) for k, v in grid.items()} })"),
           "params": {"C": best_c}, "seconds": round(time.time() - t0, 1), "micro_auroc": m["micro_auroc"],
           "per_label": {lab: m["per_label"][lab]["auroc"] for lab in labels},
           "metrics": {"split": f"{desc}: macro average over {len(m['labels_in_macro'])} findings", "n": m["n"],
                       "auroc": m["macro_auroc"], "auroc_ci95": m["macro_auroc_ci95"], "ci_method": m["ci_method"]}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "baselines.json").write_text(json.dumps({"split": desc, "task": "multilabel", "rows": [row]}, indent=2)
                                        + "\n")
    curves = [(lab, y_va[:, k], p[:, k]) for k, lab in enumerate(labels) if 0 < y_va[:, k].sum() < len(y_va)]
    if curves:
        plot_roc_overlay(curves, out / "plots" / "baselines_roc.png", "One-vs-rest logistic regression (validation)")
    return [row]
