"""AI results as DICOM: a TID 1500 Measurement Report (Comprehensive 3D SR) and a Secondary Capture.

Written with highdicom, so any PACS or viewer can read them (OHIF, 3D Slicer, Weasis show TID 1500
findings and their regions). Per scored image:

* **SR** (:func:`build_sr`): Comprehensive 3D SR Storage, PS3.16 TID 1500 "Measurement Report", in the
  source study, in its own series. Its observer is the model as a device (TID 1004: name, version,
  the SHA-256 of ``model.onnx`` as the device UID's entropy and serial number). Imaging Measurements hold

  - per label a TID 1501 group (tracking identifier = the label; finding type = the label as a code of
    the private scheme ``99MEDVIEWER``; TID 4019 algorithm identification = model name, version and
    parameters ``sha256=...``, ``threshold[LABEL]=...``): Measurement "Probability" (DCM 122157, unit
    ``1``), the operating point's threshold, and -- for labels that can be flagged -- the qualitative
    evaluation "Flagged at operating point" = Present (SCT 52101004) / Absent (SCT 272519000);
  - with an applicability result (the intended-use policy's), a TID 1501 group "Model applicability" =
    In scope / Out of scope / Intended use not stated, the out-of-distribution score and threshold, whether
    the reader overrode it, and one TEXT item per reason;
  - per flagged region a TID 1410 planar ROI group: the region's outline as a closed SCOORD POLYLINE on the
    source image (PS3.3 C.18.6.1.1 pixel coordinates: ``(0, 0)`` is the top-left corner of the top-left
    pixel, so pixel centres are at ``+0.5``), its area in mm² when the pixel spacing is known, and the
    peak of the class activation map in it.

The private scheme is declared in the SR's Coding Scheme Identification Sequence (0008,0110) (PS3.3
C.12.1.1.2). Type 2 attributes of the Patient and General Study modules that the source lacks (as
converted and de-identified files often do) are written empty, as PS3.5 7.4 allows (:func:`with_type2`).

* **Secondary Capture** (:func:`build_overlay_sc`): SC Image Storage of the RGB overlay as the reader saw
  it (Burned In Annotation ``YES``), in the same study, its own series, referencing the source image.

:class:`DicomResultWriter` writes both for many images, one SR series and one SC series per study
(:meth:`DicomResultWriter.continue_series` continues series made earlier, e.g. by ``medviewer serve``).

The parts live in their own modules and are re-exported here: :mod:`~medviewer.export.sr_writer`
(:func:`build_sr`), :mod:`~medviewer.export.sc_writer` (:func:`build_overlay_sc`),
:mod:`~medviewer.export.sr_reader` (:func:`read_sr_findings`), :mod:`~medviewer.export.deid_source`
(de-identified results) and :mod:`~medviewer.export.dicom_common` (codes, Type 2 completion, errors).

Example
-------
>>> writer = DicomResultWriter(out / "dicom", card)  # doctest: +SKIP
>>> paths = writer.write(header, prediction, overlay_rgb, applicability={"status": "in_scope", "reasons": []})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from medviewer.export.deid_source import _DEID_KEYWORDS, _redact_reason, deidentified_source, header_only
from medviewer.export.dicom_common import (
    MANUFACTURER,
    SC_SERIES_NUMBER,
    SCHEME,
    SR_SERIES_NUMBER,
    DicomExportError,
    _check_source,
    _frame_number,
    as_applicability_dict,
    coding_scheme_identification,
    label_code,
    with_type2,
)
from medviewer.export.sc_writer import _UNPAIRED, build_overlay_sc
from medviewer.export.sr_reader import read_sr_findings
from medviewer.export.sr_writer import build_sr

__all__ = [
    "SCHEME",
    "MANUFACTURER",
    "DicomExportError",
    "label_code",
    "with_type2",
    "coding_scheme_identification",
    "build_sr",
    "build_overlay_sc",
    "DicomResultWriter",
    "read_sr_findings",
    "deidentified_source",
    "header_only",
    "SR_SERIES_NUMBER",
    "SC_SERIES_NUMBER",
    "StudySeries",
    "as_applicability_dict",
]

_ = _UNPAIRED  # re-exported (medviewer.export.presentation_state)


@dataclass
class StudySeries:
    """The SR and SC series of one study in one :class:`DicomResultWriter`: their Series Instance UIDs and
    how many instances each already holds (the next Instance Number is ``count + 1``)."""

    sr_uid: str = field(default_factory=generate_uid)
    sc_uid: str = field(default_factory=generate_uid)
    sr_count: int = 0
    sc_count: int = 0


_StudySeries = StudySeries  # the former private name


class DicomResultWriter:
    """Writes an SR (and an SC when an overlay is given) per scored image into one folder.

    All objects of one study from one writer share two new series (SR and SC), numbered
    :data:`SR_SERIES_NUMBER` and :data:`SC_SERIES_NUMBER`, with instance numbers counting up. Files are
    ``OUT/SR_<source SOP Instance UID>[_f<frame>].dcm`` and ``OUT/SC_...dcm``.

    Parameters
    ----------
    out_dir
        Destination folder (created on the first write).
    card
        The model card.
    deidentify
        A :class:`medviewer.deid.DeidOptions` (or ``True`` for the Basic Profile) to write de-identified
        results: each source header is de-identified first (:func:`deidentified_source`, with ``key``), so the
        SR/SC carry the patient pseudonym, the keyed Study Instance UID, reference the keyed SOP Instance UID
        of the source, are named after it, and say Patient Identity Removed YES with the method used. A patient
        age in an applicability reason is left out. ``None``: as the source.
    key
        The pseudonym key (:func:`medviewer.deid.load_key`); ``None`` uses the process's random key.
    """

    def __init__(self, out_dir: str | Path, card: Any, *, deidentify: Any = None, key: bytes | None = None) -> None:
        self.out_dir = Path(out_dir)
        self.card = card
        if deidentify is True:
            from medviewer.deid import DeidOptions

            deidentify = DeidOptions()
        self.deidentify = deidentify or None
        self.key = key
        self._studies: dict[str, StudySeries] = {}

    def continue_series(self, study_instance_uid: str, sr_series_uid: str, sc_series_uid: str, *,
                        sr_count: int = 0, sc_count: int = 0) -> StudySeries:
        """Write the results of ``study_instance_uid`` into existing SR and SC series (e.g. the ones a previous
        run of ``medviewer serve`` created, from its database), numbering on from ``sr_count``/``sc_count``.
        Without it, each study gets two new series on its first :meth:`write`. Returns the series record."""
        series = StudySeries(sr_uid=str(sr_series_uid), sc_uid=str(sc_series_uid), sr_count=int(sr_count),
                             sc_count=int(sc_count))
        self._studies[str(study_instance_uid)] = series
        return series

    def series_of(self, study_instance_uid: str) -> StudySeries | None:
        """The SR/SC series this writer uses for a study, or None before its first write."""
        return self._studies.get(str(study_instance_uid))

    def write(self, source: Dataset, prediction: Any, overlay_rgb: np.ndarray | None = None, *,
              applicability: Any = None, frame: int | None = None) -> list[Path]:
        """Write the SR (and the SC) of one prediction; returns the files written.

        ``applicability``: a mapping (``{"status": ..., "reasons": [...]}``) or a typed assessment with
        ``to_dict()``; default the prediction's own ``applicability`` attribute (see :func:`build_sr`).

        Raises
        ------
        DicomExportError
            Bad header or inputs (nothing is written then).
        medviewer.deid.BurnedInAnnotationError
            With ``deidentify``: the source declares burned-in annotation (nothing is written).
        """
        _check_source(source)
        if self.deidentify is not None:
            source = deidentified_source(source, self.deidentify, self.key)
            if applicability is None:
                applicability = getattr(prediction, "applicability", None)
            applicability = as_applicability_dict(applicability)
            if applicability is not None:
                applicability = {**applicability,
                                 "reasons": [_redact_reason(r) for r in applicability.get("reasons") or []]}
        series = self._studies.setdefault(str(source.StudyInstanceUID), StudySeries())
        stem = str(source.SOPInstanceUID) + (f"_f{int(frame)}" if _frame_number(source, frame) else "")
        objects: list[tuple[str, Dataset]] = []
        sr = build_sr(source, prediction, self.card, applicability=applicability, frame=frame,
                      series_instance_uid=series.sr_uid, instance_number=series.sr_count + 1)
        objects.append((f"SR_{stem}.dcm", sr))
        if overlay_rgb is not None:
            sc = build_overlay_sc(source, overlay_rgb, self.card, series_instance_uid=series.sc_uid,
                                  instance_number=series.sc_count + 1, frame=frame)
            objects.append((f"SC_{stem}.dcm", sc))
        if self.deidentify is not None:
            for _, ds in objects:
                for kw in _DEID_KEYWORDS:
                    if kw in source:
                        setattr(ds, kw, source[kw].value)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for name, ds in objects:
            path = self.out_dir / name
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        series.sr_count += 1
        series.sc_count += overlay_rgb is not None
        return paths
