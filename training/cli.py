"""``medviewer-train``: fit, evaluate, export, baseline, cv, search.

Every subcommand writes a run directory (``--out``) holding its config, logs, metrics and plots.

Examples
--------
::

    medviewer-train fit --data ../shared/data/kermany-cxr-224 --out runs/cxr --epochs 30
    medviewer-train baseline --data ../shared/data/kermany-cxr-224 --out runs/cxr
    medviewer-train export runs/cxr/best.pt --out resources/models/pneumonia-cxr --name pneumonia-cxr
    medviewer-train evaluate runs/cxr/best.pt --data /path/to/chest_xray/test --out runs/cxr-test
    medviewer-train fit --task multilabel --data ../shared/data/nih-cxr14-64/labels.csv --input-size 64 \
        --model compact-small --out runs/nih64
    medviewer-train fit --preset chexnet --data /data/chestxray14/Data_Entry_2017.csv --workers 8 --out runs/chexnet
    torchrun --nproc_per_node 2 -m training fit --data ... --device cpu

Without PyTorch installed, every subcommand but ``prepare`` prints one line: ``pip install 'medviewer[train]'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import itertools
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["MODEL_NAMES", "PRESET_NAMES", "build_parser", "main"]

#: the networks of :data:`training.models.MODELS`, named here so that ``--help`` needs no torch
MODEL_NAMES = ("compact", "compact-small", "compact-tiny", "resnet18", "resnet10", "densenet121")
#: the presets of :data:`training.multilabel.PRESETS`
PRESET_NAMES = ("chexnet",)
INSTALL_HINT = "medviewer-train needs PyTorch, MONAI and ONNX: pip install 'medviewer[train]'"

_EXAMPLES = """examples:
  medviewer-train fit --data ../shared/data/kermany-cxr-224 --out runs/cxr --epochs 30
  medviewer-train fit --task multilabel --data ../shared/data/nih-cxr14-64/labels.csv --input-size 64 \\
      --model compact-small --out runs/nih64
  medviewer-train fit --preset chexnet --data /data/chestxray14/Data_Entry_2017.csv --workers 8 --out runs/chexnet
  medviewer-train baseline --data ../shared/data/kermany-cxr-224 --out runs/cxr
  medviewer-train export runs/cxr/best.pt --out packages/pneumonia-cxr --name pneumonia-cxr
  medviewer-train evaluate runs/cxr/best.pt --data /path/to/chest_xray/test --out runs/cxr-test
  torchrun --nproc_per_node 2 -m training fit --data ... --device cpu
"""
_FIT_DESC = ("Train a CNN (compact residual nets, MONAI ResNet or DenseNet-121) on labelled images with a "
             "patient-level validation split: --task multiclass (softmax; folders or a path,label CSV) or "
             "--task multilabel (a sigmoid per finding; a CSV with 0/1 columns per finding or NIH's "
             "'Finding Labels'). Writes OUT/{config.json, split.csv, log.csv, best.pt, last.pt, metrics.json, "
             "val_predictions.csv, plots/}.")


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="image folder (ROOT/{train,val,test}/CLASS/* or ROOT/CLASS/*) or CSV (multiclass: "
                        "path,label[,patient_id]; multilabel: path or 'Image Index', patient_id or 'Patient ID', "
                        "0/1 columns per finding or 'Finding Labels' A|B / 'No Finding')")
    p.add_argument("--task", choices=["multiclass", "multilabel"], default="multiclass",
                   help="multiclass: one softmax, one positive label; multilabel: a sigmoid per finding "
                        "(default: multiclass)")
    p.add_argument("--labels", default=None, metavar="A,B,...",
                   help="multilabel: the findings, in output order (default: every finding in 'Finding Labels')")
    p.add_argument("--val-fraction", type=float, default=0.15, help="patient-level validation fraction (0.15)")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="optional patient-level internal test fraction, reported separately (0)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the split, the initial weights, the augmentation and the bootstrap (0)")
    p.add_argument("--patient-regex", default=None,
                   help="regex on the file stem whose group 1 is the patient id, for tables without a patient "
                        "column (default: Kermany names; multilabel: each image its own patient)")
    p.add_argument("--positive", default=None, help="multiclass: the positive label (default: the last class)")
    p.add_argument("--limit", type=int, default=None, help="use a stratified subset of about N images")
    p.add_argument("--input-size", type=int, default=224, help="network input height = width (224)")
    p.add_argument("--resize", choices=["squeeze", "letterbox"], default="squeeze",
                   help="fit the image to the input: squeeze (stretch) or letterbox (keep the aspect ratio, pad); "
                        "recorded in the card, the app does the same (squeeze)")
    p.add_argument("--cache-dir", default=None, help="folder for a .npy cache of the decoded, fitted images")
    p.add_argument("--no-progress", action="store_true", help="no progress bars; one line per epoch")


def _fit_args(p: argparse.ArgumentParser, preset: dict | None = None) -> None:
    _data_args(p)
    p.add_argument("--preset", choices=PRESET_NAMES, default=None,
                   help="chexnet: Rajpurkar et al. 2017's setup (multilabel, DenseNet-121, input 224, Adam 1e-3, "
                        "batch 16, learning rate / 10 on a validation-loss plateau, horizontal flips); options "
                        "given explicitly override it")
    p.add_argument("--out", default="runs/fit", help="run directory (runs/fit)")
    p.add_argument("--model", choices=MODEL_NAMES, default="compact",
                   help="network: compact (~1.2 M parameters, CPU), compact-small, compact-tiny (tests), resnet10, "
                        "resnet18 (MONAI), densenet121 (MONAI; CheXNet's); all end in global pooling + one linear "
                        "layer, so the CAM is exact (default: compact)")
    p.add_argument("--epochs", type=int, default=30, help="maximum epochs; early stopping may end sooner (30)")
    p.add_argument("--batch-size", type=int, default=32, help="images per step over all processes (32)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (2e-3)")
    p.add_argument("--optimizer", choices=["adamw", "adam"], default="adamw", help="optimizer (adamw)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (1e-4)")
    p.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warm-up epochs (1)")
    p.add_argument("--schedule", choices=["cosine", "onecycle", "constant", "plateau"], default="cosine",
                   help="learning-rate schedule; plateau (multilabel): / 10 when the validation loss stops "
                        "falling for --plateau-patience epochs (cosine)")
    p.add_argument("--plateau-patience", type=int, default=1, help="with --schedule plateau (1)")
    p.add_argument("--patience", type=int, default=10, help="early stopping on validation AUROC (0: off)")
    p.add_argument("--balance", choices=["weights", "sampler", "none"], default="weights",
                   help="class imbalance: weighted loss (multilabel: BCE pos_weight n_neg/n_pos per finding), "
                        "balanced sampling (multiclass), or nothing")
    p.add_argument("--no-augment", action="store_true", help="no augmentation")
    p.add_argument("--augment", choices=["standard", "strong"], default="standard",
                   help="augmentation preset; strong adds random resized crops, gamma, blur/sharpen, "
                        "down-sampling and CLAHE (robustness to acquisition shift)")
    p.add_argument("--mixup", type=float, default=0.0, help="mixup Beta(a, a) parameter a, e.g. 0.2 (0: off)")
    p.add_argument("--hflip", action="store_true", help="also flip left-right (off: anatomy is not symmetric)")
    p.add_argument("--label-smoothing", type=float, default=0.0, help="multiclass cross-entropy label smoothing (0)")
    p.add_argument("--dropout", type=float, default=0.2, help="before the classifier (compact models)")
    p.add_argument("--ema", type=float, default=0.0, help="evaluate an exponential moving average of the weights "
                                                          "with this decay, e.g. 0.998 (0: off)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="time budget: after epoch 1 the epoch count is fixed to what fits (the run's metrics.json "
                        "records the equivalent --epochs command); 0: off")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--loader", choices=["auto", "memory", "stream"], default="auto",
                   help="memory: decode every image once into RAM; stream: read each image from disk when it is "
                        "drawn, no decoded copy held (use --workers); auto: memory while the decoded images take "
                        "<= 2 GiB (auto)")
    p.add_argument("--workers", type=int, default=0, help="data-loader worker processes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    p.add_argument("--weights", default=None, help="initialise from a local weights file (.pt); nothing is downloaded")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--operating-point", default="youden",
                   help="'youden' or 'sensitivity>=0.95'; multilabel: a default then FINDING=criterion items, "
                        "e.g. 'youden,Pneumothorax=sensitivity>=0.9'")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the AUROC CI")
    if preset:
        p.set_defaults(**preset)


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
        bootstrap=args.bootstrap, progress=not args.no_progress, task=args.task, labels=args.labels,
        loader=args.loader, optimizer=args.optimizer, plateau_patience=args.plateau_patience, preset=args.preset,
        command="medviewer-train " + " ".join(shlex.quote(a) for a in argv))


def build_parser(preset: str | None = None) -> argparse.ArgumentParser:
    """The ``medviewer-train`` parser; ``preset`` (a :data:`PRESET_NAMES` entry) sets the defaults of
    ``fit``/``cv``/``search`` to that preset (:func:`main` finds it in the arguments first)."""
    defaults = _preset(preset)
    parser = argparse.ArgumentParser(prog="medviewer-train", description="MedViewer training kit: train, evaluate "
                                     "and export image classifiers (multi-class or multi-label) as MedViewer "
                                     "model packages.", epilog=_EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("fit", help="train a CNN with a patient-level validation split", description=_FIT_DESC)
    _fit_args(p, defaults)

    p = sub.add_parser("evaluate", help="evaluate a checkpoint or a model package on a labelled folder at its "
                       "operating point")
    p.add_argument("checkpoint", help="best.pt of a fit run, or a model package directory (model.onnx + model.json), "
                   "which is run exactly as the app runs it (ONNX Runtime, the card's operating point)")
    p.add_argument("--threshold", type=float, default=None,
                   help="operating point to use instead of the checkpoint's / card's")
    p.add_argument("--data", required=True, help="labelled folder or CSV to evaluate on (multilabel: a table with "
                   "the model's findings)")
    p.add_argument("--split", default=None, help="layout split to use (train/val/test); default: all images")
    p.add_argument("--out", default="runs/evaluate")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--patient-regex", default=None, help="regex on the file stem whose group 1 is the patient id")

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

    p = sub.add_parser("baseline", help="handcrafted features + SVM / random forest / tree / logistic regression",
                       description="Classical baselines on the same patient split as `fit`: intensity, LBP, GLCM, HOG "
                                   "and edge features of the display image, then scikit-learn classifiers tuned by "
                                   "patient-grouped k-fold grid search; multilabel: one-vs-rest logistic regression "
                                   "(one per finding), its C chosen by patient-level iteratively stratified folds "
                                   "on macro AUROC. Writes OUT/baselines.json, read by `export` as the card's "
                                   "comparison rows.")
    _data_args(p)
    p.add_argument("--out", default="runs/baseline", help="run directory; writes baselines.json")
    p.add_argument("--classifiers", default="logreg,svm,rf,tree", help="comma-separated subset of logreg,svm,rf,tree")
    p.add_argument("--folds", type=int, default=5, help="k of the patient-grouped k-fold CV of the grid search (5)")
    p.add_argument("--feature-size", type=int, default=128, help="images are resized to this for features")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--bootstrap", type=int, default=1000)

    p = sub.add_parser("cv", help="patient-grouped k-fold cross-validation of a CNN configuration",
                       description="Train the `fit` configuration once per fold, each patient fold the validation "
                                   "part once (multiclass: StratifiedGroupKFold; multilabel: iterative "
                                   "stratification over patients); writes OUT/foldN/ and OUT/cv.json with the mean "
                                   "and SD of the validation AUROC (multilabel: macro AUROC).")
    _fit_args(p, defaults)
    p.add_argument("--folds", type=int, default=5, help="number of patient folds, k (5)")

    p = sub.add_parser("search", help="grid search of CNN hyperparameters on the validation split",
                       description="Train the `fit` configuration for every combination of --grid on the same "
                                   "patient split; writes OUT/trialNNN/, OUT/search.csv and OUT/best.json ranked "
                                   "by validation AUROC (multilabel: macro AUROC).")
    _fit_args(p, defaults)
    p.add_argument("--grid", default='{"lr": [0.001, 0.003], "weight_decay": [0.0001, 0.001]}',
                   help="JSON object: FitConfig field -> list of values")

    from training.prepare import add_parser as add_prepare_parser

    add_prepare_parser(sub)
    return parser


def _preset(name: str | None) -> dict | None:
    if not name:
        return None
    from training.multilabel import PRESETS

    return dict(PRESETS[name])


def _fit_function(cfg):
    """:func:`training.engine.fit` or :func:`training.multilabel.fit_multilabel` for ``cfg.task``, and the
    name of the validation metric a run is ranked by."""
    if cfg.task == "multilabel":
        from training.multilabel import fit_multilabel

        return fit_multilabel, "macro_auroc"
    if cfg.schedule == "plateau":
        raise ValueError("--schedule plateau is for --task multilabel")
    from training.engine import fit

    return fit, "auroc"


def _run_fit(args: argparse.Namespace, argv: Sequence[str]) -> int:
    cfg = _config(args, argv)
    fit, _ = _fit_function(cfg)
    r = fit(cfg)
    if r.val_metrics and cfg.task == "multilabel":
        m = r.val_metrics

        def ci(key: str) -> str:
            return f" (95% CI {m[key][0]:.4f}-{m[key][1]:.4f})" if m.get(key) else ""

        print(f"run {r.run_dir}: best epoch {r.best_epoch}/{r.epochs_run}, validation macro AUROC "
              f"{m['macro_auroc']:.4f}{ci('macro_auroc_ci95')} over {len(m['labels_in_macro'])} findings, micro AUROC "
              f"{m['micro_auroc']:.4f}{ci('micro_auroc_ci95')}; {r.seconds:.0f} s")
        for lab, lm in m["per_label"].items():
            auc = "-" if lm["auroc"] is None else f"{lm['auroc']:.3f}"
            print(f"  {lab}: AUROC {auc} ({lm['positives']} positive), threshold {r.operating_point[lab]['threshold']:.3f} "
                  f"({r.operating_point[lab]['criterion']})")
    elif r.val_metrics:
        m = r.val_metrics
        ci = f" (95% CI {m['auroc_ci95'][0]:.4f}-{m['auroc_ci95'][1]:.4f})" if m.get("auroc_ci95") else ""
        print(f"run {r.run_dir}: best epoch {r.best_epoch}/{r.epochs_run}, validation AUROC {m['auroc']:.4f}"
              f"{ci}, accuracy {m['accuracy']:.4f}, "
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
    from training.multilabel_tasks import evaluate_multilabel, is_multilabel

    if is_multilabel(args.checkpoint):
        return evaluate_multilabel(args)
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
    from training.export import SHIFT_SEVERITY, ExportOptions, export_package
    from training.multilabel_tasks import is_multilabel

    if is_multilabel(args.checkpoint):
        from training.multilabel_export import export_multilabel_package

        if args.transfer or args.previous or args.operating_point:
            raise ValueError("--transfer, --previous and --operating-point are for multiclass runs (a multilabel "
                             "run's operating points are chosen by fit --operating-point)")
        out, parity = export_multilabel_package(
            args.checkpoint, args.out, args.name, args.version, args.description, args.intended_use,
            args.limitations, args.comparisons, args.dataset, args.citation, args.data_licence, args.license,
            args.reproduce or "", args.parity_images)
        print(f"wrote {out} (parity on {parity.n_images} images: prob {parity.prob_max_abs:.1e}, "
              f"CAM {parity.cam_max_rel:.1e}, MONAI CAM {parity.monai_max_rel:.1e})")
        return 0

    options = ExportOptions(
        name=args.name, version=args.version, description=args.description, intended_use=args.intended_use,
        limitations=args.limitations, comparisons=args.comparisons, dataset=args.dataset, citation=args.citation,
        data_licence=args.data_licence, license=args.license, command=args.reproduce or "",
        parity_images=args.parity_images, operating_point=args.operating_point, transfer=args.transfer,
        op_split=args.op_split, temperature_scaling=not args.no_temperature,
        shift_severity=args.shift_severity if args.shift_severity is not None else SHIFT_SEVERITY,
        shift_copies=args.shift_copies, previous=args.previous)
    out, parity = export_package(args.checkpoint, args.out, options)
    print(f"wrote {out} (parity on {parity.n_images} images: prob {parity.prob_max_abs:.1e}, "
          f"CAM {parity.cam_max_rel:.1e}, MONAI CAM {parity.monai_max_rel:.1e})")
    return 0


def _run_baseline(args: argparse.Namespace) -> int:
    if args.task == "multilabel":
        from training.multilabel_tasks import baseline_multilabel

        for r in baseline_multilabel(args):
            m = r["metrics"]
            print(f"{r['name']}: macro AUROC {m['auroc']:.4f} (95% CI {m['auroc_ci95'][0]:.4f}-"
                  f"{m['auroc_ci95'][1]:.4f}), micro AUROC {r['micro_auroc']:.4f}")
        return 0
    from training.baselines import run_baselines

    rows = run_baselines(args)
    for r in rows:
        m = r["metrics"]
        print(f"{r['name']}: AUROC {m['auroc']:.4f}, accuracy {m['accuracy']:.4f}, sensitivity "
              f"{m['sensitivity']:.4f}, specificity {m['specificity']:.4f}")
    return 0


def _run_cv(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import numpy as np

    base = _config(args, argv)
    fit, key = _fit_function(base)
    rows = []
    for k in range(args.folds):
        cfg = dataclasses.replace(base, out=str(Path(args.out) / f"fold{k + 1}"), fold=k, folds=args.folds)
        r = fit(cfg)
        keys = (("macro_auroc", "micro_auroc") if key == "macro_auroc"
                else ("auroc", "accuracy", "sensitivity", "specificity"))
        rows.append({"fold": k + 1, **{name: r.val_metrics.get(name) for name in keys}})
        rows[-1]["auroc"] = r.val_metrics.get(key)
        print(f"fold {k + 1}/{args.folds}: AUROC {rows[-1]['auroc']:.4f}")
    auc = np.array([r["auroc"] for r in rows], dtype=float)
    summary = {"folds": rows, "auroc_mean": float(auc.mean()), "auroc_sd": float(auc.std(ddof=1)) if len(auc) > 1 else 0.0}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "cv.json").write_text(json.dumps(summary, indent=2))
    print(f"{args.folds}-fold patient-grouped CV: {'macro ' if key == 'macro_auroc' else ''}AUROC {summary['auroc_mean']:.4f} +- {summary['auroc_sd']:.4f}")
    return 0


def _run_search(args: argparse.Namespace, argv: Sequence[str]) -> int:
    import csv

    from training.engine import FitConfig

    base = _config(args, argv)
    fit, key = _fit_function(base)
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
        rows.append({"trial": i + 1, **setting, "val_auroc": r.val_metrics[key], "best_epoch": r.best_epoch})
        print(f"trial {i + 1}: {setting} -> validation {key.replace('_', ' ').upper()} {r.val_metrics[key]:.4f}")
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "search.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    best = max(rows, key=lambda r: r["val_auroc"])
    (out / "best.json").write_text(json.dumps(best, indent=2))
    print(f"best: {best}")
    return 0


def _preset_in(argv: Sequence[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--preset" and i + 1 < len(argv):
            return argv[i + 1] if argv[i + 1] in PRESET_NAMES else None
        if a.startswith("--preset="):
            return a.split("=", 1)[1] if a.split("=", 1)[1] in PRESET_NAMES else None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``medviewer-train`` and ``python -m training``; returns the exit status.

    Without PyTorch (the ``train`` extra), prints :data:`INSTALL_HINT` on one line and returns 1 for
    everything but ``prepare``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if importlib.util.find_spec("torch") is None and (not argv or argv[0] != "prepare"):
        print(INSTALL_HINT, file=sys.stderr)
        return 1
    parser = build_parser(_preset_in(argv))
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
