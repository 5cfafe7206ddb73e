"""Data: find labelled images, split them by patient, cache the fitted 8-bit images, augment, batch.

Supported layouts (images PNG/JPEG/DICOM, all read through :func:`medviewer.io.read_instance` and
:func:`medviewer.imaging.display_image`, i.e. exactly the pixels the viewer shows):

* ``ROOT/{train,val,test}/{CLASS}/*`` (official splits are kept; ``val``/``test`` may be absent);
* ``ROOT/{CLASS}/*``;
* a CSV file with columns ``path,label[,patient_id]`` (paths relative to the CSV's folder).

Labels are the lower-cased class folder names (``NORMAL`` -> ``normal``), sorted.

Example
-------
>>> index = discover("../shared/data/kermany-cxr-224")
>>> split = split_by_patient(index.subset("train"), val_fraction=0.15, seed=0)
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from medviewer.imaging.preprocess import fit_to_input, normalise
from medviewer.inference.card import InputSpec, Preprocessing

__all__ = [
    "IMAGE_SUFFIXES",
    "Sample",
    "DatasetIndex",
    "kermany_patient_id",
    "regex_patient_rule",
    "discover",
    "split_by_patient",
    "read_display_u8",
    "load_fitted",
    "Augment",
    "ImageDataset",
    "class_weights",
    "synthetic_squares",
]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom", ""})

_KERMANY_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_KERMANY_IM = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-\d+$", re.IGNORECASE)


def kermany_patient_id(path: str | Path) -> str:
    """Patient id from a Kermany et al. (2018) chest X-ray file name.

    ``person1372_bacteria_3501.jpeg`` -> ``person1372``; ``NORMAL2-IM-0019-0001.jpeg`` ->
    ``NORMAL2-IM-0019``; ``IM-0115-0001.jpeg`` -> ``IM-0115``. Other names: the stem itself (each image
    its own patient).
    """
    stem = Path(path).stem
    m = _KERMANY_PERSON.match(stem) or _KERMANY_IM.match(stem)
    return m.group(1) if m else stem


def regex_patient_rule(pattern: str) -> Callable[[str | Path], str]:
    """A patient-id rule from a regular expression applied to the file stem (group 1, else the match).

    Raises
    ------
    ValueError
        The pattern does not compile.
    """
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid --patient-regex {pattern!r}: {exc}") from None

    def rule(path: str | Path) -> str:
        stem = Path(path).stem
        m = rx.search(stem)
        if not m:
            return stem
        return m.group(1) if m.groups() else m.group(0)

    return rule


@dataclass(frozen=True)
class Sample:
    """One labelled image: ``label`` indexes :attr:`DatasetIndex.classes`; ``split`` from the layout."""

    path: Path
    label: int
    patient_id: str
    split: str | None = None


@dataclass
class DatasetIndex:
    """Samples and class names (``classes[label]``)."""

    samples: list[Sample]
    classes: list[str]
    root: Path | None = None

    def subset(self, split: str | None) -> DatasetIndex:
        """Samples of one layout split (``None``: those without one)."""
        return DatasetIndex([s for s in self.samples if s.split == split], self.classes, self.root)

    def take(self, indices: Sequence[int]) -> DatasetIndex:
        return DatasetIndex([self.samples[i] for i in indices], self.classes, self.root)

    @property
    def labels(self) -> np.ndarray:
        """int64 ``(N,)``."""
        return np.asarray([s.label for s in self.samples], dtype=np.int64)

    @property
    def splits(self) -> set[str | None]:
        return {s.split for s in self.samples}

    def counts(self) -> dict[str, int]:
        c = Counter(s.label for s in self.samples)
        return {name: c.get(i, 0) for i, name in enumerate(self.classes)}

    def __len__(self) -> int:
        return len(self.samples)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def discover(source: str | Path, patient_rule: Callable[[str | Path], str] = kermany_patient_id,
             classes: Sequence[str] | None = None) -> DatasetIndex:
    """Index a folder (``ROOT/{split}/{CLASS}/*`` or ``ROOT/{CLASS}/*``) or a CSV file.

    Parameters
    ----------
    source
        Folder or ``.csv`` (columns ``path``, ``label``, optional ``patient_id``).
    patient_rule
        File path -> patient id (used when the CSV has no ``patient_id`` column, and for folders).
    classes
        Class names in label order; default: the sorted lower-cased folder names / CSV labels.

    Raises
    ------
    FileNotFoundError
        ``source`` does not exist or holds no images.
    ValueError
        A CSV without ``path``/``label`` columns, or labels not in ``classes``.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"{source}: data folder or CSV not found")
    rows: list[tuple[Path, str, str, str | None]] = []  # path, label name, patient, split
    if source.is_file():
        with open(source, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                raise ValueError(f"{source}: CSV needs 'path' and 'label' columns (optional 'patient_id')")
            for r in reader:
                p = Path(r["path"])
                p = p if p.is_absolute() else source.parent / p
                pid = (r.get("patient_id") or "").strip() or patient_rule(p)
                split = (r.get("split") or "").strip() or None
                rows.append((p, r["label"].strip().lower(), pid, split))
        root = source.parent
    else:
        root = source
        subdirs = sorted(d for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
        split_names = {"train", "val", "valid", "validation", "test"}
        if subdirs and all(d.name.lower() in split_names for d in subdirs):
            alias = {"valid": "val", "validation": "val"}
            layout = [(alias.get(d.name.lower(), d.name.lower()), d) for d in subdirs]
        else:
            layout = [(None, source)]
        for split, base in layout:
            for cdir in sorted(d for d in base.iterdir() if d.is_dir() and not d.name.startswith(".")):
                for p in _images_in(cdir):
                    rows.append((p, cdir.name.lower(), patient_rule(p), split))
    if not rows:
        raise FileNotFoundError(f"{source}: no images found (expected ROOT/CLASS/*, ROOT/SPLIT/CLASS/* or a CSV)")
    names = [c.lower() for c in classes] if classes else sorted({r[1] for r in rows})
    unknown = sorted({r[1] for r in rows} - set(names))
    if unknown:
        raise ValueError(f"{source}: labels {unknown} are not in classes {names}")
    lut = {n: i for i, n in enumerate(names)}
    samples = [Sample(p, lut[lab], pid, split) for p, lab, pid, split in rows]
    return DatasetIndex(samples, names, root)


def split_by_patient(index: DatasetIndex, val_fraction: float = 0.15, test_fraction: float = 0.0,
                     seed: int = 0) -> dict[str, list[int]]:
    """Stratified, seeded split by patient: no patient appears in two parts.

    Patients are grouped by their set of labels (the stratum), shuffled with ``seed`` within each
    stratum, and assigned to ``test`` then ``val`` until each part holds about its fraction of the
    stratum's images; the rest is ``train``.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``: indices into ``index.samples`` (sorted).
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) with a sum below 1")
    by_patient: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(index.samples):
        by_patient[s.patient_id].append(i)
    strata: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for pid, idx in by_patient.items():
        strata[tuple(sorted({index.samples[i].label for i in idx}))].append(pid)
    rng = np.random.default_rng(seed)
    out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for key in sorted(strata):
        pids = sorted(strata[key])
        rng.shuffle(pids)
        total = sum(len(by_patient[p]) for p in pids)
        quota = {"test": test_fraction * total, "val": val_fraction * total}
        got = {"test": 0, "val": 0}
        for pid in pids:
            n = len(by_patient[pid])
            part = "train"
            for name in ("test", "val"):
                if quota[name] > 0 and got[name] + n / 2 <= quota[name]:
                    part = name
                    got[name] += n
                    break
            out[part].extend(by_patient[pid])
    return {k: sorted(v) for k, v in out.items()}


def read_display_u8(path: str | Path) -> np.ndarray:
    """The viewer's 8-bit display image of a file (DICOM with its default window, or PNG/JPEG as is).

    Returns uint8 ``(H, W)`` or ``(H, W, 3)``. Raises :class:`medviewer.errors.ReadError`.
    """
    from medviewer.imaging import display_image
    from medviewer.io import read_instance

    return display_image(read_instance(path))


def _cache_key(paths: Sequence[Path], spec: Preprocessing, inp: InputSpec) -> str:
    h = hashlib.sha256()
    h.update(spec.model_dump_json().encode())
    h.update(inp.model_dump_json().encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def load_fitted(paths: Sequence[Path], spec: Preprocessing, inp: InputSpec, workers: int = 2,
                cache_dir: str | Path | None = None, progress: bool = True,
                reader: Callable[[Path], np.ndarray] = read_display_u8) -> np.ndarray:
    """Read, display and fit every image to the input size, kept in memory as uint8.

    Parameters
    ----------
    paths
        Image files.
    spec, inp
        The card's preprocessing and input spec (resize mode, size, channels).
    workers
        Reader threads (OpenCV and pydicom's decoders release the GIL for most of the work).
    cache_dir
        Optional folder for a ``.npy`` cache keyed by paths, sizes, mtimes and the specs.

    Returns
    -------
    np.ndarray
        uint8 ``(N, inp.height, inp.width, inp.channels)``; 5,216 images at 224x224x1 take 262 MB.
    """
    paths = [Path(p) for p in paths]
    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"fitted-{_cache_key(paths, spec, inp)}.npy"
        if cache.is_file():
            return np.load(cache)
    out = np.empty((len(paths), inp.height, inp.width, inp.channels), np.uint8)

    def one(i: int) -> None:
        out[i] = fit_to_input(reader(paths[i]), spec, inp)[0]

    with ThreadPoolExecutor(max(1, workers)) as pool:
        list(tqdm(pool.map(one, range(len(paths))), total=len(paths), desc="reading images",
                  disable=not progress, leave=False))
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, out)
        tmp.replace(cache)
    return out


@dataclass
class Augment:
    """Random photometric/geometric augmentation of a fitted uint8 ``(H, W, C)`` image (training only).

    Rotation by up to ``rotate_deg``, isotropic scale in ``1 +- scale``, translation up to ``translate``
    of the size, contrast ``1 +- contrast``, brightness ``+- brightness`` of full scale, Gaussian noise
    with sigma up to ``noise`` grey levels (with probability 0.5). No left-right flip unless ``hflip``
    (thoracic anatomy is not symmetric).

    The acquisition-shift terms are off by default (:meth:`strong` turns them on); each is drawn only when
    enabled, so a default ``Augment`` reproduces earlier runs exactly:

    - ``zoom``: extra zoom-in factor up to ``1 + zoom`` with a random centre (a random resized crop),
      ``aspect``: anisotropic stretch ``1 +- aspect``;
    - ``gamma``: exposure curve ``x ** g`` with ``log g`` uniform in ``+- log(1 + gamma)``;
    - ``blur_p`` / ``sharpen_p``: Gaussian blur (sigma 0.4-1.6 px) or unsharp masking (amount 0.3-1.2);
    - ``downscale_p``: down- then up-sampling by 0.35-0.85 (detector resolution, re-sampled archives);
    - ``clahe_p``: contrast-limited adaptive histogram equalisation (a vendor's processing look).
    """

    rotate_deg: float = 10.0
    scale: float = 0.10
    translate: float = 0.06
    contrast: float = 0.15
    brightness: float = 0.08
    noise: float = 4.0
    hflip: bool = False
    zoom: float = 0.0
    aspect: float = 0.0
    gamma: float = 0.0
    blur_p: float = 0.0
    sharpen_p: float = 0.0
    downscale_p: float = 0.0
    clahe_p: float = 0.0

    @classmethod
    def strong(cls, hflip: bool = False) -> Augment:
        """The preset for robustness to acquisition shift (``medviewer-train fit --augment strong``)."""
        return cls(rotate_deg=10.0, scale=0.10, translate=0.08, contrast=0.30, brightness=0.10, noise=6.0,
                   hflip=hflip, zoom=0.25, aspect=0.10, gamma=0.6, blur_p=0.25, sharpen_p=0.25,
                   downscale_p=0.25, clahe_p=0.15)

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        angle = rng.uniform(-self.rotate_deg, self.rotate_deg)
        s = rng.uniform(1 - self.scale, 1 + self.scale)
        m = cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5), angle, s)
        m[:, 2] += rng.uniform(-self.translate, self.translate, 2) * (w, h)
        if self.zoom > 0 or self.aspect > 0:  # random resized crop: zoom in about a random centre, stretch
            z = rng.uniform(1.0, 1.0 + self.zoom)
            a = rng.uniform(1 - self.aspect, 1 + self.aspect)
            zx, zy = z * a, z / a
            cx, cy = rng.uniform(0.5 - 0.5 * (1 - 1 / z), 0.5 + 0.5 * (1 - 1 / z), 2) * (w, h)
            crop = np.array([[zx, 0, w / 2 - zx * cx], [0, zy, h / 2 - zy * cy], [0, 0, 1]])
            m = (crop @ np.vstack([m, [0, 0, 1]]))[:2]
        x = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        x = x.reshape(img.shape)
        if self.clahe_p > 0 and rng.random() < self.clahe_p:
            clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(1.0, 3.0)), tileGridSize=(8, 8))
            g = clahe.apply(np.ascontiguousarray(x[..., 0] if x.ndim == 3 else x))
            x = g.reshape(img.shape) if x.ndim == 2 else np.repeat(g[..., None], x.shape[2], axis=2)
        x = x.astype(np.float32)
        if self.gamma > 0:
            g = float(np.exp(rng.uniform(-np.log1p(self.gamma), np.log1p(self.gamma))))
            x = 255.0 * (x / 255.0) ** g
        if self.downscale_p > 0 and rng.random() < self.downscale_p:
            f = rng.uniform(0.35, 0.85)
            small = cv2.resize(x, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
            x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).reshape(img.shape)
        u = rng.random() if (self.blur_p > 0 or self.sharpen_p > 0) else 1.0
        if u < self.blur_p:
            x = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.4, 1.6))).reshape(img.shape)
        elif u < self.blur_p + self.sharpen_p:
            soft = cv2.GaussianBlur(x, (0, 0), float(rng.uniform(0.8, 2.0))).reshape(img.shape)
            amount = float(rng.uniform(0.3, 1.2))
            x = x + amount * (x - soft)
        c = rng.uniform(1 - self.contrast, 1 + self.contrast)
        b = rng.uniform(-self.brightness, self.brightness) * 255.0
        mu = float(x.mean())
        x = (x - mu) * c + mu + b
        if self.noise > 0 and rng.random() < 0.5:
            x += rng.normal(0.0, rng.uniform(0, self.noise), x.shape).astype(np.float32)
        if self.hflip and rng.random() < 0.5:
            x = x[:, ::-1]
        return np.clip(np.rint(x), 0, 255).astype(np.uint8)


@dataclass
class ImageDataset(torch.utils.data.Dataset):
    """Cached fitted images -> ``(x float32 (C, H, W), label int64)``; augmentation seeded per epoch/item."""

    images: np.ndarray
    labels: np.ndarray
    spec: Preprocessing
    augment: Augment | None = None
    seed: int = 0
    epoch: int = field(default=0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.images[i]
        if self.augment is not None:
            img = self.augment(img, np.random.default_rng((self.seed, self.epoch, int(i))))
        x = normalise(img, self.spec)
        return torch.from_numpy(x), torch.tensor(int(self.labels[i]), dtype=torch.int64)


def class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Inverse-frequency weights ``N / (K * n_k)`` (float32 ``(K,)``), as scikit-learn's 'balanced'."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    counts[counts == 0] = math.inf
    return (len(labels) / (num_classes * counts)).astype(np.float32)


def synthetic_squares(n: int, size: int = 64, seed: int = 0, square: int = 12
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic detection task: noisy images, positives hold one bright square at a random place.

    Returns
    -------
    (images, labels, boxes)
        uint8 ``(n, size, size, 1)``, int64 ``(n,)`` (half positive), int ``(n, 4)`` boxes ``(x0, y0, x1,
        y1)`` of the square (``-1`` for negatives).
    """
    rng = np.random.default_rng(seed)
    imgs = np.clip(rng.normal(90, 20, (n, size, size, 1)), 0, 255)
    labels = (np.arange(n) % 2).astype(np.int64)
    rng.shuffle(labels)
    boxes = np.full((n, 4), -1, dtype=np.int64)
    for i in np.flatnonzero(labels):
        x0, y0 = rng.integers(2, size - square - 2, 2)
        imgs[i, y0 : y0 + square, x0 : x0 + square] += 110
        boxes[i] = (x0, y0, x0 + square, y0 + square)
    return np.clip(imgs, 0, 255).astype(np.uint8), labels, boxes
