"""``medviewer models list [--json] | show NAME [--json] | validate PATH | import PATH [--force]``."""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]

_EPILOG = """examples:
  medviewer models list                          # '*' marks the default model
  medviewer models show pneumonia-cxr            # intended use, labels, operating points, metrics
  medviewer models show pneumonia-cxr --json     # the validated model.json
  medviewer models validate runs/export/my-model # card schema, SHA-256 of model.onnx, graph vs card
  medviewer models import runs/export/my-model   # validate, then copy into the user's model folder
  medviewer infer STUDY_FOLDER --model my-model  # then use it by name

Packages are found among MedViewer's built-in models (installed with it), in the user's data folder
(where 'import' copies them), and in the folders of MEDVIEWER_MODEL_PATH; the first package of a name
wins. '*' marks the default model (pneumonia-cxr), used when no --model is given.
Exit status: 0 ok, 1 invalid package or unknown model.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``models`` on the ``medviewer`` subcommand parser."""
    p = subparsers.add_parser("models", help="list, show, validate and import model packages",
                              description="Model packages (model.onnx + model.json card).", epilog=_EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="models_command", required=True)
    ls = sub.add_parser("list", help="installed packages (invalid ones are reported on stderr)")
    ls.add_argument("--json", action="store_true", help="machine-readable list")
    show = sub.add_parser("show", help="a package's card: intended use, labels, operating points, metrics")
    show.add_argument("name", metavar="NAME|PATH")
    show.add_argument("--json", action="store_true", help="print model.json as validated")
    val = sub.add_parser("validate", help="check a package: card schema, SHA-256, ONNX graph vs card")
    val.add_argument("path", metavar="PATH")
    imp = sub.add_parser("import", help="validate a package and copy it into the user's model folder")
    imp.add_argument("path", metavar="PATH")
    imp.add_argument("--force", action="store_true", help="replace an installed package of the same name")
    p.set_defaults(run=run)
    return p


def _summary(pkg, default_name: str) -> dict:
    c = pkg.card
    return {"name": c.name, "version": c.version, "source": pkg.source, "path": str(pkg.path),
            "task": c.task.value, "labels": list(c.labels), "input": [c.input.channels, c.input.height, c.input.width],
            "sha256": c.sha256, "default": c.name == default_name,
            "description": c.description}


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}"


def _intended_use_lines(pkg) -> list[str]:
    """Card schema 2: where the model applies and its out-of-distribution detector (schema 1: says so)."""
    c = pkg.card
    a, o = c.applicability, c.ood
    if a is None:
        out = ["applies to:   not stated (card schema 1): every header check is unknown"]
    else:
        ages = f"{a.age_years[0]:g}-{a.age_years[1]:g} y" if a.age_years else "any"
        out = [f"applies to:   modality {', '.join(a.modalities) or 'any'}; body part {', '.join(a.body_parts) or 'any'}; "
               f"view {', '.join(a.views) or 'any'}; age {ages}; photometric {', '.join(a.photometric) or 'any'}"]
    if o is None:
        out.append("OOD check:    none (no features output)")
    else:
        out.append(f"OOD check:    {o.method} on {c.outputs.features!r} (D={pkg.feature_dim}, {len(o.layers)} blocks), "
                   f"threshold {o.threshold:.3f}; false rejections: validation {_fmt(o.validation_false_rejection, True)}"
                   + (f", shifted validation {_fmt(o.shifted_false_rejection, True)}" if o.shifted_false_rejection
                      is not None else ""))
        for k, v in o.detection.items():
            out.append(f"              detected {_fmt(v, True)} of {k}")
    if c.files:
        out.append(f"files:        {len(c.files)} hashed (SHA-256), verified on load")
    return out


def _show(pkg) -> str:
    c = pkg.card
    t = c.training
    lines = [
        f"{c.name} {c.version}  [{pkg.source}] {pkg.path}",
        f"  {c.description}",
        f"intended use: {c.intended_use}",
        f"limitations:  {c.limitations}",
        f"task:         {c.task.value}; labels {', '.join(c.labels)}"
        + (f" (negative: {c.negative_label})" if c.negative_label else ""),
        f"input:        {c.input.name} {c.input.channels}x{c.input.height}x{c.input.width} {c.input.dtype}; "
        f"{c.preprocessing.resize.value} ({c.preprocessing.interpolation}), x*{c.preprocessing.scale:.6g}, "
        f"mean {c.preprocessing.mean}, std {c.preprocessing.std}",
        f"outputs:      logits {c.outputs.logits!r}, CAM {c.outputs.cam!r} {pkg.feature_shape[0]}x{pkg.feature_shape[1]}",
        "operating points:",
    ]
    lines[-1:-1] = _intended_use_lines(pkg)
    for op in c.operating_points:
        lines.append(f"  {op.label}: p >= {op.threshold:.4f} ({op.criterion}; on {op.split}: sensitivity "
                     f"{_fmt(op.sensitivity, True)}, specificity {_fmt(op.specificity, True)})")
    if not c.operating_points:
        lines.append("  none (multiclass: most probable label; multilabel: p >= 0.5)")
    if c.metrics:
        lines.append("metrics:")
        for m in c.metrics:
            ci = f" [{m.auroc_ci95[0]:.3f}, {m.auroc_ci95[1]:.3f}]" if m.auroc_ci95 else ""
            lines.append(f"  {m.split} (n={m.n}): AUROC {_fmt(m.auroc)}{ci}, accuracy {_fmt(m.accuracy, True)}, "
                         f"sensitivity {_fmt(m.sensitivity, True)}, specificity {_fmt(m.specificity, True)}")
    for row in c.comparisons:
        m = row.metrics
        lines.append(f"  baseline {row.name} ({m.split}, n={m.n}): AUROC {_fmt(m.auroc)}, "
                     f"accuracy {_fmt(m.accuracy, True)}")
    lines += [
        f"training:     {t.dataset} ({t.data_licence}); split {t.split}; epochs {t.epochs}; seed {t.seed}"
        + (f"; {t.architecture}" if t.architecture else ""),
        f"  citation:   {t.citation}",
        f"  command:    {t.command}",
        f"licence:      {c.license}; authors: {', '.join(c.authors) or '-'}; created {c.created}; "
        f"producer {c.producer.name} {c.producer.version}; opset {c.onnx_opset}",
        f"sha256:       {c.sha256}",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``medviewer models ...``; raises MedViewerError (exit 1) for invalid/unknown packages."""
    from medviewer.inference.package import ModelPackage
    from medviewer.inference.registry import (
        DEFAULT_MODEL_NAME,
        import_model,
        resolve_model,
        scan_models,
        search_dirs,
    )

    cmd = args.models_command
    if cmd == "list":
        found, bad = scan_models()
        if args.json:
            print(json.dumps({"models": [_summary(p, DEFAULT_MODEL_NAME) for p in found],
                              "invalid": [{"path": str(b.path), "source": b.source, "reason": b.reason}
                                          for b in bad]}, indent=2))
        else:
            if not found:
                where = ", ".join(str(d) for _, d in search_dirs())
                print(f"no valid model packages found (searched {where})")
            for p in found:
                mark = "*" if p.card.name == DEFAULT_MODEL_NAME else " "
                print(f"{mark} {p.card.name:<24} {p.card.version:<10} {p.source:<8} {p.card.task.value:<10} "
                      f"{', '.join(p.card.labels)}  {p.path}")
        for b in bad:
            print(f"medviewer: warning: invalid model package {b.path}: {b.reason}", file=sys.stderr)
        return 0
    if cmd == "show":
        pkg = resolve_model(args.name)
        print(pkg.card.model_dump_json(indent=2) if args.json else _show(pkg))
        return 0
    if cmd == "validate":
        pkg = ModelPackage.load(args.path)
        print(f"OK {pkg.card.name} {pkg.card.version}: card schema v{pkg.card.schema_version}, SHA-256 "
              f"{pkg.card.sha256[:12]}..., graph {pkg.card.input.name} "
              f"(N, {pkg.card.input.channels}, {pkg.card.input.height}, {pkg.card.input.width}) -> "
              f"{pkg.card.outputs.logits} (N, {len(pkg.card.labels)}), {pkg.card.outputs.cam} "
              f"(N, {len(pkg.card.labels)}, {pkg.feature_shape[0]}, {pkg.feature_shape[1]})")
        return 0
    if cmd == "import":
        pkg = import_model(args.path, overwrite=args.force)
        print(f"imported {pkg.card.name} {pkg.card.version} -> {pkg.path}")
        return 0
    raise AssertionError(cmd)  # argparse guarantees one of the above
