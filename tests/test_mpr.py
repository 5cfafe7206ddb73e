"""Multiplanar reformats on the real 134-slice CT: geometry, aspect in mm, slabs, one renderer, refusals."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest

import medviewer.cli as cli
from medviewer.imaging import Window, display_image
from medviewer.imaging.mpr import VolumeError, build_volume, orientation_label
from medviewer.io import scan


@pytest.fixture(scope="module")
def ct_series(ct_series_dir):
    (series,) = scan(ct_series_dir).series
    return series


@pytest.fixture(scope="module")
def volume(ct_series):
    return build_volume(ct_series)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _expected_height(series, width: int) -> float:
    """(slices x spacing between slice positions) / (columns x pixel spacing) x width, from the headers."""
    first, last = series.instances[0], series.instances[-1]
    n = len(series.instances)
    spacing = abs(first.image_position_patient[2] - last.image_position_patient[2]) / (n - 1)
    return width * (n * spacing) / (first.columns * first.pixel_spacing[1])


# ------------------------------------------------------------------ geometry
def test_volume_geometry_from_positions_not_thickness(volume, ct_series):
    assert volume.shape == (134, 512, 512)
    assert volume.spacing[0] == pytest.approx(3.0, abs=1e-6)
    assert volume.spacing[1:] == pytest.approx(ct_series.instances[0].pixel_spacing)
    # first slice of the display order (superior) is voxel 0; the stack runs towards the feet
    assert volume.origin == pytest.approx(ct_series.instances[0].image_position_patient)
    assert volume.directions[0] == pytest.approx([0, 0, -1])
    p = volume.to_patient([133, 511, 511])
    assert p == pytest.approx(np.asarray(ct_series.instances[-1].image_position_patient) + [511 * 1.07421875,
                                                                                            511 * 1.07421875, 0])
    assert volume.to_voxel(p) == pytest.approx([133, 511, 511])


def test_planes_are_views_with_labels_and_mm_aspect(volume):
    axial, coronal, sagittal = (volume.plane(n) for n in ("axial", "coronal", "sagittal"))
    for plane in (axial, coronal, sagittal):
        v = volume.view(plane, plane.count // 2)
        assert np.shares_memory(v, volume.stored)  # a strided view, never a copy of the volume
    assert axial.labels == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert coronal.labels == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert sagittal.labels == {"left": "A", "right": "P", "top": "S", "bottom": "I"}
    assert coronal.shape == (134, 512) and coronal.size == (round(134 * 3 / 1.07421875), 512)
    assert orientation_label([0.8, -0.5, 0]) == "LA"
    # coronal plane row r is axial slice r: the same stored values, in the same left-right order
    assert np.array_equal(volume.view(coronal, 300)[40], volume.view(axial, 40)[300])
    assert np.array_equal(volume.view(sagittal, 250)[40], volume.view(axial, 40)[:, 250])


def test_axial_plane_is_the_viewer_image(volume, ct_series):
    """One renderer: the acquired plane of the MPR equals display_image of that file, pixel for pixel."""
    axial = volume.plane("axial")
    for k in (0, 70, 133):
        assert np.array_equal(volume.render(axial, k), display_image(ct_series.instances[k]))
    w = Window(400, 1800)
    assert np.array_equal(volume.render(axial, 70, w), display_image(ct_series.instances[70], window=w))


def test_coronal_matches_naive_reference(volume, ct_series):
    """Against an independent reference: pydicom pixel_array -> HU -> window 60/400 -> cv2.resize."""
    stack = np.stack([pydicom.dcmread(i.path).pixel_array for i in ct_series.instances])
    hu = stack[:, 200, :].astype(np.float64) - 1000.0
    ref = np.clip((hu - (60 - 0.5)) / (400 - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1 linear window
    ref = cv2.resize(np.rint(ref * 255).astype(np.uint8), (512, 374), interpolation=cv2.INTER_LINEAR)
    ours = volume.render(volume.plane("coronal"), 200)
    assert ours.shape == ref.shape
    assert np.abs(ours.astype(int) - ref).max() <= 1


def test_position_and_index(volume):
    axial = volume.plane("axial")
    assert volume.index_at(axial, 484.91) == 0 and volume.index_at(axial, 85.91) == 133
    assert volume.position_of(axial, 10) == pytest.approx(484.91 - 30)
    coronal = volume.plane("coronal")
    assert volume.index_at(coronal, volume.position_of(coronal, 123)) == 123
    with pytest.raises(VolumeError, match="outside the axial range"):
        volume.index_at(axial, 0.0)


def test_slabs(volume):
    coronal = volume.plane("coronal")
    single = volume.slab(coronal, 256)
    assert volume.slab_range(coronal, 256, 20.0) == (247, 266)  # 19 planes of 1.074 mm
    mip = volume.slab(coronal, 256, 20.0, "mip")
    minip = volume.slab(coronal, 256, 20.0, "minip")
    mean = volume.slab(coronal, 256, 20.0, "mean")
    ref = volume.stored[:, 247:266, :]
    assert np.array_equal(mip, ref.max(axis=1)) and np.array_equal(minip, ref.min(axis=1))
    assert np.abs(mean.astype(float) - ref.mean(axis=1)).max() <= 0.5
    assert (mip >= single).all() and (minip <= single).all() and (mip > single).mean() > 0.5
    axial = volume.plane("axial")
    assert volume.slab_range(axial, 0, 20.0) == (0, 4)  # 7 slices of 3 mm, clipped at the top
    assert np.array_equal(volume.slab(axial, 0, 20.0), volume.stored[0:4].max(axis=0))


# ------------------------------------------------------------------ the command line
@pytest.mark.parametrize("plane", ["coronal", "sagittal"])
def test_render_aspect_in_mm(capsys, tmp_path, ct_series_dir, ct_series, plane):
    out = tmp_path / f"{plane}.png"
    code, stdout, err = run_cli(capsys, "render", ct_series_dir, "--plane", plane, "--out", out)
    assert code == 0, err
    image = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    h, w = image.shape
    assert w == 512
    assert abs(h - _expected_height(ct_series, w)) <= 1.0, (h, _expected_height(ct_series, w))
    assert f"{plane} 256/511" in stdout


def test_render_mip_slab_brighter_on_bone(capsys, tmp_path, ct_series_dir, volume):
    single, mip = tmp_path / "single.png", tmp_path / "mip.png"
    common = ("--plane", "coronal", "--index", "300", "--preset", "bone")
    assert run_cli(capsys, "render", ct_series_dir, *common, "--out", single)[0] == 0
    code, stdout, _ = run_cli(capsys, "render", ct_series_dir, *common, "--slab", "20", "--projection", "mip",
                              "--out", mip)
    assert code == 0 and "mip slab of 19 planes" in stdout
    a = cv2.imread(str(single), cv2.IMREAD_UNCHANGED).astype(int)
    b = cv2.imread(str(mip), cv2.IMREAD_UNCHANGED).astype(int)
    assert a.shape == b.shape
    assert (b >= a).all()
    bone = volume.pipeline.modality_values(volume.slab(volume.plane("coronal"), 300, 20.0)) > 300
    bone = cv2.resize(bone.astype(np.uint8), (a.shape[1], a.shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    assert bone.sum() > 1000
    assert b[bone].mean() > a[bone].mean() + 20  # the ribs and spine of 19 planes, not of one
    # --position picks the same plane as --index; the result is the pixels of Volume.render
    pos = volume.position_of(volume.plane("coronal"), 300)
    again = tmp_path / "again.png"
    assert run_cli(capsys, "render", ct_series_dir, "--plane", "coronal", "--position", f"{pos:.4f}",
                   "--preset", "bone", "--out", again)[0] == 0
    assert np.array_equal(cv2.imread(str(again), cv2.IMREAD_UNCHANGED), a)


def test_render_plane_errors_are_one_line(capsys, tmp_path, ct_series_dir):
    for args, needle in ((("--plane", "axial", "--index", "134"), "out of range"),
                         (("--plane", "axial", "--position", "9999"), "outside the axial range"),
                         (("--slab", "20"), "need --plane"),
                         (("--plane", "axial", "--slab", "-1"), "slab thickness")):
        code, _, err = run_cli(capsys, "render", ct_series_dir, *args, "--out", tmp_path / "x.png")
        lines = err.strip().splitlines()
        assert code != 0 and len(lines) == 1 and lines[0].startswith("medviewer: error: "), err
        assert needle in lines[0]


# ------------------------------------------------------------------ refusals, on real files changed in a tmp dir
def _copy(ct_series, tmp_path: Path, keep=range(60, 72), edit=None) -> Path:
    """Slices `keep` of the real series into tmp_path, `edit(k, ds)` applied to each dataset."""
    folder = tmp_path / "series"
    folder.mkdir()
    for k in keep:
        src = ct_series.instances[k].path
        if edit is None:
            shutil.copy(src, folder / src.name)
            continue
        ds = pydicom.dcmread(src)
        edit(k, ds)
        ds.save_as(folder / src.name)
    return folder


def _refusal(capsys, folder: Path, tmp_path: Path) -> str:
    code, _, err = run_cli(capsys, "render", folder, "--plane", "coronal", "--out", tmp_path / "x.png")
    lines = err.strip().splitlines()
    assert code != 0 and len(lines) == 1 and lines[0].startswith("medviewer: error: "), err
    assert "Traceback" not in err and not (tmp_path / "x.png").exists()
    return lines[0]


def test_refuses_missing_slice(capsys, tmp_path, ct_series):
    folder = _copy(ct_series, tmp_path, keep=[k for k in range(60, 72) if k != 65])
    line = _refusal(capsys, folder, tmp_path)
    assert "1 slice(s) missing between 1-065.dcm and 1-067.dcm (6.00 mm apart, spacing 3.00 mm)" in line


def test_refuses_mixed_orientation(capsys, tmp_path, ct_series):
    def rotate(k, ds):
        if k == 66:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal image in an axial series
    line = _refusal(capsys, _copy(ct_series, tmp_path, edit=rotate), tmp_path)
    assert "mixed orientation" in line and "1-067.dcm" in line


def test_gantry_tilt_is_shear_corrected_not_refused(capsys, tmp_path, ct_series):
    def tilt(k, ds):  # 15 degree gantry tilt: each slice origin moves in-plane (y) as z advances
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (k - 60) * 3.0 * math.tan(math.radians(15)), z]
    folder = _copy(ct_series, tmp_path, edit=tilt)
    code, out, err = run_cli(capsys, "render", folder, "--plane", "coronal", "--out", tmp_path / "c.png")
    assert code == 0 and "Traceback" not in err, err
    assert cv2.imread(str(tmp_path / "c.png"), cv2.IMREAD_GRAYSCALE).shape == (round(12 * 3 / 1.07421875), 512)
    vol = build_volume(scan(folder).series[0])
    assert vol.tilt_deg == pytest.approx(15.0, abs=0.01) and vol.spacing[0] == pytest.approx(3.0)


def test_refuses_gantry_tilt_beyond_45_degrees(capsys, tmp_path, ct_series):
    def tilt(k, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + (k - 60) * 3.0 * math.tan(math.radians(60)), z]
    line = _refusal(capsys, _copy(ct_series, tmp_path, edit=tilt), tmp_path)
    assert "gantry/detector tilt of 60.0 degrees (more than 45)" in line


def test_refuses_unequal_spacing_and_duplicates(ct_series, tmp_path):
    insts = list(ct_series.instances[60:72])
    with pytest.raises(VolumeError, match="at least 2 slices"):
        build_volume(insts[:1])
    with pytest.raises(VolumeError, match="same position"):
        build_volume(insts + [insts[3]])
    folder = _copy(ct_series, tmp_path, edit=lambda k, ds: setattr(
        ds, "ImagePositionPatient", [*list(ds.ImagePositionPatient)[:2], float(ds.ImagePositionPatient[2])
                                     + (0.5 if k == 66 else 0.0)]))
    with pytest.raises(VolumeError, match=r"unequal slice spacing \(2.50 to 3.50 mm"):
        build_volume(scan(folder).series[0])


def test_small_real_volume_builds(ct_series, tmp_path):
    """The 12 copied slices (unchanged) form a volume whose coronal plane is 12 x 3 mm tall."""
    vol = build_volume(scan(_copy(ct_series, tmp_path)).series[0])
    coronal = vol.plane("coronal")
    assert vol.shape == (12, 512, 512) and coronal.size == (round(12 * 3 / 1.07421875), 512)
    assert np.array_equal(vol.stored, build_volume(ct_series).stored[60:72])


def test_sagittal_slabs_match_numpy(volume):
    sagittal = volume.plane("sagittal")
    first, stop = volume.slab_range(sagittal, 250, 20.0)
    ref = volume.stored[:, :, first:stop]
    assert np.array_equal(volume.slab(sagittal, 250, 20.0, "mip"), ref.max(axis=2))
    assert np.array_equal(volume.slab(sagittal, 250, 20.0, "minip"), ref.min(axis=2))
    assert np.abs(volume.slab(sagittal, 250, 20.0, "mean").astype(float) - ref.mean(axis=2)).max() <= 0.5


# ------------------------------------------------------------------ the Qt-free MPR model (crosshair, window, slab)
def test_mpr_model_linked_crosshair(volume):
    from medviewer.workstation.mpr import MprModel

    m = MprModel(volume)
    seen = []
    m.changed.connect(seen.append)
    assert (m.index("axial"), m.index("coronal"), m.index("sagittal")) == (66, 255, 255)
    # a click on the coronal plane moves the point within it: axial and sagittal follow, coronal stays
    coronal = m.planes["coronal"]
    m.click("coronal", 100.5, 187.0)
    assert m.index("coronal") == 255 and m.index("sagittal") == 100
    assert m.index("axial") == int(round(187.0 * 134 / coronal.size[0] - 0.5))
    assert seen == ["crosshair"]
    assert m.crosshair_display("coronal") == pytest.approx((100.5, (m.index("axial") + 0.5) * coronal.size[0] / 134))
    # the other planes appear as lines through the crosshair: sagittal vertical, axial horizontal
    lines = dict((o, (k, pos)) for o, k, pos in m.reference_lines("coronal"))
    assert lines["sagittal"][0] == "v" and lines["axial"][0] == "h"
    assert lines["sagittal"][1] == pytest.approx(100.5)
    # scrolling the axial plane moves the point along z by one slice spacing (towards the feet)
    k = m.index("axial")
    m.step("axial", 1)
    assert m.index("axial") == k + 1 and m.crosshair[2] == pytest.approx(484.91 - 3.0 * (k + 1))
    m.step("axial", 1)
    assert m.crosshair[2] == pytest.approx(484.91 - 3.0 * (k + 2))
    m.step("axial", 10_000)
    assert m.index("axial") == 133  # clipped into the volume
    assert m.value_at_crosshair() == float(volume.stored[133, 255, 100]) - 1000.0


def test_mpr_model_images_window_and_slab(volume):
    from medviewer.workstation.mpr import MprModel

    m = MprModel(volume)
    img = m.image("sagittal")
    assert img is m.image("sagittal")  # cached until something it depends on changes
    assert np.array_equal(img, volume.render(volume.plane("sagittal"), m.index("sagittal")))
    m.set_window(400, 1800)  # shared by the three planes
    for name in ("axial", "coronal", "sagittal"):
        assert np.array_equal(m.image(name), volume.render(volume.plane(name), m.index(name), Window(400, 1800)))
    single = m.image("coronal").astype(int)
    m.set_slab(20.0, "mip")
    assert (m.image("coronal").astype(int) >= single).all() and "MIP 20.4 mm" in m.caption("coronal")
    with pytest.raises(ValueError):
        m.set_slab(-1.0)
    assert m.distance_mm("coronal", (10, 10), (110, 10)) == pytest.approx(100 * 1.07421875)
    assert m.distance_mm("coronal", (10, 10), (10, 110)) == pytest.approx(100 * 134 * 3 / 374)
    assert m.labels("sagittal") == {"left": "A", "right": "P", "top": "S", "bottom": "I"}


def test_sagittal_acquisition_is_reoriented(ct_series, tmp_path):
    """Real slices relabelled as a sagittal acquisition (rows run anterior->posterior, columns head->feet,
    slices left->right): the axial plane is then a reformat, still shown from the feet with anterior up."""
    def sagittal(k, ds):
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-50.0 + 3.0 * (k - 60), -100.0, 200.0]
    vol = build_volume(scan(_copy(ct_series, tmp_path, edit=sagittal)).series[0])
    assert vol.directions == pytest.approx(np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]]))
    planes = {n: vol.plane(n) for n in ("axial", "coronal", "sagittal")}
    assert planes["sagittal"].axis == 0 and planes["sagittal"].labels == {"left": "A", "right": "P", "top": "S",
                                                                           "bottom": "I"}
    axial = planes["axial"]
    assert axial.axis == 1 and axial.labels == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert axial.shape == (512, 12) and axial.size == (512, round(12 * 3 / 1.07421875))
    # screen right = patient left (+x = slice order), screen down = posterior (+y = column order)
    assert np.array_equal(vol.view(axial, 100), vol.stored[:, 100, :].T)
    coronal = planes["coronal"]
    assert coronal.axis == 2 and coronal.labels == {"left": "R", "right": "L", "top": "S", "bottom": "I"}
    assert np.array_equal(vol.view(coronal, 30), vol.stored[:, :, 30].T)
    # display <-> patient round trip on a reformatted plane
    p = vol.to_patient(axial.to_voxel(7.5, 300.5, 100))
    assert axial.to_display(vol.to_voxel(p)) == pytest.approx((7.5, 300.5))
    assert vol.index_at(axial, vol.position_of(axial, 100)) == 100


def test_mpr_measurements_in_mm_and_hu(volume, ct_series):
    from medviewer.workstation.mpr import MprModel

    m = MprModel(volume)
    # 100 display pixels, vertical: 134 slices x 3 mm over 374 display rows (1.0749 mm each)
    d = m.add_distance("coronal", (100.0, 50.0), (100.0, 150.0))
    assert d.length_mm == pytest.approx(100 * 134 * 3 / 374) and d.label() == "107.5 mm"
    assert d.p0[1] == pytest.approx(d.p1[1])  # both on the coronal plane shown (same y)
    s = m.add_distance("sagittal", (0.0, 0.0), (300.0, 400.0))
    assert s.length_mm == pytest.approx(math.hypot(300 * 1.07421875, 400 * 134 * 3 / 374))
    assert m.display_of("sagittal", s.p1) == pytest.approx((300.0, 400.0))
    # shown on the plane it was drawn on, not on the next one
    assert m.measurements_on("coronal") == [d]
    m.step("coronal", 1)
    assert m.measurements_on("coronal") == []
    m.step("coronal", -1)
    # an ellipse ROI on the acquired plane: the statistics of exactly the voxels whose centres are inside,
    # checked against pydicom's pixels of that file
    k = m.index("axial")
    roi = m.add_ellipse("axial", (10.0, 10.0), (60.0, 60.0))
    hu = pydicom.dcmread(ct_series.instances[k].path).pixel_array.astype(float) - 1000.0
    yy, xx = np.mgrid[0:512, 0:512] + 0.5
    inside = ((xx - 35) / 25) ** 2 + ((yy - 35) / 25) ** 2 <= 1
    assert roi.stats["n"] == inside.sum() and roi.stats["mean"] == pytest.approx(hu[inside].mean())
    assert roi.stats["sd"] == pytest.approx(hu[inside].std(ddof=1)) and roi.stats["mean"] < -900  # air
    assert roi.stats["area_mm2"] == pytest.approx(math.pi * 25 * 25 * 1.07421875 ** 2)
    # on the coronal reformat, voxels are 3 mm tall: about a third as many in the same area
    c = m.add_ellipse("coronal", (200.0, 150.0), (300.0, 250.0))
    assert c.stats["area_mm2"] == pytest.approx(math.pi * 50 * 1.07421875 * 50 * 134 * 3 / 374)
    assert c.stats["n"] * 3.0 * 1.07421875 == pytest.approx(c.stats["area_mm2"], rel=0.05)
    with pytest.raises(ValueError):
        m.add_ellipse("axial", (10.0, 10.0), (10.0, 30.0))
    m.clear_measurements()
    assert m.measurements == []
