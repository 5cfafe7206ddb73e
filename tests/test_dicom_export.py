"""AI results as DICOM: TID 1500 SR and Secondary Capture from real predictions, checked with dciodvfy.

Predictions come from the shipped pneumonia-cxr model on real images (pydicom-data's RG1_UNCR chest CR,
pydicom's CT_small and the multi-frame emri_small); every object written is run through dciodvfy
(Debian package dicom3tools), which must report no error.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medviewer.export import render_overlay
from medviewer.export.dicom_ai import (
    SCHEME,
    DicomExportError,
    DicomResultWriter,
    build_overlay_sc,
    build_sr,
    read_sr_findings,
)
from tests.conftest import pydicom_test_file

APPLICABILITY = {"status": "out_of_scope", "reasons": ["modality CT is not one of CR, DX", "image is not a chest PA/AP"],
                 "checks": {}, "ood_score": 41.5, "ood_threshold": 12.25, "overridden": True}


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for a file (skips the test when dicom3tools is not installed)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools, or bash .ci/system-packages.sh)")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]


def content_items(ds):
    """Every content item of an SR, depth first."""
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


@pytest.fixture(scope="module")
def session():
    from medviewer.inference import open_session
    from medviewer.inference.registry import default_model

    return open_session(default_model(), "cpu")


def predict(session, name: str, frame: int = 0):
    """(header, prediction, overlay) of a real file through the app's path, regions for every positive label."""
    from medviewer.imaging.pipeline import display_image
    from medviewer.io import read_instance

    path = pydicom_test_file(name)
    inst = read_instance(path)
    u8 = display_image(inst, frame=frame)
    pred = session.predict([u8], [inst.pixel_spacing], regions=session.card.positive_labels)[0]
    return pydicom.dcmread(path, stop_before_pixels=True), pred, render_overlay(u8, pred)


def test_sr_and_sc_of_chest_radiograph(session, tmp_path):
    header, pred, overlay = predict(session, "RG1_UNCR.dcm")
    card = session.card
    assert pred.regions, "the CAM of a real radiograph has regions"
    paths = DicomResultWriter(tmp_path, card).write(header, pred, overlay,
                                                    applicability={"status": "in_scope", "reasons": []})
    sr_path, sc_path = paths
    assert sr_path.name == f"SR_{header.SOPInstanceUID}.dcm" and sc_path.name == f"SC_{header.SOPInstanceUID}.dcm"
    for p in paths:
        assert dciodvfy_errors(p) == [], p.name

    sr = pydicom.dcmread(sr_path)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == header.StudyInstanceUID and sr.PatientID == header.PatientID
    assert sr.SeriesInstanceUID != header.SeriesInstanceUID and sr.Modality == "SR"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID

    groups = read_sr_findings(sr)
    by_id = {g["tracking_identifier"]: g for g in groups}
    for label in card.labels:
        g = by_id[f"{label} score"]
        assert g["finding"] == label
        assert g["measurements"]["Probability"] == pytest.approx(pred.scores[label], abs=1e-6)
        op = card.operating_point(label)
        if op is not None:
            assert g["measurements"]["Operating point threshold"] == pytest.approx(op.threshold, abs=1e-6)
        if label in card.positive_labels:
            assert g["evaluations"]["Flagged at operating point"] == ("Present" if label in pred.flagged else "Absent")
        else:
            assert g["evaluations"] == {}
    assert by_id["applicability"]["evaluations"] == {"Model applicability": "In scope"}

    regions = [g for g in groups if g["polyline"] is not None]
    assert len(regions) == len(pred.regions)
    for g, r in zip(regions, pred.regions, strict=True):
        line = g["polyline"]
        assert g["referenced_sop_instance_uid"] == header.SOPInstanceUID and g["finding"] == r.label
        assert np.array_equal(line[0], line[-1]), "the outline is closed"
        x0, y0, x1, y1 = r.bbox  # the outline lies on the region's bounding box, in pixel-centre coordinates
        assert line[:, 0].min() == pytest.approx(x0 + 0.5, abs=1) and line[:, 0].max() == pytest.approx(x1 - 0.5, abs=1)
        assert line[:, 1].min() == pytest.approx(y0 + 0.5, abs=1) and line[:, 1].max() == pytest.approx(y1 - 0.5, abs=1)
        assert g["measurements"]["Peak class activation in region"] == pytest.approx(r.peak, abs=1e-6)
        if r.area_mm2 is not None:
            assert g["measurements"]["Area"] == pytest.approx(r.area_mm2, rel=1e-6)

    # the model is the observer device; its SHA-256 is in the algorithm identification
    texts = {(str(item.ConceptNameCodeSequence[0].CodeMeaning), str(item.TextValue))
             for item in content_items(sr) if "TextValue" in item}
    assert ("Algorithm Name", card.name) in texts and ("Algorithm Version", card.version) in texts
    assert ("Algorithm Parameters", f"sha256={card.sha256}") in texts
    assert ("Device Observer Serial Number", card.sha256) in texts

    sc = pydicom.dcmread(sc_path)
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert sc.StudyInstanceUID == header.StudyInstanceUID and sc.PatientName == header.PatientName
    assert sc.SeriesInstanceUID not in (header.SeriesInstanceUID, sr.SeriesInstanceUID)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert np.array_equal(sc.pixel_array, overlay)


def test_ct_out_of_scope_series_shared_within_study(session, tmp_path):
    header, pred, overlay = predict(session, "CT_small.dcm")
    writer = DicomResultWriter(tmp_path, session.card)
    first = writer.write(header, pred, overlay, applicability=APPLICABILITY)
    second_header = copy.deepcopy(header)
    second_header.SOPInstanceUID = pydicom.uid.generate_uid()
    second = writer.write(second_header, pred, None)  # no overlay: SR only
    assert len(first) == 2 and len(second) == 1
    for p in first + second:
        assert dciodvfy_errors(p) == [], p.name
    sr1, sc1, sr2 = (pydicom.dcmread(p) for p in first + second)
    assert sr1.SeriesInstanceUID == sr2.SeriesInstanceUID and (sr1.InstanceNumber, sr2.InstanceNumber) == (1, 2)
    assert sc1.SeriesInstanceUID != sr1.SeriesInstanceUID
    # the CT's orientation gives the SC's Patient Orientation (rows, columns)
    assert list(sc1.PatientOrientation) == ["L", "P"]
    app = next(g for g in read_sr_findings(sr1) if g["tracking_identifier"] == "applicability")
    assert app["evaluations"] == {"Model applicability": "Out of scope", "Intended use overridden": "Present"}
    assert app["measurements"] == {"Out-of-distribution score": 41.5, "Out-of-distribution threshold": 12.25}
    reasons = [str(item.TextValue) for item in content_items(sr1) if "TextValue" in item
               and item.ConceptNameCodeSequence[0].CodeValue == "APPL_REASON"]
    assert reasons == APPLICABILITY["reasons"]
    codes = {str(item.ConceptCodeSequence[0].CodingSchemeDesignator) for item in content_items(sr1)
             if "ConceptCodeSequence" in item}
    assert SCHEME in codes


def test_applicability_taken_from_the_prediction(session, tmp_path):
    header, pred, _overlay = predict(session, "CT_small.dcm")
    pred.applicability = {"status": "unknown", "reasons": [], "ood_score": "inf", "ood_threshold": None}
    (path,) = DicomResultWriter(tmp_path, session.card).write(header, pred)
    assert dciodvfy_errors(path) == []
    app = next(g for g in read_sr_findings(pydicom.dcmread(path)) if g["tracking_identifier"] == "applicability")
    assert app["evaluations"] == {"Model applicability": "Intended use not stated"}
    assert app["measurements"] == {}  # an infinite OOD score is not a number DICOM can carry


class _TypedAssessment:
    """Stands for a typed applicability value (not a Mapping): the writers convert it with ``to_dict()``."""

    def __init__(self, d):
        self._d = d

    def to_dict(self):
        return dict(self._d)


@pytest.mark.parametrize("deidentify", [None, True], ids=["as-source", "deidentified"])
def test_typed_assessment_is_converted_at_the_export_boundary(session, tmp_path, deidentify):
    header, pred, _overlay = predict(session, "CT_small.dcm")
    writer = DicomResultWriter(tmp_path, session.card, deidentify=deidentify)
    (path,) = writer.write(header, pred, applicability=_TypedAssessment(APPLICABILITY))
    app = next(g for g in read_sr_findings(pydicom.dcmread(path)) if g["tracking_identifier"] == "applicability")
    assert app["evaluations"] == {"Model applicability": "Out of scope", "Intended use overridden": "Present"}
    assert app["measurements"] == {"Out-of-distribution score": 41.5, "Out-of-distribution threshold": 12.25}
    build_sr(header, pred, session.card, applicability=_TypedAssessment(APPLICABILITY)).save_as(tmp_path / "sr.dcm")
    sr = pydicom.dcmread(tmp_path / "sr.dcm")
    assert [g["evaluations"] for g in read_sr_findings(sr) if g["tracking_identifier"] == "applicability"] == [
        app["evaluations"]]
    with pytest.raises(DicomExportError, match="mapping or have to_dict"):
        writer.write(header, pred, applicability=["out_of_scope"])


def test_continue_series_numbers_on_in_the_given_series(session, tmp_path):
    """The public replacement of the writer's private per-study record (used by ``medviewer serve``)."""
    header, pred, overlay = predict(session, "CT_small.dcm")
    writer = DicomResultWriter(tmp_path, session.card)
    assert writer.series_of(header.StudyInstanceUID) is None
    sr_uid, sc_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    writer.continue_series(header.StudyInstanceUID, sr_uid, sc_uid, sr_count=4, sc_count=2)
    sr_path, sc_path = writer.write(header, pred, overlay, applicability=APPLICABILITY)
    sr, sc = pydicom.dcmread(sr_path), pydicom.dcmread(sc_path)
    assert (sr.SeriesInstanceUID, sr.InstanceNumber) == (sr_uid, 5)
    assert (sc.SeriesInstanceUID, sc.InstanceNumber) == (sc_uid, 3)
    series = writer.series_of(header.StudyInstanceUID)
    assert (series.sr_count, series.sc_count) == (5, 3)


def test_multiframe_source_references_the_frame(session, tmp_path):
    header, pred, overlay = predict(session, "emri_small.dcm", frame=3)
    assert int(header.NumberOfFrames) > 3
    paths = DicomResultWriter(tmp_path, session.card).write(header, pred, overlay, frame=3)
    assert paths[0].name.endswith("_f3.dcm")
    for p in paths:
        assert dciodvfy_errors(p) == [], p.name
    sr = pydicom.dcmread(paths[0])
    frames = {int(v) for item in content_items(sr) for ref in item.get("ReferencedSOPSequence", [])
              for v in np.atleast_1d(ref.get("ReferencedFrameNumber", []))}
    assert frames == {4}
    drawn = [g for g in read_sr_findings(sr) if g["polyline"] is not None]
    assert len(drawn) == len(pred.regions) and all(g["referenced_frame_numbers"] == [4] for g in drawn)
    assert int(pydicom.dcmread(paths[1]).SourceImageSequence[0].ReferencedFrameNumber) == 4


def test_deidentified_results_reference_the_anonymized_source(session, tmp_path):
    """With ``deidentify`` the SR/SC are built on the source as `medviewer anonymize` writes it (same key): the
    patient pseudonym, keyed study/series/SOP UIDs; no patient age in the reasons; dciodvfy clean; a source
    declaring burned-in annotation is refused."""
    from medviewer.deid import BurnedInAnnotationError, DeidOptions, anonymize_dataset

    header, pred, overlay = predict(session, "CT_small.dcm")
    key = b"0123456789abcdef-export-test"
    copy_ = anonymize_dataset(header, DeidOptions(), key)
    app = {**APPLICABILITY, "reasons": ["patient age 41 y (Patient's Age); model: 18\u2013100 y", "modality CT"]}
    paths = DicomResultWriter(tmp_path, session.card, deidentify=True, key=key).write(header, pred, overlay,
                                                                                     applicability=app)
    assert [p.name for p in paths] == [f"SR_{copy_.SOPInstanceUID}.dcm", f"SC_{copy_.SOPInstanceUID}.dcm"]
    for p in paths:
        assert dciodvfy_errors(p) == [], p.name
        ds = pydicom.dcmread(p)
        assert (ds.StudyInstanceUID, ds.PatientID, ds.PatientName) == (copy_.StudyInstanceUID, copy_.PatientID,
                                                                        copy_.PatientName)
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethod == copy_.DeidentificationMethod
        assert str(header.PatientID) != str(ds.PatientID) and "PatientBirthDate" not in ds or not ds.PatientBirthDate
    sr, sc = (pydicom.dcmread(p) for p in paths)
    refs = {str(ref.ReferencedSOPInstanceUID) for item in content_items(sr) for ref in item.get("ReferencedSOPSequence", [])}
    assert refs == {str(copy_.SOPInstanceUID)}
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == copy_.SOPInstanceUID
    reasons = [str(item.TextValue) for item in content_items(sr) if "TextValue" in item
               and item.ConceptNameCodeSequence[0].CodeValue == "APPL_REASON"]
    assert reasons == ["patient age outside the model's range; model: 18-100 y", "modality CT"]  # en dash: ISO_IR 100
    burned = copy.deepcopy(header)
    burned.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError):
        DicomResultWriter(tmp_path / "b", session.card, deidentify=True, key=key).write(burned, pred, overlay)
    assert not (tmp_path / "b").exists()


def test_bad_inputs_are_one_line_errors(session):
    header, pred, overlay = predict(session, "CT_small.dcm")
    no_uid = copy.deepcopy(header)
    del no_uid.SOPInstanceUID
    with pytest.raises(DicomExportError, match="lacks SOPInstanceUID"):
        build_sr(no_uid, pred, session.card)
    with pytest.raises(DicomExportError, match="uint8 \\(H, W, 3\\)"):
        build_overlay_sc(header, overlay[..., 0], session.card)
    with pytest.raises(DicomExportError, match="applicability status"):
        build_sr(header, pred, session.card, applicability={"status": "maybe"})


def test_reads_another_vendors_tid1500(tmp_path):
    """A TID 1500 report built with highdicom's own API (a circle on the image and a 3-D point in the frame of
    reference, vendor codes), as another tool would write it: the findings and regions are read back."""
    from tests.vendor_sr import write_vendor_sr

    ct = pydicom.dcmread(pydicom_test_file("CT_small.dcm"))
    write_vendor_sr(ct, tmp_path / "vendor.dcm")
    groups = {g["tracking_identifier"]: g for g in read_sr_findings(pydicom.dcmread(tmp_path / "vendor.dcm"))}
    one, two = groups["nodule 1"], groups["nodule 2"]
    assert one["finding"] == "Nodule" and one["graphic_type"] == "CIRCLE"
    assert one["measurements"] == {"Diameter": 6.0}
    assert one["polyline"].tolist() == [[60.0, 50.0], [66.0, 50.0]]
    assert one["referenced_sop_instance_uid"] == ct.SOPInstanceUID
    assert two["graphic_type"] == "POINT" and two["polyline"] is None
    assert two["coordinates_3d"].tolist() == [[10.0, -20.5, 30.25]]
    with pytest.raises(ValueError, match="not a Comprehensive 3D"):
        read_sr_findings(ct)


def _dciodvfy_warnings(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools, or bash .ci/system-packages.sh)")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith(("Error", "Warning"))]


def _demo_variant(tmp_path: Path, name: str, **changes) -> Path:
    """The shipped paediatric demo DICOM with attributes set (value) or removed (None), a new SOP Instance UID."""
    from pydicom.uid import generate_uid

    from medviewer.resources import demo_dir

    ds = pydicom.dcmread(demo_dir() / "paediatric-cxr-pneumonia.dcm")
    for kw, value in changes.items():
        if value is None:
            if kw in ds:
                delattr(ds, kw)
        else:
            setattr(ds, kw, value)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out = tmp_path / name
    ds.save_as(out)
    return out


def test_out_of_scope_findings_are_not_assessed_with_their_reasons(tmp_path):
    """The issue's reproduction: the paediatric demo with Patient's Age 064Y scores pneumonia far above the
    operating point; its SR must assert the finding neither present nor absent, and say why, per finding."""
    from medviewer.cli import main

    src = _demo_variant(tmp_path, "adult.dcm", PatientAge="064Y")
    assert main(["infer", str(src), "--dicom", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    (sr_path,) = (tmp_path / "out" / "dicom").glob("SR_*.dcm")
    ds = pydicom.dcmread(sr_path)
    groups = {g["tracking_identifier"]: g for g in read_sr_findings(ds)}
    pneu = groups["pneumonia score"]
    assert pneu["measurements"]["Probability"] > pneu["measurements"]["Operating point threshold"]
    assert pneu["evaluations"] == {"Flagged at operating point": "Not assessed: outside intended use"}
    assert groups["applicability"]["evaluations"] == {"Model applicability": "Out of scope"}
    codes = {(i.ConceptCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodingSchemeDesignator)
             for i in content_items(ds) if "ConceptCodeSequence" in i}
    assert ("272519000", "SCT") not in codes and ("52101004", "SCT") not in codes  # neither absent nor present
    texts = [str(i.TextValue) for i in content_items(ds) if i.get("ValueType") == "TEXT"]
    assert sum("patient age 64 y" in t for t in texts) >= 2  # in the finding's group and the applicability group
    assert [d.CodingSchemeDesignator for d in ds.CodingSchemeIdentificationSequence] == [SCHEME]
    assert dciodvfy_errors(sr_path) == []
    # the only warnings left: dciodvfy does not read (0008,0110) declarations of private schemes
    assert all("99MEDVIEWER" in w for w in _dciodvfy_warnings(sr_path))


def test_source_without_type2_attributes_still_gets_results(tmp_path):
    """Converted and de-identified files lack Type 2 attributes: the SR/SC write them empty."""
    import json

    from medviewer.cli import main

    missing = ("PatientBirthDate", "AccessionNumber", "PatientSex", "ReferringPhysicianName", "StudyID",
               "PatientName", "PatientID", "StudyDate", "StudyTime")
    src = _demo_variant(tmp_path, "bare.dcm", **dict.fromkeys(missing))
    assert main(["infer", str(src), "--dicom", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    (entry,) = doc["results"]
    assert not entry.get("error") and len(entry["dicom"]) == 2, entry
    for rel in entry["dicom"]:
        ds = pydicom.dcmread(tmp_path / "out" / rel)
        assert all(kw in ds and not ds[kw].value for kw in missing)
        assert dciodvfy_errors(tmp_path / "out" / rel) == []


def test_sc_of_chest_film_has_no_laterality_warning(session, tmp_path):
    """A chest (unpaired) source: the SC carries Body Part Examined and no empty Laterality (dciodvfy clean)."""
    src = _demo_variant(tmp_path, "demo.dcm")
    header = pydicom.dcmread(src, stop_before_pixels=True)
    assert str(header.BodyPartExamined) == "CHEST"
    _, pred, overlay = predict(session, "RG1_UNCR.dcm")
    sc = build_overlay_sc(header, overlay, session.card)
    assert "Laterality" not in sc and sc.BodyPartExamined == "CHEST"
    sc.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    assert _dciodvfy_warnings(tmp_path / "sc.dcm") == []


def test_failed_sr_write_never_unscores_the_image(tmp_path, capsys):
    """A header the SR cannot reference (no Study Instance UID): the image is still scored (exit 0, scores in
    results.json); the export failure is said on stderr and recorded beside the scores."""
    import json

    from medviewer.cli import main

    src = _demo_variant(tmp_path, "nostudy.dcm", StudyInstanceUID=None)
    assert main(["infer", str(src), "--dicom", "--out", str(tmp_path / "out"), "--quiet"]) == 0
    (entry,) = json.loads((tmp_path / "out" / "results.json").read_text())["results"]
    assert not entry.get("error") and entry["scores"] and "StudyInstanceUID" in entry["export_error"]
    assert "results not written" in capsys.readouterr().err
