"""De-identification (DICOM PS3.15 Annex E) on real files, checked against Table E.1-1's action codes.

The expectations come from the standard's definitions (PS3.15 E.1.1): X = absent, Z = empty or a dummy,
D = a non-empty value that is not the original, U = a new UID, K = unchanged; X/Z, X/D, Z/D, X/Z/D allow
any of their letters. The table rows themselves are checked against attributes whose action every
edition of PS3.15 states.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import warnings

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR
from pydicom.dataset import Dataset

from medviewer.deid import (
    BurnedInAnnotationError,
    DeidOptions,
    anonymize_dataset,
    keyed_uid,
    load_table,
    lookup,
)
from tests.conftest import pydicom_test_file

KEY = b"medviewer-test-key-0123456789abcdef"
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
FILES = ["RG1_UNCR.dcm", "CT_small.dcm", "MR_small.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm",
         "eCT_Supplemental.dcm", "liver_expb.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb_gdcm2k_uncompressed.dcm",
         "rtstruct.dcm", "test-SR.dcm"]


def _read(name: str) -> Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pydicom.dcmread(pydicom_test_file(name), force=True)


def _values(elem) -> list[str]:
    if elem.value is None or elem.value == "" or elem.VR == "SQ":
        return []
    vals = elem.value if elem.VM > 1 else [elem.value]
    return [str(v) for v in vals]


def _leaf_values(ds: Dataset) -> set[str]:
    out: set[str] = set()
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                out |= _leaf_values(item)
        elif elem.VR not in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            out.update(v for v in _values(elem) if v)
    return out


_CODE_KEYWORDS = {"CodeValue", "CodingSchemeDesignator", "CodeMeaning", "CodingSchemeVersion", "CodingSchemeUID", "LongCodeValue",
                  "URNCodeValue", "ReferencedSOPClassUID", "ValueType", "RelationshipType", "ContinuityOfContent"}


def _identifying(ds: Dataset) -> set[str]:
    """Values in ``ds`` (recursively) that could identify: names, dates, times, text, IDs, instance UIDs."""
    out: set[str] = set()
    for elem in ds.iterall():
        if elem.keyword in _CODE_KEYWORDS or elem.VR not in ("PN", "DA", "DT", "TM", "LT", "ST", "UT", "UI", "SH", "LO"):
            continue
        out.update(v for v in _values(elem) if len(v) > 2 and not v.startswith("1.2.840.10008."))
    return out


def check_against_table(before: Dataset, after: Dataset, where: str = "") -> int:
    """Assert every Table E.1-1 attribute of ``before`` is handled in ``after`` as its Basic Profile code
    allows; recurse into sequences kept in both. Returns how many listed attributes were checked."""
    checked = 0
    for elem in before:
        tag = elem.tag
        if tag.is_private:
            assert tag not in after, f"{where}{tag} private attribute kept"
            continue
        row = lookup(int(tag))
        loc = f"{where}{elem.keyword or tag}"
        if row is None:
            if elem.VR == "SQ" and tag in after:
                for i, (a, b) in enumerate(zip(elem.value, after[tag].value, strict=False)):
                    checked += check_against_table(a, b, f"{loc}[{i}].")
            continue
        checked += 1
        code = row.basic
        present = tag in after
        new = after[tag] if present else None
        original = _values(elem)
        if code == "X":
            assert not present, f"{loc}: X but present"
        elif code == "K":
            assert present and _values(new) == original, f"{loc}: K but changed"
        elif code == "U":
            assert present, f"{loc}: U but removed"
            for old, v in zip(original, _values(new), strict=True):
                assert UID_RE.match(v) and len(v) <= 64 and v != old, f"{loc}: U gave {v!r} for {old!r}"
                assert v == keyed_uid(old, KEY)
        else:
            letters = set(code.replace("*", "").split("/"))
            if not present:
                assert "X" in letters, f"{loc}: {code} but removed"
                continue
            if elem.VR == "SQ":
                # a sequence is emptied, or its items' values are replaced: no identifying value survives
                kept = set().union(*(_identifying(i) for i in elem.value)) & _leaf_values(Dataset({tag: new}))
                assert not kept, f"{loc}: {code} kept {kept}"
                continue
            vals = _values(new)
            if not vals:
                assert "Z" in letters or not original, f"{loc}: {code} but emptied"
            else:
                assert "D" in letters or "Z" in letters, f"{loc}: {code} but has a value"
                for v in vals:
                    assert v not in original or v in ("ANONYMOUS", "0", "19000101", "000000"), \
                        f"{loc}: {code} kept the original value {v!r}"
    return checked


def test_table_rows_match_the_standard():
    table = load_table()
    assert len(table) > 600
    # actions every edition of PS3.15 Table E.1-1 gives these attributes
    expected = {"00100010": "Z", "00100030": "Z", "00080050": "Z", "0020000D": "U", "0020000E": "U",
                "00080018": "U", "00200052": "U", "0008103E": "X", "00081030": "X", "00101040": "X",
                "00081155": "U", "00080090": "Z", "0040A730": "D", "00101010": "X", "00080020": "Z"}
    for tag, code in expected.items():
        assert table[tag].basic == code, (tag, table[tag])
    assert table["00100020"].basic in ("Z", "Z/D")  # Patient ID: Z up to 2023, Z/D since 2024b
    # option columns: dates kept with Retain Longitudinal Full Dates, descriptors cleaned with Clean Descriptors
    assert table["00080020"].options["rtn_dates_full"] == "K"
    assert table["0008103E"].options["clean_descriptors"] == "C"
    assert table["00100040"].options["rtn_patient"] == "K"
    assert "rtn_dates_full" not in table["00100030"].options  # birth date is never retained by the option
    for row in table.values():  # a U row is a UID (or a sequence of them) in the data dictionary
        if row.basic == "U" and "X" not in row.tag:
            assert dictionary_VR(int(row.tag, 16)) in ("UI", "SQ"), row
    assert lookup(0x60023000).name == "Overlay Data" and lookup(0x50001234).name == "Curve Data"


@pytest.mark.parametrize("name", FILES)
def test_basic_profile_on_real_files(name):
    ds = _read(name)
    out = anonymize_dataset(ds, DeidOptions(), KEY)
    assert ds.SOPInstanceUID != out.SOPInstanceUID and ds.PatientName == _read(name).PatientName  # input unchanged
    assert check_against_table(ds, out) >= 5
    assert out.PatientIdentityRemoved == "YES"
    codes = [(i.CodeValue, i.CodingSchemeDesignator) for i in out.DeidentificationMethodCodeSequence]
    assert codes == [("113100", "DCM")]
    assert out.DeidentificationMethod
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert not [e for e in out.iterall() if e.tag.is_private]
    # no identifying value of the input survives anywhere in the output
    phi = {str(ds.get(k)) for k in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber",
                                    "InstitutionName", "ReferringPhysicianName") if len(str(ds.get(k) or "").strip()) > 2}
    assert phi and not (phi & _leaf_values(out)), phi & _leaf_values(out)
    if "PixelData" in ds:
        assert out.PixelData == ds.PixelData


def test_pixels_equal_after_write(tmp_path):
    ds = _read("CT_small.dcm")
    path = tmp_path / "a.dcm"
    anonymize_dataset(ds, DeidOptions(), KEY).save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    np.testing.assert_array_equal(back.pixel_array, ds.pixel_array)
    assert back.SOPInstanceUID == keyed_uid(ds.SOPInstanceUID, KEY)


def test_uids_reproducible_with_the_key_only():
    ds = _read("MR_small.dcm")
    a, b = anonymize_dataset(ds, None, KEY), anonymize_dataset(ds, None, KEY)
    c = anonymize_dataset(ds, None, b"another key of enough length!!")
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        assert a[kw].value == b[kw].value != c[kw].value
        assert a[kw].value.startswith("2.25.") and len(a[kw].value) <= 64
        uuid_int = int(a[kw].value[5:])
        assert (uuid_int >> 76) & 0xF == 8 and (uuid_int >> 62) & 0x3 == 2  # a version-8 UUID (RFC 9562)
    assert a.PatientID == a.PatientName == b.PatientID != c.PatientID
    assert str(ds.PatientID) not in a.PatientID


def test_seg_references_still_resolve():
    """The SEG's per-frame Source Image references and its Referenced Series items point at the same
    (new) UIDs, which are exactly what the referenced images get with the same key."""
    seg = _read("liver_expb.dcm")
    out = anonymize_dataset(seg, DeidOptions(), KEY)

    def refs(ds):
        return {str(e.value) for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}

    before, after = refs(seg), refs(out)
    assert before and len(after) == len(before)
    assert after == {keyed_uid(u, KEY) for u in before}
    ser_in = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
    assert out.ReferencedSeriesSequence[0].SeriesInstanceUID == keyed_uid(ser_in, KEY)
    assert out.FrameOfReferenceUID == keyed_uid(seg.FrameOfReferenceUID, KEY)


def test_sr_content_is_replaced():
    sr = _read("test-SR.dcm")
    out = anonymize_dataset(sr, DeidOptions(), KEY)
    texts_in = {str(e.value) for e in sr.iterall() if e.keyword in ("TextValue", "PersonName") and e.value}
    texts_out = {str(e.value) for e in out.iterall() if e.keyword in ("TextValue", "PersonName") and e.value}
    assert texts_in and not (texts_in & texts_out)


def test_overlay_plane_removed_with_its_data():
    ds = _read("MR-SIEMENS-DICOM-WithOverlays.dcm")
    assert any(e.tag.group == 0x6000 for e in ds)
    out = anonymize_dataset(ds, DeidOptions(), KEY)
    assert not any(e.tag.group & 0xFF00 == 0x6000 for e in out)


def test_keep_dates_option():
    ds = _read("CT_small.dcm")
    out = anonymize_dataset(ds, DeidOptions(keep_dates=True), KEY)
    assert out.StudyDate == ds.StudyDate and out.AcquisitionDate == ds.AcquisitionDate
    assert out.PatientBirthDate in ("", None) or out.PatientBirthDate != ds.PatientBirthDate
    assert [i.CodeValue for i in out.DeidentificationMethodCodeSequence] == ["113100", "113106"]
    assert out.LongitudinalTemporalInformationModified == "UNMODIFIED"


def test_keep_descriptors_cleans_identifying_values():
    ds = _read("MR_small.dcm")
    ds.StudyDescription = f"Head MR of {ds.PatientName} ({ds.PatientID})"
    ds.SeriesDescription = "T2 axial"
    plain = anonymize_dataset(ds, DeidOptions(), KEY)
    assert "StudyDescription" not in plain and "SeriesDescription" not in plain  # X in the Basic Profile
    kept = anonymize_dataset(ds, DeidOptions(keep_descriptors=True), KEY)
    assert kept.SeriesDescription == "T2 axial"
    assert kept.StudyDescription.startswith("Head MR of ")
    assert str(ds.PatientID) not in kept.StudyDescription
    assert "CompressedSamples" not in kept.StudyDescription and "MR1" not in kept.StudyDescription
    assert "113105" in [i.CodeValue for i in kept.DeidentificationMethodCodeSequence]


def test_patient_characteristics_option():
    ds = _read("CT_small.dcm")
    assert ds.PatientSex
    assert anonymize_dataset(ds, DeidOptions(), KEY).PatientSex in ("", None)
    assert anonymize_dataset(ds, DeidOptions(keep_patient_characteristics=True), KEY).PatientSex == ds.PatientSex


def test_burned_in_annotation_refused():
    ds = _read("MR_small.dcm")
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(BurnedInAnnotationError, match="Burned In Annotation"):
        anonymize_dataset(ds, DeidOptions(), KEY)


def _dciodvfy_errors(path) -> set[str]:
    res = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (res.stdout + res.stderr).splitlines()
    # UIDs differ by design; compare the messages with UIDs masked
    return {re.sub(r"\d+(\.\d+){2,}", "<uid>", line) for line in lines if line.startswith("Error")}


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed (apt-get install dicom3tools)")
@pytest.mark.parametrize("name", FILES)
def test_dciodvfy_no_new_errors(name, tmp_path):
    src = pydicom_test_file(name)
    ds = _read(name)
    dst = tmp_path / "out.dcm"
    anonymize_dataset(ds, DeidOptions(), KEY).save_as(dst, enforce_file_format=True)
    new = _dciodvfy_errors(dst) - _dciodvfy_errors(src)
    assert not new, new


@pytest.mark.shared
def test_shared_ct_stays_one_series(ct_series_dir, tmp_path, capsys):
    import json

    from medviewer.cli import main

    key = tmp_path / "key"
    key.write_bytes(KEY)
    out = tmp_path / "anon"
    assert main(["anonymize", str(ct_series_dir), "--out", str(out), "--pseudonym-key", str(key), "--quiet"]) == 0
    files = sorted(out.rglob("*.dcm"))
    assert len(files) == 134
    first_in = sorted(ct_series_dir.glob("*.dcm"))[0]
    src = pydicom.dcmread(first_in)
    dst = pydicom.dcmread(out.rglob("*.dcm").__next__())
    assert check_against_table(src, anonymize_dataset(src, DeidOptions(), KEY)) > 10
    assert dst.PatientIdentityRemoved == "YES"
    capsys.readouterr()
    assert main(["info", "--json", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["studies"]) == 1 and len(doc["studies"][0]["series"]) == 1
    series = doc["studies"][0]["series"][0]
    assert series["number_of_instances"] == 134 and not series["gaps"] and not series["duplicates"]
    assert series["series_instance_uid"] == keyed_uid(src.SeriesInstanceUID, KEY)
    assert doc["studies"][0]["patient_id"] != src.PatientID
    # pixels equal, slice for slice
    by_uid = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f for f in files}
    for f in sorted(ct_series_dir.glob("*.dcm"))[::33]:
        a = pydicom.dcmread(f)
        b = pydicom.dcmread(by_uid[keyed_uid(a.SOPInstanceUID, KEY)])
        np.testing.assert_array_equal(a.pixel_array, b.pixel_array)
    if shutil.which("dciodvfy"):
        assert not (_dciodvfy_errors(by_uid[keyed_uid(src.SOPInstanceUID, KEY)]) - _dciodvfy_errors(first_in))


def test_cli_anonymize_errors_and_audit(tmp_path, monkeypatch, capsys):
    from medviewer import audit
    from medviewer.cli import main

    monkeypatch.setenv(audit.AUDIT_DIR_ENV, str(tmp_path / "audit"))
    src = pydicom_test_file("RG1_UNCR.dcm")
    short = tmp_path / "short.key"
    short.write_text("abc")
    assert main(["anonymize", str(src), "--out", str(tmp_path / "o"), "--pseudonym-key", str(short)]) == 1
    assert "pseudonym key too short" in capsys.readouterr().err
    text = tmp_path / "notes.txt"
    text.write_text("not dicom")
    rc = main(["anonymize", str(src), str(text), "--out", str(tmp_path / "o"), "--quiet", "--keep-dates"])
    cap = capsys.readouterr()
    assert rc == 2 and "notes.txt: not a DICOM file" in cap.err and "Traceback" not in cap.err
    assert "1 instances de-identified" in cap.out
    written = list((tmp_path / "o").rglob("*.dcm"))
    assert len(written) == 1 and "RG1" not in str(written[0])
    recs = audit.read()
    assert recs[-1]["action"] == "de-identified" and recs[-1]["outcome"] == "minor failure"
    assert recs[-1]["objects"] == [{"type": "study", "uid": str(pydicom.dcmread(src).StudyInstanceUID)}]
    assert recs[-1]["detail"]["options"] == ["113100", "113106"]
    assert audit.verify().ok
    burned = tmp_path / "burned.dcm"
    ds = pydicom.dcmread(src)
    ds.BurnedInAnnotation = "YES"
    ds.save_as(burned)
    assert main(["anonymize", str(burned), "--out", str(tmp_path / "o2")]) == 1
    err = capsys.readouterr().err
    assert "Burned In Annotation is YES" in err and err.strip().splitlines()[-1].startswith("medviewer: error:")


def test_safe_private_list_keeps_only_listed_private_attributes():
    ds = _read("CT_small.dcm")
    assert ds[0x00431010].value == 400  # GEMS_PARM_01 (0043,xx10) Window value
    out = anonymize_dataset(ds, DeidOptions(safe_private=frozenset({(0x0043, "GEMS_PARM_01", 0x10)})), KEY)
    private = [e.tag for e in out if e.tag.is_private]
    assert private == [0x00430010, 0x00431010] and out[0x00431010].value == 400
    assert "113111" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
