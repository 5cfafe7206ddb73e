"""Reading state as a DICOM Grayscale Softcopy Presentation State: written with highdicom on the real CT,
dciodvfy clean, read back in the same place in pixels and mm; another vendor's GSPS (DISPLAY units, CIRCLE,
bounding-box text) read too."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medviewer.export.presentation_state import (
    GSPS_SOP_CLASS,
    Annotation,
    PresentationStateError,
    ReadingState,
    build_presentation_state,
    read_presentation_state,
)


def dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools, or bash .ci/system-packages.sh)")
    run = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]


@pytest.fixture(scope="module")
def ct_headers(ct_series_dir) -> list[Dataset]:
    return [pydicom.dcmread(ct_series_dir / f"1-{k:03d}.dcm", stop_before_pixels=True) for k in (60, 61, 62)]


def _state(uids: list[str]) -> ReadingState:
    return ReadingState(
        window=(40.0, 400.0), rotation=90, flip_h=True, displayed_area=(100.0, 80.0, 400.0, 380.0), creator="Doe^Jane",
        annotations=[Annotation("distance", [(10.5, 20.25), (110.5, 20.25)], uids[0], 0, "107.4 mm"),
                     Annotation("ellipse", [(200.0, 200.0), (260.0, 230.0)], uids[1], 0, "55 ± 10 HU"),
                     Annotation("rect", [(50.0, 60.0), (70.0, 100.0)], uids[1], 0, "mean 12 HU"),
                     Annotation("text", [(300.0, 300.0)], uids[2], 0, "cyst?")])


def test_gsps_round_trip_on_real_ct(ct_headers, tmp_path):
    uids = [str(d.SOPInstanceUID) for d in ct_headers]
    state = _state(uids)
    ds = build_presentation_state(ct_headers, state)
    path = tmp_path / "gsps.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    back = pydicom.dcmread(path)
    assert back.SOPClassUID == GSPS_SOP_CLASS and back.Modality == "PR"
    assert back.StudyInstanceUID == ct_headers[0].StudyInstanceUID
    assert back.SeriesInstanceUID != ct_headers[0].SeriesInstanceUID
    assert back.PatientID == ct_headers[0].PatientID
    referenced = {str(i.ReferencedSOPInstanceUID) for s in back.ReferencedSeriesSequence
                  for i in s.ReferencedImageSequence}
    assert referenced == set(uids)
    read = read_presentation_state(back)
    assert read.window == (40.0, 400.0) and read.rotation == 90 and read.flip_h
    assert read.displayed_area == (100.0, 80.0, 400.0, 380.0)
    assert read.creator == "Doe^Jane" and read.label == "MEASUREMENTS" and len(read.created) == 14
    by_kind = {a.kind: a for a in read.annotations}
    assert set(by_kind) == {"distance", "ellipse", "rect", "text"}
    for want in state.annotations:  # every measurement back on its image, at the same pixels, with its label
        got = by_kind[want.kind]
        assert got.sop_instance_uid == want.sop_instance_uid and got.frame == 0
        assert np.allclose(got.points, want.points) and got.text == want.text
    # drawn from the bottom-right to the top-left: the same rectangle, its label still attached
    flipped = ReadingState(annotations=[Annotation("rect", [(70.0, 100.0), (50.0, 60.0)], uids[0], 0, "r")])
    (rect,) = read_presentation_state(build_presentation_state(ct_headers, flipped)).annotations
    assert rect.kind == "rect" and rect.points == [(50.0, 60.0), (70.0, 100.0)] and rect.text == "r"
    # the distance in mm is the same: pixel spacing of the image it is on
    ps = [float(v) for v in ct_headers[0].PixelSpacing]
    (x0, y0), (x1, y1) = by_kind["distance"].points
    assert math.hypot((x1 - x0) * ps[1], (y1 - y0) * ps[0]) == pytest.approx(107.421875)
    # the ellipse is a DICOM ELLIPSE: major axis (horizontal, 60 px) first
    objs = [o for g in back.GraphicAnnotationSequence for o in g.get("GraphicObjectSequence", [])]
    ellipse = next(o for o in objs if o.GraphicType == "ELLIPSE")
    assert [float(v) for v in ellipse.GraphicData] == [200, 215, 260, 215, 230, 200, 230, 230]
    assert {o.GraphicAnnotationUnits for o in objs} == {"PIXEL"}


def test_gsps_refuses_bad_input(ct_headers):
    uids = [str(d.SOPInstanceUID) for d in ct_headers]
    with pytest.raises(PresentationStateError, match="not among the referenced images"):
        build_presentation_state(ct_headers[:1], ReadingState(annotations=[Annotation("distance", [(0, 0), (1, 1)],
                                                                                      uids[2])]))
    with pytest.raises(PresentationStateError, match="rotation 45"):
        build_presentation_state(ct_headers, ReadingState(rotation=45))
    with pytest.raises(PresentationStateError, match="width must be at least 1"):
        build_presentation_state(ct_headers, ReadingState(window=(40.0, 0.0)))
    with pytest.raises(PresentationStateError, match="no area"):
        build_presentation_state(ct_headers, ReadingState(annotations=[Annotation("ellipse", [(5, 5), (5, 9)],
                                                                                  uids[0])]))
    with pytest.raises(PresentationStateError, match="at least one image"):
        build_presentation_state([], ReadingState())
    with pytest.raises(PresentationStateError, match="not a Grayscale Softcopy"):
        read_presentation_state(ct_headers[0])


def _vendor_gsps(source: Dataset) -> Dataset:
    """A GSPS as another vendor writes it with plain pydicom: DISPLAY units over a displayed area, a CIRCLE,
    an open 3-point polyline, a POINT and a text object placed by its bounding box only."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = GSPS_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = GSPS_SOP_CLASS, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.Modality = source.StudyInstanceUID, "PR"
    ds.ContentLabel, ds.PresentationCreationDate, ds.PresentationCreationTime = "VENDOR_X", "20240102", "030405"
    area = Dataset()
    area.DisplayedAreaTopLeftHandCorner = [1, 1]
    area.DisplayedAreaBottomRightHandCorner = [512, 512]
    area.PresentationSizeMode = "SCALE TO FIT"
    area.PresentationPixelSpacing = [1.07421875, 1.07421875]
    ds.DisplayedAreaSelectionSequence = [area]
    voi = Dataset()
    voi.WindowCenter, voi.WindowWidth = "50", "350"
    ds.SoftcopyVOILUTSequence = [voi]
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID

    def graphic(kind: str, data: list[float], units: str = "DISPLAY") -> Dataset:
        g = Dataset()
        g.GraphicAnnotationUnits, g.GraphicDimensions, g.NumberOfGraphicPoints = units, 2, len(data) // 2
        g.GraphicData, g.GraphicType, g.GraphicFilled = data, kind, "N"
        return g
    text = Dataset()
    text.BoundingBoxAnnotationUnits = "PIXEL"
    text.BoundingBoxTopLeftHandCorner, text.BoundingBoxBottomRightHandCorner = [20.0, 30.0], [120.0, 50.0]
    text.BoundingBoxTextHorizontalJustification = "LEFT"
    text.UnformattedTextValue = "vendor note"
    group = Dataset()
    group.ReferencedImageSequence = [ref]
    group.GraphicLayer = "VENDOR"
    group.GraphicObjectSequence = [graphic("CIRCLE", [0.5, 0.5, 0.5, 0.625]),
                                   graphic("POLYLINE", [0.0, 0.0, 0.25, 0.25, 0.5, 0.0]),
                                   graphic("POINT", [100.0, 200.0], "PIXEL")]
    group.TextObjectSequence = [text]
    ds.GraphicAnnotationSequence = [group]
    return ds


def test_reads_another_vendors_gsps(ct_headers, tmp_path):
    path = tmp_path / "vendor.dcm"
    _vendor_gsps(ct_headers[0]).save_as(path, enforce_file_format=True)
    state = read_presentation_state(pydicom.dcmread(path))
    assert state.window == (50.0, 350.0) and state.label == "VENDOR_X" and state.created == "20240102030405"
    assert state.displayed_area == (0.0, 0.0, 512.0, 512.0)
    kinds = {a.kind: a for a in state.annotations}
    assert set(kinds) == {"ellipse", "polyline", "point", "text"}
    # the circle: centre (256, 256), radius 0.125 of 512 = 64 pixels
    assert np.allclose(kinds["ellipse"].points, [(192, 192), (320, 320)])
    assert np.allclose(kinds["polyline"].points, [(0, 0), (128, 128), (256, 0)])
    assert kinds["point"].points == [(100.0, 200.0)]
    assert kinds["text"].text == "vendor note" and kinds["text"].points == [(20.0, 30.0)]
    assert all(a.sop_instance_uid == str(ct_headers[0].SOPInstanceUID) for a in state.annotations)


@pytest.mark.parametrize("rotation", [0, 90, 180, 270])
@pytest.mark.parametrize("flip_h", [False, True])
@pytest.mark.parametrize("flip_v", [False, True])
def test_viewport_geometry_to_gsps_and_back(rotation, flip_h, flip_v):
    """The viewport flips, then rotates; a GSPS rotates, then flips (PS3.3 C.10.6): the conversion shows the
    image the same way, and converting back gives an equivalent viewport."""
    from medviewer.workstation.presentation import _from_dicom, _to_dicom
    from medviewer.workstation.viewport import ViewState

    def ours(r: int, fh: bool, fv: bool) -> np.ndarray:
        s = ViewState(image_w=100, image_h=100, rotation=r, flip_h=fh, flip_v=fv, center=(0.0, 0.0))
        return s.matrix(0, 0)[:2, :2]

    r_d, f_d = _to_dicom(rotation, flip_h, flip_v)
    a = math.radians(r_d)
    rot = np.array([[round(math.cos(a)), -round(math.sin(a))], [round(math.sin(a)), round(math.cos(a))]])
    dicom = np.diag([-1.0 if f_d else 1.0, 1.0]) @ rot  # rotate clockwise first, then flip horizontally
    assert np.allclose(ours(rotation, flip_h, flip_v), dicom)
    assert np.allclose(ours(*_from_dicom(r_d, f_d)), dicom)


@pytest.mark.parametrize("rotation,flip", [(90, False), (180, True), (270, False), (0, True)])
def test_displayed_area_corners_follow_the_transformation(ct_headers, tmp_path, rotation, flip):
    state = ReadingState(rotation=rotation, flip_h=flip, displayed_area=(100.0, 80.0, 400.0, 380.0))
    path = tmp_path / "area.dcm"
    build_presentation_state(ct_headers, state).save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    back = read_presentation_state(pydicom.dcmread(path))
    assert back.displayed_area == (100.0, 80.0, 400.0, 380.0)
    assert (back.rotation, back.flip_h) == (rotation, flip)
