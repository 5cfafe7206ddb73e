"""``medviewer-train``: fit, evaluate, export, baseline, cv, search.

Every subcommand writes a run directory (``--out``) holding its config, logs, metrics and plots.

Examples
--------
::

    medviewer-train fit --data ../shared/data/kermany-cxr-224 --out runs/cxr --epochs 30
    medviewer-train baseline --data ../shared/data/kermany-cxr-224 --out runs/cxr
    medviewer-train export runs/cxr/best.pt --out resources/models/pneumonia-cxr --name pneumonia-cxr
    medviewer-train evaluate runs/cxr/best.pt --data /path/to/chest_xray/test --out runs/cxr-test
    torchrun --nproc_per_node 2 -m training fit --data ... --device cpu
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="image folder (ROOT/{train,val,test}/CLASS/* or ROOT/CLASS/*) or CSV")
    p.add_argument("--val-fraction", type=float, default=0.15, help="patient-level validation fraction (0.15)")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="optional patient-level internal test fraction, reported separately (0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patient-regex", default=None,
                   help="regex on the file stem whose group 1 is the patient id (default: Kermany names)")
    p.add_argument("--positive", default=None, help="positive label (default: the last class)")
    p.add_argument("--limit", type=int, default=None, help="use a stratified subset of about N images")
    p.add_argument("--input-size", type=int, default=224, help="network input height = width (224)")
    p.add_argument("--resize", choices=["squeeze", "letterbox"], default="squeeze")
    p.add_argument("--cache-dir", default=None, help="folder for a .npy cache of the decoded, fitted images")
    p.add_argument("--no-progress", action="store_true", help="no progress bars; one line per epoch")


def _fit_args(p: argparse.ArgumentParser) -> None:
    from training.models import MODELS

    _data_args(p)
    p.add_argument("--out", default="runs/fit", help="run directory (runs/fit)")
    p.add_argument("--model", choices=list(MODELS), default="compact")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--schedule", choices=["cosine", "onecycle", "constant"], default="cosine")
    p.add_argument("--patience", type=int, default=10, help="early stopping on validation AUROC (0: off)")
    p.add_argument("--balance", choices=["weights", "sampler", "none"], default="weights",
                   help="class imbalance: weighted loss, balanced sampling, or nothing")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--augment", choices=["standard", "strong"], default="standard",
                   help="augmentation preset; strong adds random resized crops, gamma, blur/sharpen, "
                        "down-sampling and CLAHE (robustness to acquisition shift)")
    p.add_argument("--mixup", type=float, default=0.0, help="mixup Beta(a, a) parameter a, e.g. 0.2 (0: off)")
    p.add_argument("--hflip", action="store_true", help="also flip left-right (off: anatomy is not symmetric)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--dropout", type=float, default=0.2, help="before the classifier (compact models)")
    p.add_argument("--ema", type=float, default=0.0, help="evaluate an exponential moving average of the weights "
                                                          "with this decay, e.g. 0.998 (0: off)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="time budget: after epoch 1 the epoch count is fixed to what fits (the run's metrics.json "
                        "records the equivalent --epochs command); 0: off")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--weights", default=None, help="initialise from a local weights file (.pt); nothing is downloaded")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--operating-point", default="youden", help="'youden' or 'sensitivity>=0.95'")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUROC CI")


def _config(args: argparse.Namespace, argv: Sequence[str]) -> object:
    from training.engine import FitConfig

    return FitConfig(
        data=args.data, out=args.out, model=args.model, input_size=args.input_size, resize=args.resize,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs, schedule=args.schedule, patience=args.patience,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed, balance=args.balance,
        augment=not args.no_augment, augment_preset=args.augment, mixup=args.mixup, hflip=args.hflip, label_smoothing=args.label_smoothing, dropout=args.dropout,
        ema=args.ema, max_minutes=args.max_minutes, device=args.device, workers=args.workers, threads=args.threads, amp=not args.no_amp,
        weights=args.weights, resume=args.resume, limit=args.limit, patient_regex=args.patient_regex,
        positive=args.positive, operating_point=args.operating_point, cache_dir=args.cache_dir,
        bootstrap=args.bootstrap, progress=not args.no_progress,
        command="medviewer-train " + " ".join(shlex.quote(a) for a in argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medviewer-train", description="MedViewer training kit: train, evaluate "
                                     "and export image classifiers as MedViewer model packages.")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("fit", help="train a CNN with a patient-level validation split")
    _fit_args(p)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint or a model package on a labelled folder at its "
                       "operating point")
    p.add_argument("checkpoint", help="best.pt of a fit run, or a model package directory (model.onnx + model.json), "
                   "which is run exactly as the app runs it (ONNX Runtime, the card's operating point)")
    p.add_argument("--threshold", type=float, default=None,
                   help="operating point to use instead of the checkpoint's / card's")
    p.add_argument("--data", required=True, help="labelled folder or CSV to evaluate on")
    p.add_argument("--split", default=None, help="layout split to use (train/val/test); default: all images")
    p.add_argument("--out", default="runs/evaluate")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--patient-regex", default=None)

    p = sub.add_parser("export", help="write a model package (model.onnx + model.json + README.md + plots)")
    p.add_argument("checkpoint", help="best.pt of a fit run (its folder holds metrics.json, split.csv, plots/)")
    p.add_argument("--out", required=True, help="package directory, e.g. resources/models/pneumonia-cxr")
    p.add_argument("--name", required=True, help="model name (letters, digits, . _ -)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--comparisons", default=None, help="baselines.json (default: the run's, if any)")
    p.add_argument("--description", default=None)
    p.add_argument("--intended-use", default=None)
    p.add_argument("--limitations", default=None)
    p.add_argument("--dataset", default=None)
    p.add_argument("--citation", default=None)
    p.add_argument("--data-licence", default=None)
    p.add_argument("--license", default="CC-BY-4.0", help="licence of the weights (CC-BY-4.0)")
    p.add_argument("--reproduce", default=None, help="command recorded in the card (default: the fit command)")
    p.add_argument("--parity-images", type=int, default=16)
    p.add_argument("--operating-point", default=None,
                   help="re-choose the operating point on the run's validation predictions with this criterion "
                        "('youden' or 'sensitivity>=0.95'); default: the one chosen by fit")
    p.add_argument("--transfer", action="store_true",
                   help="evaluate the exported graph for transfer: fold a validation-fitted temperature into it, "
                        "choose the operating point (--operating-point, default youden) on shifted validation "
                        "copies, report patient-level bootstrap CIs, ECE and the CAM-in-thorax rate")
    p.add_argument("--op-split", choices=["shifted", "validation"], default="shifted",
                   help="with --transfer: the split the operating point is chosen on")
    p.add_argument("--no-temperature", action="store_true", help="with --transfer: no temperature scaling")
    p.add_argument("--shift-severity", type=float, default=None,
                   help="with --transfer: acquisition-shift severity of the shifted validation (default 1.3)")
    p.add_argument("--shift-copies", type=int, default=3, help="with --transfer: shifted copies per image")
    p.add_argument("--previous", default=None,
                   help="package this one replaces: its metrics go into the card's history; with --transfer it "
                        "is measured by the same protocol as a comparison row")

    p = sub.add_parser("baseline", help="handcrafted features + SVM / random forest / tree / logistic regression")
    _data_args(p)
    p.add_argument("--out", default="runs/baseline", help="run directory; writes baselines.json")
    p.add_argument("--classifiers", default="logreg,svm,rf,tree", help="comma-separated subset of logreg,svm,rf,tree")
    p.add_argument("--folds", type=int, default=5, help="k for patient-grouped k-fold CV in the grid search")
    p.add_argument("--feature-size", type=int, default=128, help="images are resized to this for features")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--bootstrap", type=int, default=1000)

    p = sub.add_parser("cv", help="patient-grouped k-fold cross-validation of a CNN configuration")
    _fit_args(p)
    p.add_argument("--folds", type=int, default=5)

    p = sub.add_parser("search", help="grid search of CNN hyperparameters on the validation split")
    _fit_args(p)
    p.add_argument("--grid", default='{"lr": [0.001, 0.003], "weight_decay": [0.0001, 0.001]}',
                   help="JSON object: FitConfig field -> list of values")

    from training.prepare import add_parser as add_prepare_parser

    add_prepare_parser(sub)
    return parser


def _run_fit(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from training.engine import fit

    r = fit(_config(args, argv))
    if r.val_metrics:
        m = r.val_metrics
        print(f"run {r.run_dir}: best epoch {r.best_epoch}/{r.epochs_run}, validation AUROC {m['auroc']:.4f} "
              f"(95% CI {m['auroc_ci95'][0]:.4f}-{m['auroc_ci95'][1]:.4f}), accuracy {m['accuracy']:.4f}, "
              f"sensitivity {m['sensitivity']:.4f}, specificity {m['specificity']:.4f} at threshold "
              f"{r.operating_point['threshold']:.4f}; {r.seconds:.0f} s")
    return 0


def _evaluation_index(args: argparse.Namespace, rule, classes: list[str]):
    from training.data import discover

    index = discover(args.data, rule, classes=classes)
    if args.split:
        index = index.subset(args.split)
    if not len(index):
        raise FileNotFoundError(f"{args.data}: no images" + (f" in split {args.split!r}" if args.split else ""))
    return index


def _package_probabilities(args: argparse.Namespace, rule):
    """Probabilities of a model package on the evaluation images, computed by the app's own code path
    (read_instance -> display_image -> ONNX Runtime session), with the card's operating point."""
    import numpy as np
    from tqdm import tqdm

    from medviewer.imaging import display_image
    from medviewer.inference import ModelPackage, open_session
    from medviewer.io import read_instance

    pkg = ModelPackage.load(args.checkpoint)
    card = pkg.card
    positives = card.positive_labels
    if len(positives) != 1:
        raise ValueError(f"{args.checkpoint}: evaluate needs exactly one positive label, the card has {positives}")
    op = card.operating_point(positives[0])
    if op is None and args.threshold is None:
        raise ValueError(f"{args.checkpoint}: the card has no operating point for {positives[0]!r}; give --threshold")
    index = _evaluation_index(args, rule, card.labels)
    session = open_session(pkg, "cpu" if args.device == "cpu" else "auto")
    scores = []
    for i in tqdm(range(0, len(index), args.batch_size), desc=f"{card.name} on {session.provider_short}"):
        batch = [display_image(read_instance(s.path)) for s in index.samples[i:i + args.batch_size]]
        scores += [[p.scores[lab] for lab in card.labels] for p in session.predict(batch)]
    ck = {"classes": list(card.labels), "positive": positives[0],
          "operating_point": op.model_dump() if op is not None else {}}
    return ck, np.asarray(scores, dtype=np.float64), index


def _run_evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from medviewer.inference.card import InputSpec, Preprocessing
    from training.data import kermany_patient_id, load_fitted, regex_patient_rule
    from training.engine import load_checkpoint_model, predict_probs, resolve_device
    from training.metrics import binary_metrics
    from training.plots import plot_all

    rule = regex_patient_rule(args.patient_regex) if args.patient_regex else kermany_patient_id
    if (Path(args.checkpoint) / "model.json").is_file():
        ck, probs, index = _package_probabilities(args, rule)
    else:
        device = resolve_device(args.device)
        model, ck = load_checkpoint_model(args.checkpoint, device)
        index = _evaluation_index(args, rule, ck["classes"])
        spec = Preprocessing.model_validate(ck["preprocessing"])
        inp = InputSpec.model_validate(ck["input"])
        x = load_fitted([s.path for s in index.samples], spec, inp)
        probs = predict_probs(model, x, spec, device, args.batch_size)
    if args.threshold is not None:
        ck["operating_point"] = {"threshold": args.threshold, "criterion": "given on the command line"}
    pos = ck["classes"].index(ck["positive"])
    y = (index.labels == pos).astype(int)
    thr = ck["operating_point"]["threshold"]
    m = binary_metrics(y, probs[:, pos], thr, n_boot=args.bootstrap,
                       groups=np.array([s.patient_id for s in index.samples]))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    split = f"{args.data}" + (f" [{args.split}]" if args.split else "")
    (out / "metrics.json").write_text(json.dumps({"split": split, "checkpoint": str(args.checkpoint),
                                                  "operating_point": ck["operating_point"], "metrics": m}, indent=2))
    np.savetxt(out / "probabilities.csv", probs, delimiter=",", header=",".join(ck["classes"]), comments="")
    labels = ck["classes"] if len(ck["classes"]) == 2 else ["other", ck["positive"]]
    plot_all(y, probs[:, pos], m, labels, out / "plots", "evaluation")
    print(f"{split}: n {m['n']}, AUROC {m['auroc']:.4f}, accuracy {m['accuracy']:.4f}, sensitivity "
          f"{m['sensitivity']:.4f}, specificity {m['specificity']:.4f} at threshold {thr:.4f}; written to {out}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from training.export import SHIFT_SEVERITY, export_package

    out, parity = export_package(
        args.checkpoint, args.out, args.name, args.version, args.description, args.intended_use, args.limitations,
        args.comparisons, args.dataset, args.citation, args.data_licence, args.license, args.reproduce or "",
        args.parity_images, operating_point=args.operating_point, transfer=args.transfer, op_split=args.op_split,
        temperature_scaling=not args.no_temperature,
        shift_severity=args.shift_severity if args.shift_severity is not None else SHIFT_SEVERITY,
        shift_copies=args.shift_copies, previous=args.previous)
    print(f"wrote {out} (parity on {parity.n_images} images: prob {parity.prob_max_abs:.1e}, "
          f"CAM {parity.cam_max_rel:.1e}, MONAI CAM {parity.monai_max_rel:.1e})")
    return 0


def _run_baseline(args: argparse.Namespace) -> int:
    from training.baselines import run_baselines

    rows = run_baselines(args)
    for r in rows:
        m = r["metrics"]
        print(f"{r['name']}: AUROC {m['auroc']:.4f}, accuracy {m['accuracy']:.4f}, sensitivity "
              f"{m['sensitivity']:.4f}, specificity {m['specificity']:.4f}")
    return 0


def _run_cv(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import numpy as np

    from training.engine import fit

    base = _config(args, argv)
    rows = []
    for k in range(args.folds):
        cfg = dataclasses.replace(base, out=str(Path(args.out) / f"fold{k + 1}"), fold=k, folds=args.folds)
        r = fit(cfg)
        rows.append({"fold": k + 1, **{key: r.val_metrics.get(key) for key in
                                       ("auroc", "accuracy", "sensitivity", "specificity")}})
        print(f"fold {k + 1}/{args.folds}: AUROC {rows[-1]['auroc']:.4f}")
    auc = np.array([r["auroc"] for r in rows], dtype=float)
    summary = {"folds": rows, "auroc_mean": float(auc.mean()), "auroc_sd": float(auc.std(ddof=1)) if len(auc) > 1 else 0.0}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "cv.json").write_text(json.dumps(summary, indent=2))
    print(f"{args.folds}-fold patient-grouped CV: AUROC {summary['auroc_mean']:.4f} +- {summary['auroc_sd']:.4f}")
    return 0


def _run_search(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import csv

    from training.engine import FitConfig, fit

    base = _config(args, argv)
    grid = json.loads(args.grid)
    fields = {f.name for f in dataclasses.fields(FitConfig)}
    bad = sorted(set(grid) - fields)
    if bad:
        raise ValueError(f"--grid names unknown settings {bad}; choose from {sorted(fields)}")
    keys = sorted(grid)
    out = Path(args.out)
    rows = []
    for i, values in enumerate(itertools.product(*(grid[k] for k in keys))):
        setting = dict(zip(keys, values, strict=True))
        cfg = dataclasses.replace(base, out=str(out / f"trial{i + 1:03d}"), **setting)
        r = fit(cfg)
        rows.append({"trial": i + 1, **setting, "val_auroc": r.val_metrics["auroc"], "best_epoch": r.best_epoch})
        print(f"trial {i + 1}: {setting} -> validation AUROC {r.val_metrics['auroc']:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "search.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    best = max(rows, key=lambda r: r["val_auroc"])
    (out / "best.json").write_text(json.dumps(best, indent=2))
    print(f"best: {best}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medviewer-train`` and ``python -m training``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    from medviewer.errors import MedViewerError

    try:
        if args.command == "fit":
            return _run_fit(args, argv)
        if args.command == "evaluate":
            return _run_evaluate(args)
        if args.command == "export":
            return _run_export(args)
        if args.command == "baseline":
            return _run_baseline(args)
        if args.command == "cv":
            return _run_cv(args, argv)
        if args.command == "search":
            return _run_search(args, argv)
        if args.command == "prepare":
            return args.run(args)
    except (MedViewerError, FileNotFoundError, ValueError, KeyError) as exc:
        print(f"medviewer-train {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0
