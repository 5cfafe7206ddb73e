"""Real DICOM files re-labelled as one patient's studies of different dates, for the prior tests."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import generate_uid


def relabel(sources: list[Path], dest: Path, *, patient_id: str, study_date: str, study_time: str = "100000",
            body_part: str | None = None, series_description: str | None = None,
            study_description: str | None = None) -> str:
    """Copy ``sources`` into ``dest`` as one new study of one new series of ``patient_id`` dated ``study_date``
    (new Study/Series/SOP Instance UIDs); returns the Study Instance UID."""
    dest.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    for k, src in enumerate(sources):
        ds = pydicom.dcmread(src)
        ds.PatientID, ds.PatientName = patient_id, "Prior^Test"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.StudyDate, ds.StudyTime = study_date, study_time
        if body_part is not None:
            ds.BodyPartExamined = body_part
        if series_description is not None:
            ds.SeriesDescription = series_description
        if study_description is not None:
            ds.StudyDescription = study_description
        ds.save_as(dest / f"{k:03d}.dcm", enforce_file_format=True)
    return study
