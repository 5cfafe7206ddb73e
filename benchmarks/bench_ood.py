"""How well the default model's intended-use gate separates what it may speak about from what it may not.

Prints, for the shipped ``pneumonia-cxr`` package, measured by the app's own code path (onnxruntime,
:class:`medviewer.inference.ood.OODDetector`, pixels only -- no header is used):

* the in-distribution false-rejection rate on the validation split (held-out patients of the card's
  split) and on a shifted copy of it (exposure, gamma, contrast, blur, noise, rotation, zoom);
* the detection rate (called out of distribution) and the AUROC of the OOD score against validation on
  real out-of-scope images: pydicom's and pydicom-data's CT, MR, US, NM, RG1 (adult chest), RG3
  (extremity), colour and secondary-capture images; slices of the shared CT; and transformations of the
  validation chest films that a chest model must not accept (90 degree rotations, inverted grey scale,
  lateral-like central crops, upside down);
* side by side, the same for the energy score (Liu et al. 2020) computed from the logits, the usual
  baseline.

Usage: ``python benchmarks/bench_ood.py [--data ../shared/data/kermany-cxr-224]``
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
from sklearn.metrics import roc_auc_score

warnings.filterwarnings("ignore")
ROOT = Path(__file__).resolve().parents[1]
REAL_OOD = ["RG1_UNCR.dcm", "RG3_UNCR.dcm", "MR2_UNCR.dcm", "693_UNCR.dcm", "CT_small.dcm", "MR_small.dcm",
            "US1_UNCR.dcm", "OBXXXX1A.dcm", "examples_overlay.dcm", "examples_palette.dcm", "examples_rgb_color.dcm",
            "JPEG2000.dcm", "SC_rgb.dcm", "image_dfl.dcm", "mlut_18.dcm", "vlut_04.dcm",
            "MR-SIEMENS-DICOM-WithOverlays.dcm", "eCT_Supplemental.dcm", "emri_small.dcm",
            "J2K_pixelrep_mismatch.dcm", "bad_sequence.dcm", "explicit_VR-UN.dcm", "color-px.dcm",
            "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_jpeg_no_color_transform.dcm", "GDCMJ2K_TextGBR.dcm"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "kermany-cxr-224")
    p.add_argument("--ct", type=Path, default=ROOT.parent / "shared" / "data" / "ct-pancreas-cbct-seg-001")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"bench_ood: {args.data} not found (the Kermany train split; see README 'Training')", file=sys.stderr)
        return 1
    from pydicom.data import get_testdata_file

    from medviewer.imaging import display_image
    from medviewer.inference import default_model
    from medviewer.inference.session import Session
    from medviewer.io import read_instance
    from training.data import discover, read_display_u8, split_by_patient
    from training.ood import shift_image

    pkg = default_model()
    card, det = pkg.card, pkg.ood
    if det is None:
        print(f"bench_ood: {card.name} {card.version} has no OOD detector (card schema {card.schema_version})")
        return 1
    sess = Session(pkg, "cpu")

    def scores(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        ood, energy = [], []
        for i in range(0, len(images), 32):
            for pr in sess.predict(images[i : i + 32], regions="none"):
                ood.append(pr.ood_score)
                energy.append(pr.energy)
        return np.array(ood), np.array(energy)

    index = discover(args.data)
    pool = index.subset("train")
    val = pool.take(split_by_patient(pool, 0.15, 0.0, card.training.seed)["val"])
    val_imgs = [read_display_u8(s.path) for s in val.samples]
    gray = [im[..., 0] if im.ndim == 3 else im for im in val_imgs]
    v_ood, v_en = scores(val_imgs)
    rng = np.random.default_rng(1)  # not the calibration seed: a fresh shift
    s_ood, s_en = scores([shift_image(im, rng) for im in val_imgs])
    thr = det.threshold
    e_thr = float(np.quantile(v_en, 0.99))  # energy baseline at the same 1 % validation false rejection
    sets: dict[str, list[np.ndarray]] = {}
    real = []
    for name in REAL_OOD:
        try:
            real.append(display_image(read_instance(get_testdata_file(name, download=False))))
        except Exception:
            continue
    sets[f"pydicom/pydicom-data images, not paediatric chest ({len(real)})"] = real
    sets["RG1_UNCR.dcm (adult chest PA)"] = [display_image(read_instance(get_testdata_file("RG1_UNCR.dcm")))]
    if args.ct.is_dir():
        sets["shared CT slices (every 4th of 134)"] = [display_image(read_instance(q))
                                                       for q in sorted(args.ct.glob("*.dcm"))[::4]]
    sets["validation films rotated 90 degrees"] = [np.ascontiguousarray(np.rot90(g)) for g in gray]
    sets["validation films, inverted grey scale"] = [255 - g for g in gray]
    sets["validation films, central half (lateral-like crop)"] = [
        cv2.resize(g[:, g.shape[1] // 4 : 3 * g.shape[1] // 4], (g.shape[1], g.shape[0])) for g in gray]
    sets["validation films upside down"] = [np.ascontiguousarray(g[::-1]) for g in gray]

    print(f"{card.name} {card.version}: OOD threshold {thr:.3f} ({card.ood.calibration})")
    print(f"in distribution, called out of scope: validation {np.mean(v_ood > thr):.1%} (n {len(v_ood)}), "
          f"shifted validation {np.mean(s_ood > thr):.1%}; energy baseline: {np.mean(v_en > e_thr):.1%}, "
          f"{np.mean(s_en > e_thr):.1%}")
    print(f"{'out-of-scope set':58s} {'n':>5s} {'detected':>9s} {'AUROC':>7s} | {'energy det.':>11s} {'AUROC':>7s} | ratio")
    for name, imgs in sets.items():
        if not imgs:
            continue
        o, e = scores(imgs)
        y = np.r_[np.zeros(len(v_ood)), np.ones(len(o))]
        auc = roc_auc_score(y, np.r_[v_ood, o]) if len(o) else float("nan")
        auc_e = roc_auc_score(y, np.r_[v_en, e]) if len(e) else float("nan")
        det_o, det_e = float(np.mean(o > thr)), float(np.mean(e > e_thr))
        ratio = f"{det_o / det_e:.1f}x" if det_e > 0 else "inf"
        print(f"{name:58s} {len(o):5d} {det_o:9.1%} {auc:7.3f} | {det_e:11.1%} {auc_e:7.3f} | {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
