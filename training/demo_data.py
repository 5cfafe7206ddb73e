"""Build the workstation's paediatric demo study: one Kermany et al. (2018) radiograph wrapped as DICOM CR.

The demo shows both sides of the intended-use policy: an image the default model applies to (a
paediatric frontal chest radiograph with pneumonia, from a *validation* patient, so the model never
trained on it) next to one it does not (pydicom-data's adult chest ``RG1_UNCR.dcm``).

The image comes from the official train split of Kermany D, Zhang K, Goldbaum M (2018), Mendeley Data v2,
doi:10.17632/rscbjbr9sj.2, CC BY 4.0 (credited in the file's Image Comments, the README and NOTICE).
The data set records no age per image, only that the patients were 1-5 years old; Patient's Age is set
to ``003Y`` to represent that range and Image Comments says so. The pixels are the 224 x 224 8-bit image
as distributed in ``kermany-cxr-224``, unchanged (MONOCHROME2, no pixel spacing: the source has none).

Usage::

    python -m training.demo_data ../shared/data/kermany-cxr-224 resources/demo/paediatric-cxr-pneumonia.dcm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

__all__ = ["pick_demo_image", "write_demo_cr", "main"]

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
#: a fixed UID root + seeded suffixes so the demo file is reproducible byte for byte
_UID_PREFIX = "1.2.826.0.1.3680043.8.498."


def pick_demo_image(data: str | Path, seed: int = 0) -> Path:
    """The first validation-split PNEUMONIA image (patient split of the default model, seed ``seed``) that
    the default model flags *and* calls in scope, with its strongest region clear of the image border and
    the bottom 15 % (the abdomen) -- so the demo shows a heat map honestly, on the lungs."""
    from medviewer.inference.applicability import IntendedUsePolicy
    from medviewer.inference.registry import default_model
    from medviewer.inference.session import Session
    from training.data import discover, read_display_u8, split_by_patient

    index = discover(data)
    pool = index.subset("train")
    parts = split_by_patient(pool, 0.15, 0.0, seed)
    pos = index.classes.index("pneumonia")
    pkg = default_model()
    sess = Session(pkg, "cpu")
    policy = IntendedUsePolicy(pkg.card)
    for i in parts["val"]:
        s = pool.samples[i]
        if s.label != pos:
            continue
        img = read_display_u8(s.path)
        pred = sess.predict([img])[0]
        a = policy.apply(None, pred, img)
        if pred.flagged and a.in_scope and pred.regions:
            x0, y0, x1, y1 = pred.regions[0].bbox
            h, w = img.shape[:2]
            if x0 > 0.05 * w and y0 > 0.05 * h and x1 < 0.95 * w and y1 < 0.85 * h:  # evidence inside the thorax
                return s.path
    raise RuntimeError("no validation pneumonia image is flagged in scope")


def write_demo_cr(image_path: str | Path, out: str | Path) -> Path:
    """Wrap an 8-bit grey image as a DICOM CR instance (PS3.3 A.2 Computed Radiography Image IOD)."""
    from medviewer.io import read_instance

    inst = read_instance(image_path)
    px = inst.stored_pixels()
    if px.ndim == 3:
        px = px[..., 0]
    px = np.ascontiguousarray(px, np.uint8)
    name = Path(image_path).name
    key = sum(name.encode()) * 1000 + len(name)
    study, series, sop = (f"{_UID_PREFIX}{key}.{k}" for k in (1, 2, 3))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = _UID_PREFIX + "1"
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CR_IMAGE_STORAGE, sop
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20180222"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber = ""
    ds.Modality = "CR"
    ds.Manufacturer = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "Paediatric chest radiograph (demo, Kermany 2018)"
    ds.SeriesDescription = "Chest, frontal"
    ds.PatientName = "Demo^Paediatric"
    ds.PatientID = "KERMANY-" + name.split("_")[0]
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.PatientAge = "003Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = ""  # the data set does not record AP or PA
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.ImageComments = (f"Source: Kermany D, Zhang K, Goldbaum M (2018), Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, "
                        f"CC BY 4.0; file {name}, official train split, resized to 224x224 by the data set's "
                        "maintainers. Patient's Age 003Y represents the data set's 1-5 year range.")
    ds.DerivationDescription = "8-bit JPEG of the public data set, wrapped as DICOM without pixel changes"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = px.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.WindowCenter = 127.5
    ds.WindowWidth = 256
    ds.PixelData = px.tobytes()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.demo_data", description=__doc__.split("\n")[0])
    p.add_argument("data", type=Path, help="kermany-cxr-224 folder (train/NORMAL, train/PNEUMONIA)")
    p.add_argument("out", type=Path, help="output .dcm")
    args = p.parse_args(argv)
    src = pick_demo_image(args.data)
    write_demo_cr(src, args.out)
    print(f"{args.out}: {src.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
