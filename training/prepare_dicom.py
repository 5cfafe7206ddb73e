"""``medviewer-train prepare dicom SRC --out DIR``: de-identified training images from DICOM studies.

``SRC/<CLASS>/...`` holds DICOM files (any depth; the first folder level under ``SRC`` is the label). Each
image is rendered by the app's own display pipeline (:func:`medviewer.imaging.display_image`: modality LUT,
the file's VOI window, MONOCHROME1 inverted), so a model trained on the output sees what the viewer shows,
and written as an 8-bit greyscale PNG that carries no metadata. Nothing of the DICOM header is kept:

- file names and the manifest's ``patient_id`` are keyed pseudonyms (HMAC-SHA256 of Patient ID and SOP
  Instance UID with ``--pseudonym-key``, :func:`medviewer.deid.pseudonym`; without a key a random one that
  lives for this run), so a patient-level split is still possible and no identifier leaves the source;
- an instance whose Burned In Annotation (0028,0301) is ``YES`` is skipped: its pixels may show names or IDs,
  and MedViewer does not mask pixel data (DICOM PS3.15 E.1, the Basic Profile's note on burned-in text);
- every run is recorded in the audit log (``de-identified``, source Study Instance UIDs only).

Output::

    DIR/<CLASS>/<patient pseudonym>_<image pseudonym>.png
    DIR/manifest.csv   path,label,patient_id,sha256  (use as --data DIR/manifest.csv)
    DIR/prepare.json   options, counts per label, skipped files (keyed pseudonyms of their names) with reasons

Example
-------
::

    medviewer-train prepare dicom /data/studies --out data/chest-224 --size 224 --pseudonym-key site.key
"""

from __future__ import annotations

import csv
import hashlib
import json
import secrets
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

__all__ = ["prepare_dicom"]


def _image_name(patient: str, sop_uid: str, key: bytes) -> str:
    import hmac

    mac = hmac.new(key, f"image:{sop_uid}:0".encode(), hashlib.sha256).hexdigest()[:16]  # the first frame
    return f"{patient}_{mac}.png"


def _file_ref(name: str, key: bytes) -> str:
    import hmac

    return "file-" + hmac.new(key, f"file:{name}".encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:12]


def prepare_dicom(source: str | Path, out: str | Path, *, size: int | None = None, key: bytes | None = None,
                  force: bool = False, progress: bool = True) -> dict[str, Any]:
    """De-identified PNG training images and a manifest from ``SOURCE/<CLASS>/**`` DICOM files.

    Parameters
    ----------
    source
        Folder whose sub-folders are the labels (their names, lower-cased).
    out
        Output folder (absent or empty unless ``force``).
    size
        Resize each image to ``size`` x ``size`` (squeezed, ``cv2.INTER_AREA``); None keeps the size.
    key
        Pseudonymisation key (at least 16 bytes, :func:`medviewer.deid.load_key`); None: a random key for
        this run (pseudonyms are then consistent within the run only).

    Returns
    -------
    dict
        What ``prepare.json`` holds: ``images``, ``counts`` (label -> n), ``patients``, ``seconds``, and
        ``skipped`` (file name and reason; ``prepare.json`` has a keyed pseudonym instead of the name).

    Raises
    ------
    FileNotFoundError
        ``source`` is not a folder.
    ValueError
        ``out`` is not empty (without ``force``), or ``source`` has no label folder with a readable image.
    """
    from tqdm import tqdm

    from medviewer import audit
    from medviewer.deid import pseudonym
    from medviewer.errors import MedViewerError, error_line
    from medviewer.imaging import check_not_blank, display_image
    from medviewer.io import scan

    t0 = time.time()
    src, dst = Path(source), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a folder")
    if dst.exists() and any(dst.iterdir()) and not force:
        raise ValueError(f"{dst}: output folder is not empty (use --force)")
    key = key if key is not None else secrets.token_bytes(32)
    labels = sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows: list[dict[str, str]] = []
    skipped: list[dict[str, str]] = []
    counts: dict[str, int] = {}
    studies: list[str] = []
    patients: set[str] = set()
    for folder in labels:
        label = folder.name.lower()
        result = scan(folder)
        skipped += [{"file": Path(str(s.path)).name, "reason": s.reason} for s in result.skipped]
        for inst in tqdm(result.instances, desc=label, disable=not progress, leave=False):
            name = Path(str(inst.path)).name
            ds = getattr(inst, "dataset", None)
            if ds is None:
                skipped.append({"file": name, "reason": "not DICOM (PNG/JPEG are not prepared here)"})
                continue
            if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
                skipped.append({"file": name, "reason": "Burned In Annotation is YES: the pixels may show "
                                                         "identifying text; not prepared"})
                continue
            try:
                img = check_not_blank(display_image(inst), inst.path)
            except (MedViewerError, ValueError, OSError) as exc:
                skipped.append({"file": name, "reason": error_line(exc).split(": ", 1)[-1]})
                continue
            if img.ndim == 3:
                img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
            if size:
                img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
            pid = pseudonym(str(ds.get("PatientID", "") or inst.sop_instance_uid), key, prefix="P")
            rel = Path(label) / _image_name(pid, str(inst.sop_instance_uid), key)
            path = dst / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            ok, buf = cv2.imencode(".png", np.ascontiguousarray(img))
            if not ok:
                skipped.append({"file": name, "reason": "PNG encoding failed"})
                continue
            path.write_bytes(buf.tobytes())
            rows.append({"path": rel.as_posix(), "label": label, "patient_id": pid,
                         "sha256": hashlib.sha256(buf.tobytes()).hexdigest()})
            counts[label] = counts.get(label, 0) + 1
            patients.add(pid)
            study = str(getattr(inst, "study_instance_uid", "") or "")
            if study and study not in studies:
                studies.append(study)
    if not rows:
        raise ValueError(f"{src}: no readable DICOM image under a label folder (SOURCE/<CLASS>/...)")
    with open(dst / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label", "patient_id", "sha256"])
        w.writeheader()
        w.writerows(rows)
    info = {"images": len(rows), "counts": counts, "patients": len(patients), "size": size,
            "method": "pixels through the display pipeline as 8-bit PNG without metadata; keyed pseudonyms for "
                      "patients and images; burned-in annotation refused (DICOM PS3.15 E.1)",
            # source file names may carry names or IDs: the saved record has keyed pseudonyms of them
            "skipped": [{"file": _file_ref(s["file"], key), "reason": s["reason"]} for s in skipped],
            "seconds": round(time.time() - t0, 1)}
    (dst / "prepare.json").write_text(json.dumps(info, indent=2) + "\n")
    info["skipped"] = skipped  # the caller (the terminal) may show the user's own file names
    try:
        audit.record(audit.AuditEvent.DEIDENTIFIED,
                     outcome=audit.Outcome.SUCCESS if not skipped else audit.Outcome.MINOR_FAILURE,
                     objects=audit.object_refs(studies),
                     detail={"instances": len(rows), "skipped": len(skipped), "purpose": "training data"})
    except (MedViewerError, ValueError):
        pass  # the images are written; the CLI says so
    return info
