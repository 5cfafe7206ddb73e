"""Whether the default model stays silent on films it was not made for -- from the pixels alone.

Runs the shipped ``pneumonia-cxr`` package through the app's own code path (display pipeline,
:class:`medviewer.inference.session.Session` with its applicability gate, :func:`medviewer.workstation.
intended_use.assess` with **no header**: every image is judged as a PNG without tags would be) and prints,
one row per source:

* in-distribution false rejections: the card's validation patients (held out from the classifier and the
  gate), their acquisition-shifted copies (severity 1.0 and 1.3, 3 copies each), and the shortcut checks
  (degraded to 64 px and back);
* detection (called out of scope) on the held-out patients of every real out-of-scope source the gate saw
  patients of in training (Hannover adult chest, NIH adult chest, knees), on sources it never saw
  (pydicom-data's RG1 adult chest and RG3 extremity, pydicom's CT/MR/US/NM files held out of training), and
  on transformations of the validation films (rotated, inverted, upside down, cropped like the knees);
* side by side, the same rate for 2.0.0's pixel rule alone (the Mahalanobis score at its threshold), the
  baseline this gate replaces: ``ratio`` = detection now / detection then (false rejections: then / now);
* the leave-one-source-out estimates stored in the card (each adult source and the knees held out of
  training in turn; see ``python -m training.gate loso``) -- what transfer to unseen hospitals looks like.

95 % intervals are percentile bootstraps over patients (2,000 resamples).

Usage: ``python benchmarks/bench_ood.py [--data ../shared/data] [--markdown]``
"""

from __future__ import annotations

import argparse
import csv
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
#: pneumonia-cxr 2.0.0's pixel rule: its Mahalanobis threshold (ood.threshold of its card, the same statistics)
BASELINE_OOD_THRESHOLD = 3.0948154346141425
UNSEEN_PYDICOM = [("RG1_UNCR.dcm", "adult chest PA (pydicom-data, unseen source)"),
                  ("RG3_UNCR.dcm", "extremity radiograph (pydicom-data, unseen body part)")]


def _bootstrap(hits: np.ndarray, groups: list[str], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    groups_a = np.asarray(groups)
    uniq, inv = np.unique(groups_a, return_inverse=True)
    sums = np.bincount(inv, weights=hits.astype(float), minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(float)
    draws = np.random.default_rng(seed).integers(0, len(uniq), (n_boot, len(uniq)))
    rates = sums[draws].sum(1) / np.maximum(counts[draws].sum(1), 1)
    return float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    args = p.parse_args(argv)
    if not (args.data / "kermany-cxr-224").is_dir():
        print(f"bench_ood: {args.data}/kermany-cxr-224 not found (the shared data folder)", file=sys.stderr)
        return 1
    from pydicom.data import get_testdata_file

    from medviewer.imaging import display_image
    from medviewer.inference import default_model
    from medviewer.inference.session import Session
    from medviewer.io import read_instance
    from medviewer.workstation.intended_use import HeaderFacts, Status, assess
    from training.data import discover, kermany_patient_id, read_display_u8, split_by_patient
    from training.evaluation import shifted_copies
    from training.gate_data import PYDICOM_NON_RADIOGRAPHS, _patient_split

    pkg = default_model()
    card = pkg.card
    if card.gate is None or pkg.ood is None:
        print(f"bench_ood: {card.name} {card.version} has no applicability gate (card schema {card.schema_version})")
        return 1
    sess = Session(pkg, "cpu")
    ood_thr = pkg.ood.threshold
    baseline_thr = BASELINE_OOD_THRESHOLD

    def judge(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(out of scope now, out of scope by 2.0.0's Mahalanobis rule alone): bool (N,) each."""
        now, then = [], []
        for i in range(0, len(images), 32):
            for im, pr in zip(images[i:i + 32], sess.predict(images[i:i + 32], regions="none"), strict=True):
                facts = HeaderFacts(photometric="MONOCHROME2" if im.ndim == 2 else None)
                a = assess(card, facts, pr.ood_score, gate=pr.gate)
                now.append(a.status == Status.OUT_OF_SCOPE)
                then.append(pr.ood_score is not None and (not np.isfinite(pr.ood_score) or pr.ood_score > baseline_thr))
        return np.asarray(now), np.asarray(then)

    rows: list[tuple[str, int, int, str, float, tuple[float, float], float]] = []

    def add(name: str, images: list[np.ndarray], groups: list[str], in_distribution: bool) -> None:
        if not images:
            return
        now, then = judge(images)
        hits_now = ~now if in_distribution else now
        hits_then = ~then if in_distribution else then
        measure = "in scope" if in_distribution else "out of scope"
        rows.append((name, len(images), len(set(groups)), measure, float(hits_now.mean()),
                     _bootstrap(hits_now, groups), float(hits_then.mean())))
        print(f"  measured {name}", file=sys.stderr)

    kidx = discover(args.data / "kermany-cxr-224" / "train", kermany_patient_id)
    val = kidx.take(split_by_patient(kidx, 0.15, 0.0, card.training.seed)["val"])
    val_imgs = [read_display_u8(s.path) for s in val.samples]
    val_grey = [im if im.ndim == 2 else im[..., 0] for im in val_imgs]
    vg = [s.patient_id for s in val.samples]
    add("paediatric validation (held-out patients)", val_imgs, vg, True)
    for sev in (1.0, 1.3):
        add(f"paediatric validation, 3 shifted copies (severity {sev})",
            shifted_copies(val_grey, copies=3, seed=5, severity=sev), [g for g in vg for _ in range(3)], True)
    add("paediatric validation degraded to 64 px and back",
        [cv2.resize(cv2.resize(g, (64, 64), interpolation=cv2.INTER_AREA), g.shape[::-1], interpolation=cv2.INTER_LINEAR)
         for g in val_grey], vg, True)

    hdir = args.data / "adult-cxr-hannover"
    with open(hdir / "data.csv", newline="", encoding="utf-8") as f:
        hrows = list(csv.DictReader(f))
    hsplit = _patient_split([r["patient_id"] for r in hrows], 0.25, 0)
    hval = [r for r, s in zip(hrows, hsplit, strict=True) if s == "val"]
    add("adult chest, Hannover (held-out patients)", [read_display_u8(hdir / "png" / f"{r['image_id']}.png") for r in hval],
        [r["patient_id"] for r in hval], False)
    ndir = args.data / "nih-cxr14-64"
    with open(ndir / "labels.csv", newline="", encoding="utf-8") as f:
        nrows = list(csv.DictReader(f))
    nsplit = _patient_split([r["patient_id"] for r in nrows], 0.25, 0)
    nval = [r for r, s in zip(nrows, nsplit, strict=True) if s == "val"]
    add("adult chest, NIH ChestX-ray14 64 px (held-out patients)", [read_display_u8(ndir / r["path"]) for r in nval],
        [r["patient_id"] for r in nval], False)
    knees = sorted((args.data / "knee-xray-224" / "train").glob("*/*.png"))
    kpat = [q.stem.rstrip("LR") for q in knees]
    ksplit = _patient_split(kpat, 0.25, 0)
    kval = [(q, g) for q, g, s in zip(knees, kpat, ksplit, strict=True) if s == "val"]
    add("knee radiographs (held-out patients)", [read_display_u8(q) for q, _ in kval], [g for _, g in kval], False)

    for name, what in UNSEEN_PYDICOM:
        try:
            add(f"{name}: {what}", [display_image(read_instance(get_testdata_file(name, download=False)))], [name], False)
        except Exception:  # noqa: BLE001 - pydicom-data not installed
            continue
    held = [n for n, s in zip(PYDICOM_NON_RADIOGRAPHS, _patient_split(PYDICOM_NON_RADIOGRAPHS, 0.34, 0), strict=True)
            if s == "val"]
    imgs, names = [], []
    for name in held:
        try:
            imgs.append(display_image(read_instance(get_testdata_file(name, download=False))))
            names.append(name)
        except Exception:  # noqa: BLE001 - a file this pydicom cannot decode
            continue
    add("pydicom CT/MR/US/colour files held out of training", imgs, names, False)
    add("validation films rotated 90 degrees", [np.ascontiguousarray(np.rot90(g)) for g in val_grey], vg, False)
    add("validation films, inverted grey scale", [255 - g for g in val_grey], vg, False)
    add("validation films upside down", [np.ascontiguousarray(g[::-1]) for g in val_grey], vg, False)
    rng = np.random.default_rng(0)
    crops = []
    for g in val_grey:
        s = int(min(g.shape) * 0.45)
        y = int(np.clip(rng.uniform(0.25, 0.75) * g.shape[0] - s / 2, 0, g.shape[0] - s))
        x = int(np.clip(rng.uniform(0.25, 0.75) * g.shape[1] - s / 2, 0, g.shape[1] - s))
        crops.append(np.ascontiguousarray(g[y:y + s, x:x + s]))
    add("validation films cropped like the knees (45 % square crop)", crops, vg, False)

    gate = card.gate
    print(f"{card.name} {card.version}: gate {gate.file} {gate.version}, P({gate.in_scope_class}) >= "
          f"{gate.threshold:.3f}; Mahalanobis OOD score <= {ood_thr:.3f}; pixels only (no header)")
    if args.markdown:
        print("| set | images | patients | measure | now (95 % CI) | 2.0.0 pixel rule | ratio |")
        print("|---|---:|---:|---|---|---:|---:|")
    else:
        print(f"{'set':60s} {'n':>5s} {'pat.':>5s}  {'measure':12s} {'now':>7s} {'95 % CI':>13s} {'2.0.0':>7s} {'ratio':>6s}")
    for name, n, pats, measure, rate, (lo, hi), then in rows:
        if measure == "in scope":  # false rejections: lower is better; ratio then/now
            ratio = (1 - then) / max(1 - rate, 1e-9)
        else:
            ratio = rate / then if then > 0 else float("inf")
        ci = f"{100 * lo:.1f}-{100 * hi:.1f}%"
        if args.markdown:
            print(f"| {name} | {n} | {pats} | {measure} | {100 * rate:.1f} % ({ci}) | {100 * then:.1f} % | {ratio:.2f}x |")
        else:
            print(f"{name:60s} {n:5d} {pats:5d}  {measure:12s} {100 * rate:6.1f}% {ci:>13s} {100 * then:6.1f}% {ratio:5.2f}x")
    loso = [v for v in gate.validation if str(v.get("protocol", "")).startswith("leave-one-source-out")]
    if loso:
        print("\nleave-one-source-out (from the card; the gate retrained without the named source, then tested on all "
              "of it):")
        for v in loso:
            print(f"  {v['set']}: {100 * float(v['rate']):.1f} % {v['measure']} (n {int(v['n'])}, {int(v['patients'])} "
                  f"patients; 95 % CI {100 * float(v['ci_lo']):.1f}-{100 * float(v['ci_hi']):.1f} %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
