"""``medviewer-train prepare kermany ARCHIVE_OR_FOLDER --out DIR``: training data from the data set as published.

(``medviewer-train prepare dicom SRC --out DIR``, de-identified images from your own DICOM studies, is
:mod:`training.prepare_dicom`.)

The pediatric chest X-ray data set of Kermany et al. (2018) is published on Mendeley Data, v2,
doi:10.17632/rscbjbr9sj.2 (https://data.mendeley.com/datasets/rscbjbr9sj/2), licence CC BY 4.0. Its file
``ChestXRay2017.zip`` (about 1.2 GB) holds ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg``
(5,232 + 624 images). The same images re-packaged elsewhere (e.g. with an extra ``val/`` split, a nested
copy of the tree, or ``__MACOSX/`` debris) are accepted: the tree with the most images is used.

Output, what ``medviewer-train fit|baseline|evaluate --data DIR`` expect::

    DIR/{train,test}/{NORMAL,PNEUMONIA}/<original file name>
    DIR/manifest.csv   path,label,split,patient_id,sha256,source_sha256  (also usable as --data DIR/manifest.csv)
    DIR/prepare.json   source, its SHA-256, options, counts per split and label, skipped files, citation

Without ``--size`` the files are copied byte for byte. With ``--size N`` each image is decoded as 8-bit
greyscale, resized to N x N (squeezed, not cropped: ``cv2.INTER_AREA``) and written as JPEG (quality
``--quality``), the layout of ``../shared/data/kermany-cxr-224`` for ``--size 224``. Patient IDs come from
the file names (:func:`training.data.kermany_patient_id`): split training data by patient, never by image.

Example
-------
::

    medviewer-train prepare kermany ~/Downloads/ChestXRay2017.zip --out data/kermany-cxr-224 --size 224
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import stat
import sys
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = ["KERMANY", "SourceImage", "find_kermany_images", "prepare_kermany", "add_parser", "run"]

#: what the published data set is, for prepare.json and the help text
KERMANY = {
    "name": "Kermany et al. (2018) pediatric chest X-ray (ChestXRay2017)",
    "doi": "10.17632/rscbjbr9sj.2",
    "url": "https://data.mendeley.com/datasets/rscbjbr9sj/2",
    "file": "ChestXRay2017.zip",
    "licence": "CC BY 4.0",
    "citation": "Kermany D, Zhang K, Goldbaum M (2018). Labeled Optical Coherence Tomography (OCT) and Chest "
                "X-Ray Images for Classification. Mendeley Data, v2, doi:10.17632/rscbjbr9sj.2; Kermany DS et "
                "al., Cell 172(5), 1122-1131, 2018, doi:10.1016/j.cell.2018.02.010",
}
_SPLITS = ("train", "val", "test")
_LABELS = ("NORMAL", "PNEUMONIA")
_SUFFIXES = (".jpeg", ".jpg", ".png")


@dataclass(frozen=True)
class SourceImage:
    """One image of the source tree: ``member`` is the zip member name or the path relative to the folder."""

    member: str
    split: str
    label: str
    name: str

    @property
    def out_relpath(self) -> str:
        """``split/LABEL/name``, its path under the output folder."""
        return f"{self.split}/{self.label}/{self.name}"


def _classify(member: str) -> tuple[str, SourceImage] | None:
    """``(root, image)`` when ``member`` is ``ROOT/{split}/{LABEL}/file.jpeg``; None for anything else."""
    parts = PurePosixPath(member).parts
    if len(parts) < 3 or "__MACOSX" in parts or parts[-1].startswith("."):
        return None
    split, label, name = parts[-3].lower(), parts[-2].upper(), parts[-1]
    if split not in _SPLITS or label not in _LABELS or not name.lower().endswith(_SUFFIXES):
        return None
    if name in (".", "..") or "\\" in name:
        return None
    return "/".join(parts[:-3]), SourceImage(member, split, label, name)


def find_kermany_images(members: Sequence[str]) -> tuple[list[SourceImage], str, dict[str, int]]:
    """Pick the Kermany tree out of archive member names (or relative paths of a folder).

    Returns the images of the tree with the most images (sorted by split, label, name), its root
    (``"chest_xray"`` for ``ChestXRay2017.zip``) and, for the information of the user, the image counts
    of other trees that were ignored (``{root: n}``, e.g. the nested duplicate some re-uploads carry).

    Raises
    ------
    ValueError
        No ``{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` images at all.
    """
    trees: dict[str, list[SourceImage]] = {}
    for m in members:
        hit = _classify(m)
        if hit is not None:
            trees.setdefault(hit[0], []).append(hit[1])
    if not trees:
        nested = [m for m in members if m.lower().endswith(KERMANY["file"].lower())]
        hint = (f"; it contains {nested[0]}: extract that file and prepare it" if nested else
                f"; expected {KERMANY['file']} from {KERMANY['url']}")
        raise ValueError(f"no chest_xray/{{train,test}}/{{NORMAL,PNEUMONIA}}/*.jpeg images found{hint}")
    root = max(trees, key=lambda r: (len(trees[r]), -len(r)))
    images = sorted(trees[root], key=lambda s: (_SPLITS.index(s.split), s.label, s.name))
    return images, root, {r: len(v) for r, v in trees.items() if r != root}


class _Source:
    """Read access to a zip archive or a folder by member name."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            self.members = sorted(p.relative_to(path).as_posix() for p in path.rglob("*")
                                  if p.is_file() and not p.is_symlink())
        elif path.is_file():
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise ValueError(f"{path}: not a readable zip archive ({exc})") from None
            self.members = [i.filename for i in self.zip.infolist() if not i.is_dir()]
        else:
            raise FileNotFoundError(f"{path}: no such archive or folder")

    def read(self, member: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(member)  # ZipFile reads are thread-safe (one lock around the shared file)
        p = self.path / member
        if not stat.S_ISREG(os.lstat(p).st_mode):
            raise OSError(f"{member} is not a regular file")
        return p.read_bytes()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _convert(data: bytes, size: int | None, quality: int) -> bytes:
    """The bytes to write: the source as is, or decoded to 8-bit grey, resized to size x size, JPEG."""
    if not size:
        return data
    import cv2
    import numpy as np

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise ValueError("not a decodable JPEG/PNG image")
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpeg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def prepare_kermany(source: str | Path, out: str | Path, *, size: int | None = None, quality: int = 95,
                    splits: Sequence[str] | None = None, workers: int = 0, force: bool = False,
                    progress: bool = True, patient_id: Callable[[str], str] | None = None) -> dict:
    """Build ``out`` from ``ChestXRay2017.zip`` (or its extracted folder); see the module docstring.

    Parameters
    ----------
    source
        The zip archive as downloaded, or a folder holding the extracted tree.
    out
        Output folder; must be absent or empty unless ``force``.
    size
        Resize to ``size x size`` 8-bit greyscale JPEG; None or 0: copy the files unchanged.
    splits
        Subset of ``train``, ``val``, ``test`` to write (default: all present).
    workers
        Threads decoding/resizing (0: up to 4, by CPU count).
    patient_id
        File name -> patient ID (default :func:`training.data.kermany_patient_id`).

    Returns
    -------
    dict
        What ``prepare.json`` holds: source, SHA-256, options, ``counts[split][label]``, ``skipped``.

    Raises
    ------
    FileNotFoundError
        ``source`` does not exist.
    ValueError
        ``source`` is not a zip/folder with the data set's layout, or ``out`` is not empty.
    """
    source, out = Path(source).expanduser(), Path(out).expanduser()
    if size is not None and size != 0 and not 8 <= size <= 4096:
        raise ValueError(f"--size {size}: expected 8 to 4096 pixels (or 0 for the original files)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise ValueError(f"{out}: output folder exists and is not empty (use --force to write into it)")
    if patient_id is None:
        from training.data import kermany_patient_id as patient_id
    t0 = time.perf_counter()
    src = _Source(source)
    try:
        images, root, ignored = find_kermany_images(src.members)
        if splits:
            unknown = sorted(set(splits) - set(_SPLITS))
            if unknown:
                raise ValueError(f"unknown split(s) {unknown}; choose from {list(_SPLITS)}")
            images = [s for s in images if s.split in splits]
            if not images:
                raise ValueError(f"{source}: no images in split(s) {list(splits)}")
        for split, label in {(s.split, s.label) for s in images}:
            (out / split / label).mkdir(parents=True, exist_ok=True)
        workers = workers or min(4, os.cpu_count() or 1)

        def one(s: SourceImage) -> tuple[SourceImage, str, str] | tuple[SourceImage, None, str]:
            try:
                data = src.read(s.member)
                written = _convert(data, size, quality)
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                return s, None, str(exc)
            (out / s.out_relpath).write_bytes(written)
            return s, hashlib.sha256(written).hexdigest(), hashlib.sha256(data).hexdigest()

        from tqdm.auto import tqdm

        rows, skipped = [], []
        with ThreadPoolExecutor(workers) as pool, tqdm(total=len(images), unit="img", disable=not progress,
                                                      desc="prepare kermany", file=sys.stderr) as bar:
            for s, digest, other in pool.map(one, images):
                bar.update()
                if digest is None:
                    skipped.append({"member": s.member, "reason": other})
                else:
                    rows.append((s.out_relpath, s.label, s.split, patient_id(s.name), digest, other))
    finally:
        src.close()
    if not rows:
        raise ValueError(f"{source}: none of the {len(images)} images could be read")
    with open(out / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "patient_id", "sha256", "source_sha256"])
        w.writerows(rows)
    counts: dict[str, dict[str, int]] = {}
    for (split, label), n in sorted(Counter((r[2], r[1]) for r in rows).items()):
        counts.setdefault(split, {})[label] = n
    info = {
        "dataset": KERMANY,
        "source": str(source.resolve()),
        "source_sha256": _sha256_file(source) if source.is_file() else None,
        "root": root,
        "ignored_trees": ignored,
        "size": size or None,
        "resize": "squeeze, cv2.INTER_AREA, 8-bit greyscale JPEG" if size else "none (files copied unchanged)",
        "jpeg_quality": quality if size else None,
        "counts": counts,
        "patients": {split: len({r[3] for r in rows if r[2] == split}) for split in counts},
        "images": len(rows),
        "skipped": skipped,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (out / "prepare.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``prepare`` on the ``medviewer-train`` subcommand parser."""
    p = subparsers.add_parser(
        "prepare", help="build a training folder from a published data set (kermany: ChestXRay2017.zip)",
        description=f"Build the folder the training commands expect from a data set as published. kermany: "
                    f"{KERMANY['file']} from {KERMANY['url']} (doi:{KERMANY['doi']}, {KERMANY['licence']}).",
        epilog="examples:\n  medviewer-train prepare kermany ChestXRay2017.zip --out data/kermany --size 224\n"
               "  medviewer-train prepare dicom studies/ --out data/mine --pseudonym-key site.key",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["kermany", "dicom"],
                   help="kermany: the published archive; dicom: your own DICOM studies in SOURCE/<CLASS>/..., "
                        "de-identified (PS3.15 E.1 Basic Profile)")
    p.add_argument("source", metavar="ARCHIVE_OR_FOLDER", help="the downloaded zip, or the folder it was extracted to")
    p.add_argument("--pseudonym-key", metavar="FILE", default=None,
                   help="dicom: key file for reproducible patient/image pseudonyms (default: a random key)")
    p.add_argument("--out", required=True, help="output folder (absent or empty)")
    p.add_argument("--size", type=int, default=0,
                   help="resize to SIZE x SIZE 8-bit greyscale JPEG, e.g. 224; 0 (default) copies the files unchanged")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality with --size (default: 95)")
    p.add_argument("--splits", nargs="+", choices=list(_SPLITS), default=None,
                   help="only these splits (default: all in the archive)")
    p.add_argument("--workers", type=int, default=0, help="threads (0: up to 4)")
    p.add_argument("--force", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``medviewer-train prepare``; prints a summary, returns 0 (errors are raised)."""
    if args.dataset == "dicom":
        from medviewer.deid import load_key
        from training.prepare_dicom import prepare_dicom

        d = prepare_dicom(args.source, args.out, size=args.size or None,
                          key=load_key(args.pseudonym_key) if args.pseudonym_key else None, force=args.force,
                          progress=not args.no_progress)
        print(f"prepared {d['images']} de-identified images of {d['patients']} patients in {d['seconds']} s -> "
              f"{args.out} ({', '.join(f'{n} {label}' for label, n in d['counts'].items())}); manifest.csv, "
              f"prepare.json")
        for s in d["skipped"]:
            print(f"medviewer-train prepare: warning: skipped {s['file']}: {s['reason']}", file=sys.stderr)
        return 0
    info = prepare_kermany(args.source, args.out, size=args.size or None, quality=args.quality,
                           splits=args.splits, workers=args.workers, force=args.force,
                           progress=not args.no_progress)
    counts = "; ".join(f"{split}: " + ", ".join(f"{n} {label}" for label, n in c.items())
                       for split, c in info["counts"].items())
    print(f"prepared {info['images']} images in {info['seconds']} s -> {args.out} ({counts}); "
          f"manifest.csv, prepare.json")
    for s in info["skipped"]:
        print(f"medviewer-train prepare: warning: skipped {s['member']}: {s['reason']}", file=sys.stderr)
    return 0
