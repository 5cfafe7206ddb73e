"""Export a multi-label run (:func:`training.multilabel.fit_multilabel`) as a MedViewer model package.

The graph is the same as for a single-label model (:func:`training.export.export_onnx`): ``logits``
``(N, K)``, one class activation map per finding ``cam`` ``(N, K, h, w)`` and pooled ``features``; the
per-finding temperatures are already folded into the classifier by ``fit``. The card (schema 2) has task
``multilabel`` (the app applies one sigmoid per finding), no negative label, one operating point per
finding (each with its own criterion), a :class:`~medviewer.inference.card.Metrics` row per finding
(``split`` names the finding) after the macro and micro rows, and the machine-readable intended use. The
README holds the per-finding table; for ChestX-ray14 findings it sets CheXNet's published AUROCs beside
ours (:data:`CHEXNET_AUROC`).

Example
-------
>>> export_multilabel_package("runs/nih64/best.pt", "packages/nih-cxr14-64", name="nih-cxr14-64",
...                           applicability=ADULT_CHEST)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medviewer.errors import ModelPackageError
from medviewer.inference.card import (
    Applicability,
    ComparisonRow,
    InputSpec,
    Metrics,
    ModelCard,
    OperatingPoint,
    OutputSpec,
    Preprocessing,
    Provenance,
    Task,
    sha256_file,
)
from training.export import (
    ParityReport,
    _fmt,
    _split_rows,
    _validation_images,
    check_parity,
    export_onnx,
    finalize_files,
    fit_intended_use,
    render_intended_use,
)

__all__ = ["ADULT_CHEST", "CHEXNET_AUROC", "NIH_CITATION", "export_multilabel_package", "render_multilabel_readme"]

#: intended use of an adult chest model: frontal (PA/AP) chest radiographs of patients aged 18 or more
ADULT_CHEST = Applicability(modalities=["CR", "DX"], body_parts=["CHEST"], views=["AP", "PA"], age_years=(18, 150),
                            photometric=["MONOCHROME1", "MONOCHROME2"])

#: CheXNet's per-finding AUROC on its ChestX-ray14 test split (Rajpurkar et al. 2017, arXiv:1711.05225,
#: Table 1): DenseNet-121 at 224x224 from ImageNet weights, trained on the full data set (112,120 films of
#: 30,805 patients, patient-level split), images from the full-resolution (1024 px) originals.
CHEXNET_AUROC = {
    "Atelectasis": 0.8094, "Cardiomegaly": 0.9248, "Effusion": 0.8638, "Infiltration": 0.7345, "Mass": 0.8676,
    "Nodule": 0.7802, "Pneumonia": 0.7680, "Pneumothorax": 0.8887, "Consolidation": 0.7901, "Edema": 0.8878,
    "Emphysema": 0.9371, "Fibrosis": 0.8047, "Pleural_Thickening": 0.8062, "Hernia": 0.9164,
}
NIH_CITATION = ("Wang X, Peng Y, Lu L, Lu Z, Bagheri M, Summers RM. ChestX-ray8: Hospital-scale Chest X-ray Database "
                "and Benchmarks on Weakly-Supervised Classification and Localization of Common Thorax Diseases. "
                "CVPR 2017:3462-3471. NIH Clinical Center.")


def _metrics_row(m: dict, split: str) -> Metrics:
    keys = set(Metrics.model_fields) - {"split"}
    return Metrics(split=split, **{k: v for k, v in m.items() if k in keys})


def render_multilabel_readme(card: ModelCard, mj: dict, parity: ParityReport, plots: list[str], note: str = "") -> str:
    """The human-readable card of a multi-label package: intended use, per-finding table, provenance."""
    v = mj["validation"]
    temps = mj.get("temperature", {})
    show_chexnet = any(lab in CHEXNET_AUROC for lab in card.labels)
    lines = [f"# {card.name} {card.version}", "", card.description, "", "## Intended use", "", card.intended_use, "",
             "## Limitations", "", card.limitations, "", "## Model", "",
             f"- Architecture: {card.training.architecture}",
             f"- Task: multilabel, one sigmoid per finding; {len(card.labels)} findings: {', '.join(card.labels)}",
             f"- Input `{card.input.name}`: ({card.input.channels}, {card.input.height}, {card.input.width}) float32 "
             f"from the viewer's 8-bit display image, {card.preprocessing.resize.value} resize, "
             f"x = (u8/255 - {card.preprocessing.mean}) / {card.preprocessing.std}",
             f"- Outputs: `{card.outputs.logits}` (N, {len(card.labels)}), `{card.outputs.cam}` (N, {len(card.labels)}, h, w): "
             "one class activation map per finding (Zhou et al. 2016), computed in the graph",
             f"- Calibration: a temperature per finding folded into the classifier ({temps.get('rule', '')}; "
             f"shared temperature {temps.get('shared', 1.0):.3f}).",
             f"- ONNX opset {card.onnx_opset}; SHA-256 `{card.sha256}`", ""]
    lines += render_intended_use(card)
    lines += ["## Per-finding results (validation)", "",
              f"{mj['split']}: {v['n']} images of {v['patients']} patients. Each finding has its own operating "
              "point, chosen on this split with the criterion shown (so threshold metrics are optimistic); "
              f"95 % intervals: {v['ci_method']}.", ""]
    head = "| finding | positives | AUROC (95 % CI) | threshold (criterion) | sensitivity | specificity | T |"
    sep = "|---|---|---|---|---|---|---|"
    if show_chexnet:
        head += " CheXNet AUROC |"
        sep += "---|"
    lines += [head, sep]
    for lab in card.labels:
        m = v["per_label"][lab]
        op = card.operating_point(lab)
        ci = f" ({m['auroc_ci95'][0]:.3f}-{m['auroc_ci95'][1]:.3f})" if m.get("auroc_ci95") else ""
        row = (f"| {lab} | {m['positives']} / {m['n']} | {_fmt(m['auroc'], False)}{ci} | "
               f"{op.threshold:.3f} ({op.criterion}) | {_fmt(m.get('sensitivity'))} | {_fmt(m.get('specificity'))} | "
               f"{m.get('temperature', 1.0):.2f} |")
        if show_chexnet:
            row += f" {CHEXNET_AUROC[lab]:.3f} |" if lab in CHEXNET_AUROC else " - |"
        lines.append(row)

    def ci(key: str) -> str:
        c = v.get(key + "_ci95")
        return f" ({c[0]:.3f}-{c[1]:.3f})" if c else ""

    lines += ["", f"Macro AUROC (mean over the {len(v['labels_in_macro'])} findings with positive and negative "
                  f"validation images): **{_fmt(v['macro_auroc'], False)}**{ci('macro_auroc')}; micro AUROC (all "
                  f"image-finding pairs pooled): {_fmt(v['micro_auroc'], False)}{ci('micro_auroc')}.", ""]
    if show_chexnet:
        mean = float(np.mean(list(CHEXNET_AUROC.values())))
        lines += [f"CheXNet's column is its published AUROC per finding (Rajpurkar et al. 2017, Table 1; mean "
                  f"{mean:.3f}): DenseNet-121 from ImageNet weights, trained and tested on patient-level splits of all "
                  "112,120 ChestX-ray14 films, from the 1024 px originals resized to 224 px. A different scale of "
                  "problem: this table comes from a "
                  "handful of films per finding at the resolution of this package's input, so its intervals are "
                  "wide and a finding with few positives says little. The two columns are not a comparison of "
                  "methods.", ""]
    if card.comparisons:
        lines += ["## Baselines (same validation split)", ""]
        lines += [f"- {c.name}: macro AUROC {_fmt(c.metrics.auroc, False)}; {c.description}" for c in card.comparisons]
        lines += [""]
    if note:
        lines += [note, ""]
    lines += [f"Export parity on {parity.n_images} real validation images: max |p_onnx - p_torch| = "
              f"{parity.prob_max_abs:.2e} (sigmoid); max CAM difference {parity.cam_max_rel:.2e} of its range; "
              f"torch CAM vs monai.visualize.CAM {parity.monai_max_rel:.2e}.", ""]
    if plots:
        lines += ["## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    t = card.training
    lines += ["## Training data and provenance", "", f"- Data: {t.dataset}", f"- Licence of the data: {t.data_licence}",
              f"- Split: {t.split}", f"- Counts: {json.dumps(t.counts)}",
              f"- Epochs: {t.epochs}; seed {t.seed}; trained in {mj.get('seconds', 0) / 60:.1f} min on "
              f"{mj.get('device', 'cpu')} ({mj.get('loader', '')} images, {mj.get('train_images_per_s', 0)} images/s)",
              f"- Reproduce: `{t.command}`", "", "## Citation", "", t.citation, "",
              f"## Licence\n\n{card.license}. Created {card.created} by {card.producer.name} {card.producer.version}.",
              ""]
    return "\n".join(lines)


def export_multilabel_package(checkpoint: str | Path, out_dir: str | Path, name: str, version: str = "1.0.0",
                              description: str | None = None, intended_use: str | None = None,
                              limitations: str | None = None, comparisons: str | Path | None = None,
                              dataset: str | None = None, citation: str | None = None,
                              data_licence: str | None = None, license: str = "CC-BY-4.0", command: str = "",
                              parity_images: int = 16, applicability: Applicability | None = None,
                              ood: bool = True, authors: list[str] | None = None) -> tuple[Path, ParityReport]:
    """Write a validated multi-label package from a ``best.pt`` of :func:`training.multilabel.fit_multilabel`.

    Parameters
    ----------
    checkpoint
        ``best.pt``; its folder holds ``metrics.json`` and ``split.csv`` (and ``plots/``).
    applicability
        The intended use; default :data:`ADULT_CHEST` when the data path names ChestX-ray14 (``nih``,
        ``chestx-ray14``, ``cxr14``), else none.
    ood
        Fit the out-of-distribution detector on the training images (one mean: the training distribution)
        and calibrate it on the validation images (:func:`training.export.fit_intended_use`).

    Raises
    ------
    ModelPackageError
        The run is not a finished multi-label run, or export parity failed.
    """
    from training.engine import load_checkpoint_model

    checkpoint = Path(checkpoint)
    run_dir = checkpoint.parent
    out = Path(out_dir)
    model, ck = load_checkpoint_model(checkpoint, "cpu")
    mfile = run_dir / "metrics.json"
    if ck.get("task") != "multilabel" or "operating_points" not in ck or not mfile.is_file():
        raise ModelPackageError(run_dir, "not a finished multi-label run (best.pt with operating points, metrics.json)")
    mj = json.loads(mfile.read_text())
    cfg = ck["config"]
    inp = InputSpec.model_validate(ck["input"])
    spec = Preprocessing.model_validate(ck["preprocessing"])
    labels: list[str] = list(ck["classes"])
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, out / "model.onnx", inp)
    parity = check_parity(model, onnx_path, _validation_images(run_dir, spec, inp, parity_images), spec,
                          task="multilabel")
    if not parity.ok:
        raise ModelPackageError(out, f"export parity failed: {parity}")
    import onnx

    opset = next(o.version for o in onnx.load(str(onnx_path), load_external_data=False).opset_import
                 if o.domain in ("", "ai.onnx"))
    v = mj["validation"]
    ops = [OperatingPoint(label=lab, threshold=o["threshold"], criterion=o["criterion"], split=mj["split"],
                          sensitivity=o["sensitivity"], specificity=o["specificity"])
           for lab, o in mj["operating_points"].items()]
    metrics = [Metrics(split=f"{mj['split']}: macro average over {len(v['labels_in_macro'])} findings", n=v["n"],
                       auroc=v["macro_auroc"], auroc_ci95=v["macro_auroc_ci95"], ci_method=v["ci_method"]),
               Metrics(split=f"{mj['split']}: micro average (all image-finding pairs)", n=v["n"],
                       auroc=v["micro_auroc"], auroc_ci95=v["micro_auroc_ci95"], ci_method=v["ci_method"])]
    metrics += [_metrics_row(v["per_label"][lab], f"{mj['split']}: {lab} ({v['per_label'][lab]['positives']} "
                                                  "positive)") for lab in labels]
    comp_rows: list[ComparisonRow] = []
    comp_file = Path(comparisons) if comparisons else run_dir / "baselines.json"
    if comp_file.is_file():
        for r in json.loads(comp_file.read_text()).get("rows", []):
            comp_rows.append(ComparisonRow(name=r["name"], description=r.get("description", ""),
                                           metrics=Metrics.model_validate(r["metrics"])))
    data = str(cfg["data"]).lower()
    is_nih = any(s in data for s in ("nih", "chestx-ray14", "cxr14"))
    ood_spec = None
    if ood:
        rows = _split_rows(run_dir)
        tr = [Path(r["path"]) for r in rows.get("train", []) if Path(r["path"]).is_file()]
        va = [Path(r["path"]) for r in rows.get("val", []) if Path(r["path"]).is_file()]
        ood_spec, arrays = fit_intended_use(onnx_path, spec, inp, model.ood_block_sizes(inp.channels, inp.height,
                                                                                        inp.width),
                                            tr, np.zeros(len(tr), np.int64), va, mj["split"], int(cfg["seed"]))
        from training.ood import save_ood

        save_ood(arrays, out / ood_spec.file)
    counts = {f"{part}/{k}": int(n) for part, d in mj["counts"].items() for k, n in d.items()}
    arch = (f"{cfg['model']} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters), input "
            f"{inp.height}x{inp.width}")
    card = ModelCard(
        name=name, version=version,
        description=description or (f"Scores {len(labels)} findings on frontal chest radiographs, one probability "
                                    "each, and shows where the evidence for each lies (class activation maps)."),
        intended_use=intended_use or ("Research and teaching on adult frontal chest radiographs. Not a medical "
                                      "device; not for diagnosis."),
        limitations=limitations or ("Labels mined from reports by NLP are noisy; the operating points were chosen "
                                    "on the validation split whose metrics are reported."),
        task=Task.MULTILABEL, labels=labels, negative_label=None, input=inp, preprocessing=spec,
        operating_points=ops, metrics=metrics, comparisons=comp_rows,
        training=Provenance(dataset=dataset or str(cfg["data"]),
                            citation=citation or (NIH_CITATION if is_nih else "unspecified"),
                            data_licence=data_licence or ("NIH: free use with citation of Wang et al. 2017"
                                                          if is_nih else "unspecified"),
                            split=mj["split"], counts=counts, epochs=int(mj.get("epochs_run", 0)),
                            seed=int(cfg["seed"]), command=command or mj.get("reproduce") or cfg.get("command", ""),
                            architecture=arch),
        authors=authors or ["MedViewer developers"], license=license, onnx_opset=int(opset),
        sha256=sha256_file(onnx_path), applicability=applicability or (ADULT_CHEST if is_nih else None),
        ood=ood_spec, outputs=OutputSpec(features="features"),
        files={f.relative_to(out).as_posix(): sha256_file(f) for f in (onnx_path, out / "ood.npz") if f.is_file()})
    plots: list[str] = []
    if (run_dir / "plots").is_dir():
        import shutil

        (out / "plots").mkdir(exist_ok=True)
        for p in sorted((run_dir / "plots").glob("*.png")):
            shutil.copy2(p, out / "plots" / p.name)
            plots.append(f"plots/{p.name}")
    (out / "README.md").write_text(render_multilabel_readme(card, mj, parity, plots), encoding="utf-8")
    finalize_files(out, card)
    return out, parity
