"""Multi-label data: label tables, patient-level iterative stratification, streamed or cached datasets.

A multi-label table is a CSV with one row per image and one of two label forms:

* one 0/1 column per finding (``Atelectasis``, ``Cardiomegaly``, ...), or
* the NIH ChestX-ray14 form: one ``Finding Labels`` (or ``finding_labels``) column holding the findings
  separated by ``|``, with ``No Finding`` for none (Wang et al. 2017, ``Data_Entry_2017.csv``).

The image path column is ``path`` (relative to the CSV's folder, or absolute) or NIH's ``Image Index`` (a
file name, looked up in the CSV's folder and its ``images/`` folder); the patient column is
``patient_id`` or NIH's ``Patient ID`` (without one, each image is its own patient). ``age_years`` /
``Patient Age`` and ``view`` / ``View Position`` are kept when present.

Splits and folds are made over **patients** with the iterative stratification of Sechidis, Tsoumakas and
Vlahavas (2011, "On the Stratification of Multi-Label Data", ECML PKDD, LNCS 6913:145-158), applied to
patients weighted by their images (:func:`iterative_stratification`), so every part keeps the prevalence
of every finding, rare ones included, and no patient is in two parts.

Example
-------
>>> index = read_multilabel_csv("../shared/data/nih-cxr14-64/labels.csv")
>>> parts = split_multilabel(index, val_fraction=0.2, seed=0)
>>> index.take(parts["val"]).prevalence()
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medviewer.imaging.preprocess import fit_to_input, normalise
from medviewer.inference.card import InputSpec, Preprocessing

__all__ = [
    "NO_FINDING",
    "MultilabelIndex",
    "read_multilabel_csv",
    "iterative_stratification",
    "split_multilabel",
    "multilabel_folds",
    "pos_weights",
    "TargetDataset",
    "decoded_bytes",
]

#: the NIH value of ``Finding Labels`` meaning no finding
NO_FINDING = "No Finding"
_PATH_COLS = ("path", "Image Index", "image", "filename")
_PATIENT_COLS = ("patient_id", "Patient ID", "patient")
_FINDING_COLS = ("Finding Labels", "finding_labels")
_AGE_COLS = ("age_years", "Patient Age")
_VIEW_COLS = ("view", "View Position")


@dataclass
class MultilabelIndex:
    """Images with a 0/1 target per finding.

    Attributes
    ----------
    paths
        Image files, ``(N,)``.
    targets
        uint8 ``(N, K)``: ``targets[i, k] == 1`` when image ``i`` shows ``labels[k]``.
    patients
        Patient id per image, ``(N,)``.
    labels
        The K finding names, in output order.
    ages, views
        Patient age in years (NaN unknown) and view position per image, when the table has them.
    """

    paths: list[Path]
    targets: np.ndarray
    patients: list[str]
    labels: list[str]
    ages: np.ndarray | None = None
    views: list[str] | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.paths)

    def take(self, idx: Sequence[int]) -> MultilabelIndex:
        """The images at ``idx`` (in that order)."""
        idx = list(idx)
        return MultilabelIndex([self.paths[i] for i in idx], self.targets[idx], [self.patients[i] for i in idx],
                               self.labels, None if self.ages is None else self.ages[idx],
                               None if self.views is None else [self.views[i] for i in idx], self.source)

    def prevalence(self) -> dict[str, float]:
        """Finding -> fraction of images positive."""
        n = max(1, len(self))
        return {lab: float(self.targets[:, k].sum()) / n for k, lab in enumerate(self.labels)}

    def counts(self) -> dict[str, int]:
        """``images`` and ``patients`` counts, then finding -> positive images."""
        return {"images": len(self), "patients": len(set(self.patients)),
                **{lab: int(self.targets[:, k].sum()) for k, lab in enumerate(self.labels)}}


def _first(cols: Sequence[str], names: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in cols}
    return next((lower[n.lower()] for n in names if n.lower() in lower), None)


def _flag(value: str, where: str) -> int:
    v = value.strip()
    if v in ("", "0", "0.0", "False", "false"):
        return 0
    if v in ("1", "1.0", "True", "true"):
        return 1
    raise ValueError(f"{where}: {v!r} is not 0 or 1 (uncertain labels such as -1 must be mapped first)")


def read_multilabel_csv(source: str | Path, labels: Sequence[str] | None = None,
                        patient_rule: Callable[[Path], str] | None = None) -> MultilabelIndex:
    """Read a multi-label table (0/1 columns per finding, or the NIH ``Finding Labels`` form).

    Parameters
    ----------
    source
        The CSV file.
    labels
        The findings to learn, in output order. Default: the 0/1 columns after the known metadata columns
        are not guessed; the findings named in ``Finding Labels`` (sorted, without ``No Finding``) are.
        A finding named in ``Finding Labels`` but not in ``labels`` is ignored for that image.
    patient_rule
        Path -> patient id when the table has no patient column (default: the file stem, i.e. each image
        its own patient).

    Raises
    ------
    FileNotFoundError
        No such CSV, or it has no rows.
    ValueError
        No path column, a finding column missing from both forms, a value that is not 0/1, or no labels
        given for a table without ``Finding Labels``.
    """
    source = Path(source)
    if not source.is_file():
        raise FileNotFoundError(f"{source}: label table (CSV) not found")
    with open(source, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = list(reader.fieldnames or [])
        rows = list(reader)
    if not rows:
        raise FileNotFoundError(f"{source}: no rows")
    path_col = _first(cols, _PATH_COLS)
    if path_col is None:
        raise ValueError(f"{source}: no image path column (one of {', '.join(_PATH_COLS)})")
    finding_col = _first(cols, _FINDING_COLS)
    if labels is None:
        if finding_col is None:
            raise ValueError(f"{source}: give the findings with --labels A,B,... (no 'Finding Labels' column)")
        found = {t.strip() for r in rows for t in r[finding_col].split("|")} - {NO_FINDING, ""}
        labels = sorted(found)
    labels = [str(lab).strip() for lab in labels]
    if not labels or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be non-empty and unique, got {labels}")
    label_cols = {lab: _first(cols, [lab]) for lab in labels}
    missing = [lab for lab, c in label_cols.items() if c is None]
    if missing and finding_col is None:
        raise ValueError(f"{source}: no column for {missing} and no 'Finding Labels' column")
    root = source.parent
    patient_col = _first(cols, _PATIENT_COLS)
    age_col, view_col = _first(cols, _AGE_COLS), _first(cols, _VIEW_COLS)
    paths, patients, ages, views = [], [], [], []
    y = np.zeros((len(rows), len(labels)), np.uint8)
    for i, r in enumerate(rows):
        p = Path(r[path_col].strip())
        if not p.is_absolute():
            p = root / p if (root / p).exists() or path_col == "path" else root / "images" / p
        paths.append(p)
        pid = (r.get(patient_col) or "").strip() if patient_col else ""
        patients.append(pid or (patient_rule(p) if patient_rule else p.stem))
        findings = {t.strip() for t in r[finding_col].split("|")} if finding_col else set()
        for k, lab in enumerate(labels):
            c = label_cols[lab]
            y[i, k] = _flag(r[c], f"{source} row {i + 2} column {c}") if c else int(lab in findings)
        if age_col:
            try:
                ages.append(float(str(r[age_col]).strip().rstrip("Yy")))
            except ValueError:
                ages.append(float("nan"))
        if view_col:
            views.append(str(r[view_col]).strip().upper())
    return MultilabelIndex(paths, y, patients, labels, np.asarray(ages, np.float64) if age_col else None,
                           views if view_col else None, str(source))


def iterative_stratification(counts: np.ndarray, sizes: np.ndarray, fractions: Sequence[float],
                             seed: int = 0) -> np.ndarray:
    """Assign examples to parts keeping the share of every label: Sechidis et al. (2011), Algorithm 1.

    Here an example is a **patient**: it carries ``sizes[p]`` images, ``counts[p, k]`` of them positive for
    label ``k``, and all go to the same part. As in the paper, the part's desired number of images
    (``fraction * total``) and of positives per label are tracked; the label with the fewest remaining
    positives is handled first (rare findings are placed while there is still freedom), each of its
    patients goes to the part that most lacks that label (ties: the part that most lacks images, then at
    random), and the desired counts are reduced by the patient's images. Patients without any positive
    go last, each to the part that most lacks images.

    Written here rather than taken from ``iterative-stratification`` (PyPI, which implements the same
    paper) because that library stratifies independent rows with binary labels; it cannot keep a
    patient's images together while weighting the patient by them.

    Parameters
    ----------
    counts
        int ``(P, K)``: positive images per patient and label.
    sizes
        int ``(P,)``: images per patient (>= the row's largest count).
    fractions
        Part sizes, summing to 1 (e.g. ``[0.7, 0.15, 0.15]`` or ``[0.2] * 5`` for folds).
    seed
        Seed of the random tie-breaks and of the order of the patients of a label.

    Returns
    -------
    np.ndarray
        int64 ``(P,)``: the part of every patient.

    Raises
    ------
    ValueError
        Shapes disagree, or the fractions are negative or do not sum to 1.
    """
    counts = np.asarray(counts, np.float64)
    sizes = np.asarray(sizes, np.float64)
    r = np.asarray(fractions, np.float64)
    if counts.ndim != 2 or len(counts) != len(sizes):
        raise ValueError(f"counts (P, K) and sizes (P,) disagree: {counts.shape} vs {sizes.shape}")
    if (r < 0).any() or abs(r.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    n_parts = len(r)
    want_images = r * sizes.sum()
    want_label = r[:, None] * counts.sum(axis=0)[None, :]  # (parts, K)
    part = np.full(len(sizes), -1, np.int64)
    remaining = counts.copy()

    def place(p: int, k: int | None) -> None:
        cand = np.arange(n_parts)
        if k is not None:
            cand = cand[want_label[cand, k] == want_label[cand, k].max()]
        cand = cand[want_images[cand] == want_images[cand].max()]
        j = int(rng.choice(cand))
        part[p] = j
        want_label[j] -= counts[p]
        want_images[j] -= sizes[p]
        remaining[p] = 0

    while True:
        left = remaining.sum(axis=0)
        active = np.flatnonzero(left > 0)
        if not len(active):
            break
        fewest = active[left[active] == left[active].min()]
        k = int(rng.choice(fewest))
        patients = np.flatnonzero(remaining[:, k] > 0)
        for p in rng.permutation(patients):
            place(int(p), k)
    for p in rng.permutation(np.flatnonzero(part < 0)):
        place(int(p), None)
    return part


def _patient_table(index: MultilabelIndex) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    uniq, inv = np.unique(np.asarray(index.patients), return_inverse=True)
    counts = np.zeros((len(uniq), len(index.labels)), np.int64)
    np.add.at(counts, inv, index.targets.astype(np.int64))
    sizes = np.bincount(inv, minlength=len(uniq))
    return list(uniq), inv, counts, sizes


def split_multilabel(index: MultilabelIndex, val_fraction: float = 0.15, test_fraction: float = 0.0,
                     seed: int = 0) -> dict[str, list[int]]:
    """Patient-level train / val (/ test) split by :func:`iterative_stratification`.

    Returns ``{"train", "val", "test"}`` -> sorted image indices (``test`` empty when ``test_fraction`` is 0).

    Raises
    ------
    ValueError
        Fractions outside [0, 1) or summing to 1 or more.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1) with a sum below 1")
    _, inv, counts, sizes = _patient_table(index)
    part = iterative_stratification(counts, sizes, [1 - val_fraction - test_fraction, val_fraction, test_fraction],
                                    seed)
    img_part = part[inv]
    return {name: np.flatnonzero(img_part == j).tolist() for j, name in enumerate(("train", "val", "test"))}


def multilabel_folds(index: MultilabelIndex, folds: int, seed: int = 0) -> np.ndarray:
    """Patient-level fold (0..folds-1) of every image, by :func:`iterative_stratification`; int64 ``(N,)``."""
    if folds < 2:
        raise ValueError(f"--folds must be at least 2, got {folds}")
    _, inv, counts, sizes = _patient_table(index)
    return iterative_stratification(counts, sizes, [1.0 / folds] * folds, seed)[inv]


def pos_weights(targets: np.ndarray, cap: float = 100.0) -> np.ndarray:
    """BCE positive weights ``n_neg / n_pos`` per label (float32 ``(K,)``), 1 for a label without positives,
    at most ``cap`` (``torch.nn.BCEWithLogitsLoss(pos_weight=...)``)."""
    t = np.asarray(targets, np.float64)
    pos = t.sum(axis=0)
    neg = len(t) - pos
    w = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return np.clip(w, 1e-3, cap).astype(np.float32)


def decoded_bytes(n: int, inp: InputSpec) -> int:
    """Bytes of ``n`` images decoded and fitted to ``inp`` (uint8), what an in-memory cache holds."""
    return int(n) * inp.height * inp.width * inp.channels


@dataclass
class TargetDataset(torch.utils.data.Dataset):
    """Images -> ``(x float32 (C, H, W), target)`` for training and prediction.

    Exactly one of ``images`` (uint8 ``(N, H, W, C)``, already fitted: the in-memory cache) and ``paths``
    (read, displayed and fitted on every access: the streamed path, memory independent of N) is given.
    ``targets`` is float32 ``(N, K)`` (multi-label) or int64 ``(N,)`` (single-label). Augmentation is seeded
    by ``(seed, epoch, index)``, so a streamed and a cached run see the same images. With DataLoader
    workers, each worker reads its own items (decoding in parallel processes).
    """

    targets: np.ndarray
    spec: Preprocessing
    inp: InputSpec
    images: np.ndarray | None = None
    paths: list[Path] | None = None
    augment: Callable | None = None
    seed: int = 0
    epoch: int = field(default=0)

    def __post_init__(self) -> None:
        if (self.images is None) == (self.paths is None):
            raise ValueError("TargetDataset needs images (cached) or paths (streamed), not both")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.targets)

    def fitted(self, i: int) -> np.ndarray:
        """uint8 ``(H, W, C)`` image ``i`` fitted to the input size, before augmentation."""
        if self.images is not None:
            return self.images[i]
        from training.data import read_display_u8

        return fit_to_input(read_display_u8(self.paths[i]), self.spec, self.inp)[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.fitted(i)
        if self.augment is not None:
            img = self.augment(img, np.random.default_rng((self.seed, self.epoch, int(i))))
        t = self.targets[i]
        return torch.from_numpy(normalise(img, self.spec)), torch.as_tensor(t)
