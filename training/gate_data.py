"""The data of the applicability gate: in-scope films and real out-of-scope images, split by patient and source.

The gate (:mod:`training.gate`) learns what an image *is* -- a paediatric frontal chest film, an adult chest
film, another radiograph, or not a radiograph at all -- from real images, what Hendrycks et al. (2019),
"Deep Anomaly Detection with Outlier Exposure" (ICLR), call outlier exposure. Its sources (each folder's
README in ``../shared/data`` says where the images come from):

========================  ==================  =====================================================
source                    gate class          images
========================  ==================  =====================================================
``kermany``               paediatric_chest    Kermany et al. (2018) official train split (1-5 y)
``hannover``              adult_chest         243 adult frontal chest films, 71 patients (CR/DX)
``nih``                   adult_chest         999 adult chest films at 64 px (NIH ChestX-ray14)
``knee``                  other_radiograph    787 knee radiographs (OAI), 224 px crops
``drr``                   other_radiograph    projections (AP and lateral) through the shared abdominal CT
``ct``                    not_radiograph      slices of the shared abdominal CT
``pydicom``               not_radiograph      pydicom's CT / MR / US / NM / colour test images
``synthetic``             not_radiograph      noise, gradients, shapes, text (generated, seeded)
========================  ==================  =====================================================

Every source with patients is split by patient (``patient_id``): nothing of a validation patient is seen in
training. The paediatric split reuses the default model's own validation patients
(:func:`training.data.split_by_patient`, 15 %, seed 0), so the gate's false rejections are measured on the
same held-out patients as the pneumonia model, and a further 10 % of the *training* patients is set aside
to calibrate the gate's threshold ("cal"), so the threshold is never chosen on the patients it is reported on.

Images are read through the app's display pipeline (:func:`training.data.read_display_u8`) and kept as
uint8 ``(CACHE, CACHE)`` squeezes (area interpolation), cached in one ``.npz`` per source.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from training.data import discover, kermany_patient_id, read_display_u8, split_by_patient

__all__ = ["GATE_CLASSES", "CACHE", "SourceImages", "load_sources", "synthetic_non_radiographs",
           "ct_slices_and_projections", "PYDICOM_NON_RADIOGRAPHS"]

#: the gate's classes, in output order; index 0 is the model's intended use
GATE_CLASSES = ["paediatric_chest", "adult_chest", "other_radiograph", "not_radiograph"]
#: side of the cached squeeze, px (the gate sees 64 px; the margin is for crops and rotations)
CACHE = 128

#: pydicom test files that are not projection radiographs (CT, MR, US, NM, colour, secondary capture)
PYDICOM_NON_RADIOGRAPHS = [
    "CT_small.dcm", "MR_small.dcm", "MR2_UNCR.dcm", "US1_UNCR.dcm", "OBXXXX1A.dcm", "emri_small.dcm",
    "examples_palette.dcm", "examples_rgb_color.dcm", "SC_rgb.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
    "eCT_Supplemental.dcm", "693_UNCR.dcm", "image_dfl.dcm", "color-px.dcm", "SC_jpeg_no_color_transform.dcm",
    "GDCMJ2K_TextGBR.dcm", "mlut_18.dcm", "vlut_04.dcm", "JPEG2000.dcm", "explicit_VR-UN.dcm",
    "examples_overlay.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"]


@dataclass
class SourceImages:
    """The cached images of one source with their gate class, patient and split.

    ``images`` uint8 ``(N, CACHE, CACHE)``; ``split[i]`` is ``"train"``, ``"cal"`` (threshold calibration,
    paediatric only) or ``"val"``; ``paths`` the files (or a generated name).
    """

    name: str
    gate_class: int
    images: np.ndarray
    patients: list[str]
    split: list[str]
    paths: list[str] = field(default_factory=list)

    def where(self, part: str) -> np.ndarray:
        """Indices of split ``part``: int64 ``(n,)``."""
        return np.asarray([i for i, s in enumerate(self.split) if s == part], np.int64)


def squeeze(image_u8: np.ndarray, size: int = CACHE) -> np.ndarray:
    """Grey uint8 ``(size, size)`` of a display image (``(H, W)`` or ``(H, W, 3)``), area interpolation --
    the gate's ``ResizeMode.SQUEEZE``."""
    img = image_u8 if image_u8.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image_u8[..., :3]), cv2.COLOR_RGB2GRAY)
    return cv2.resize(np.ascontiguousarray(img), (size, size), interpolation=cv2.INTER_AREA)


def _patient_split(patients: list[str], val_fraction: float, seed: int) -> list[str]:
    """``"val"`` for about ``val_fraction`` of the patients (seeded by patient id hash), ``"train"`` else."""
    out = []
    for p in patients:
        h = int(hashlib.sha256(f"{seed}|{p}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        out.append("val" if h < val_fraction else "train")
    return out


def _read_many(paths: list[Path]) -> np.ndarray:
    out = np.empty((len(paths), CACHE, CACHE), np.uint8)
    for i, p in enumerate(paths):
        out[i] = squeeze(read_display_u8(p))
    return out


def _cached(cache_dir: Path, key: str, build) -> np.ndarray:
    f = cache_dir / f"gate-{key}.npy"
    if f.is_file():
        return np.load(f)
    arr = build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(f, arr)
    return arr


def synthetic_non_radiographs(n: int, seed: int = 0) -> np.ndarray:
    """``n`` generated images that are no radiograph: uint8 ``(n, CACHE, CACHE)`` -- uniform and Gaussian
    noise, linear and radial gradients, random rectangles and ellipses, text, checkerboards, flat fields."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, CACHE, CACHE), np.uint8)
    yy, xx = np.mgrid[0:CACHE, 0:CACHE].astype(np.float32) / CACHE
    for i in range(n):
        kind = i % 7
        if kind == 0:
            img = rng.integers(0, 256, (CACHE, CACHE)).astype(np.float32)
            img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.1, 4)))
        elif kind == 1:
            a, b = rng.uniform(-1, 1, 2)
            img = 255 * np.clip((a * xx + b * yy - min(0, a) - min(0, b)) / (abs(a) + abs(b) + 1e-6), 0, 1)
        elif kind == 2:
            cx, cy = rng.uniform(0.2, 0.8, 2)
            img = 255 * np.clip(1 - np.hypot(xx - cx, yy - cy) * rng.uniform(1, 3), 0, 1)
        elif kind == 3:
            img = np.full((CACHE, CACHE), float(rng.uniform(0, 255)), np.float32)
            for _ in range(int(rng.integers(2, 12))):
                p1 = tuple(int(v) for v in rng.integers(0, CACHE, 2))
                p2 = tuple(int(v) for v in rng.integers(0, CACHE, 2))
                col = float(rng.uniform(0, 255))
                if rng.random() < 0.5:
                    cv2.rectangle(img, p1, p2, col, -1)
                else:
                    cv2.ellipse(img, p1, (int(rng.integers(4, 50)), int(rng.integers(4, 50))),
                                float(rng.uniform(0, 180)), 0, 360, col, -1)
        elif kind == 4:
            img = np.full((CACHE, CACHE), int(rng.choice([0, 255])), np.uint8)
            for _ in range(int(rng.integers(3, 10))):
                text = "".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "), int(rng.integers(3, 12))))
                cv2.putText(img, text, (int(rng.integers(0, 60)), int(rng.integers(10, CACHE))),
                            cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(0.3, 1.0)), 255 - int(img[0, 0]), 1)
        elif kind == 5:
            k = int(rng.integers(2, 16))
            img = 255.0 * (((xx * k).astype(int) + (yy * k).astype(int)) % 2)
        else:
            img = np.full((CACHE, CACHE), float(rng.uniform(0, 255)), np.float32)
            img += rng.normal(0, rng.uniform(0, 20), img.shape)
        out[i] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def ct_slices_and_projections(ct_dir: Path, every: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Slices (every ``every``-th, through the app's display pipeline with the file's window) and
    projections of a CT series: uint8 ``(n, CACHE, CACHE)`` each.

    The projections are what a radiograph of the same body would look like: the mean attenuation along
    the anterior-posterior axis (a frontal view) and along the left-right axis (a lateral view), in HU
    above air, log-compressed and windowed at several levels and crops -- crude digitally reconstructed
    radiographs of a real abdomen, examples of "a radiograph, but not a chest film".
    """
    from medviewer.imaging import DisplayPipeline, display_image
    from medviewer.io import read_instance

    files = sorted(ct_dir.glob("*.dcm"))
    insts = [read_instance(f) for f in files]
    slices = np.stack([squeeze(display_image(inst)) for inst in insts[::every]])
    vol = np.stack([DisplayPipeline.from_instance(inst).modality_values(inst.stored_pixels())
                    for inst in insts]).astype(np.float32)  # (Z, Y, X) HU
    mu = np.clip(vol + 1000.0, 0, None)
    projections = []
    for axis in (1, 2):  # frontal (sum over Y: anterior-posterior), lateral (sum over X)
        p = mu.mean(axis=axis)
        p = np.flipud(p) if axis else p  # the head at the top
        for lo_q, hi_q in ((1, 99), (5, 99.5), (10, 97)):
            lo, hi = np.percentile(p, [lo_q, hi_q])
            img = np.clip((p - lo) / max(hi - lo, 1e-6), 0, 1)
            img = (255 * img).astype(np.uint8)
            img = cv2.resize(img, (p.shape[1], int(p.shape[0] * 3 * 0.6)), interpolation=cv2.INTER_AREA)
            projections.append(squeeze(img))
            projections.append(squeeze(img[: img.shape[0] * 3 // 4]))
    return slices, np.stack(projections)


def load_sources(data_root: Path, cache_dir: Path, *, seed: int = 0) -> dict[str, SourceImages]:
    """All gate sources under ``data_root`` (``../shared/data``), split by patient.

    Raises
    ------
    FileNotFoundError
        A source folder is missing.
    """
    data_root = Path(data_root)
    out: dict[str, SourceImages] = {}

    # paediatric: the default model's own split (15 % validation patients, seed 0), then 10 % cal of train
    kidx = discover(data_root / "kermany-cxr-224" / "train", kermany_patient_id)
    parts = split_by_patient(kidx, 0.15, 0.0, 0)
    split = ["train"] * len(kidx)
    for i in parts["val"]:
        split[i] = "val"
    train_idx = kidx.take(parts["train"])
    cal = split_by_patient(train_idx, 0.10, 0.0, 1)["val"]
    for j in cal:
        split[parts["train"][j]] = "cal"
    kpaths = [s.path for s in kidx.samples]
    out["kermany"] = SourceImages("kermany", 0, _cached(cache_dir, "kermany", lambda: _read_many(kpaths)),
                                  [s.patient_id for s in kidx.samples], split, [str(p) for p in kpaths])

    hdir = data_root / "adult-cxr-hannover"
    with open(hdir / "data.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    hpaths = [hdir / "png" / f"{r['image_id']}.png" for r in rows]
    hpat = [r["patient_id"] for r in rows]
    out["hannover"] = SourceImages("hannover", 1, _cached(cache_dir, "hannover", lambda: _read_many(hpaths)),
                                   hpat, _patient_split(hpat, 0.25, seed), [str(p) for p in hpaths])

    ndir = data_root / "nih-cxr14-64"
    with open(ndir / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    npaths = [ndir / r["path"] for r in rows]
    npat = [r["patient_id"] for r in rows]
    out["nih"] = SourceImages("nih", 1, _cached(cache_dir, "nih", lambda: _read_many(npaths)),
                              npat, _patient_split(npat, 0.25, seed), [str(p) for p in npaths])

    kn = sorted((data_root / "knee-xray-224" / "train").glob("*/*.png"))
    knpat = [p.stem.rstrip("LR") for p in kn]
    out["knee"] = SourceImages("knee", 2, _cached(cache_dir, "knee", lambda: _read_many(kn)),
                               knpat, _patient_split(knpat, 0.25, seed), [str(p) for p in kn])

    ct_dir = data_root / "ct-pancreas-cbct-seg-001"
    if ct_dir.is_dir():
        slices = _cached(cache_dir, "ct", lambda: ct_slices_and_projections(ct_dir)[0])
        drr = _cached(cache_dir, "drr", lambda: ct_slices_and_projections(ct_dir)[1])
        out["ct"] = SourceImages("ct", 3, slices, ["ct"] * len(slices), ["train"] * len(slices))
        out["drr"] = SourceImages("drr", 2, drr, ["ct"] * len(drr), ["train"] * len(drr))

    from pydicom.data import get_testdata_file

    pyd_imgs, pyd_names = [], []
    for name in PYDICOM_NON_RADIOGRAPHS:
        try:
            p = get_testdata_file(name, download=False)
            if p is None:
                continue
            from medviewer.imaging import display_image
            from medviewer.io import read_instance

            inst = read_instance(p)
            pyd_imgs.append(squeeze(display_image(inst)))
            pyd_names.append(name)
        except Exception:  # noqa: BLE001 - a test file this pydicom cannot decode is simply not used
            continue
    if pyd_imgs:
        out["pydicom"] = SourceImages("pydicom", 3, np.stack(pyd_imgs), pyd_names,
                                      _patient_split(pyd_names, 0.34, seed), pyd_names)
    syn = synthetic_non_radiographs(700, seed=seed)
    names = [f"synthetic-{i}" for i in range(len(syn))]
    out["synthetic"] = SourceImages("synthetic", 3, syn, names, _patient_split(names, 0.2, seed), names)
    return out
