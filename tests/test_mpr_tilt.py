"""Gantry/detector tilt on the real CT: a sheared stack is shear-corrected (every voxel at its true patient
position), not refused and not shown skewed. Tilted copies of the shared 134-slice CT are made in memory
(Image Orientation/Position (Patient) changed with dataclasses.replace; pixels shifted where the test says)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from medviewer.imaging.mpr import MAX_TILT_DEG, VolumeError, build_volume, volume_problem
from medviewer.io import scan

KEEP = slice(40, 100)  # 60 slices, 3 mm apart


@pytest.fixture(scope="module")
def slices(ct_series_dir):
    return list(scan(ct_series_dir).series[0].instances[KEEP])


@pytest.fixture(scope="module")
def original(slices):
    return build_volume(slices)


def test_the_untilted_stack_is_not_touched(original):
    assert original.tilt_deg == 0.0 and original.shifts is None and original.notes == []


def test_sheared_acquisition_is_corrected_back_to_the_anatomy(slices, original):
    """Axial slices whose field of view moves 1 row (1.074 mm) further posterior per 3 mm slice: the files'
    pixels are the anatomy shifted up by k rows and Image Position (Patient) says so. Shear correction must
    give back the untilted volume voxel for voxel (whole-pixel shifts: no interpolation)."""
    rs = slices[0].pixel_spacing[0]
    pad = int(original.stored[0].min())
    sheared, pixels = [], {}
    for k, inst in enumerate(slices):
        x, y, z = inst.image_position_patient
        sheared.append(dataclasses.replace(inst, image_position_patient=(x, y + k * rs, z)))
        moved = np.full_like(original.stored[k], pad)
        moved[: moved.shape[0] - k] = original.stored[k, k:]  # file row i' shows anatomy row i' + k
        pixels[k] = moved
    vol = build_volume(sheared, pixels=pixels.__getitem__)
    assert vol.tilt_deg == pytest.approx(math.degrees(math.atan2(rs, 3.0)), abs=0.05)  # 19.7 degrees
    assert vol.shifts[:, 0] == pytest.approx(np.arange(len(slices)), abs=1e-6) and not vol.shifts[:, 1].any()
    assert vol.spacing == pytest.approx(original.spacing) and vol.directions == pytest.approx(original.directions)
    assert vol.origin == pytest.approx(original.origin)
    for k in (0, 1, 30, 59):
        assert np.array_equal(vol.stored[k, k:], original.stored[k, k:]), k  # the anatomy, where it was imaged
        assert (vol.stored[k, :k] == pad).all()  # rows never imaged in this slice: padding
    assert "shear-corrected" in vol.notes[0] and "19.7 degrees" in vol.notes[0]
    # the coronal reformat now equals the untilted one below the padded wedge
    cor = vol.plane("coronal")
    i = 300
    assert np.array_equal(vol.view(cor, i)[:, :], original.view(original.plane("coronal"), i))
    # without the correction the coronal image would be skewed: the same plane of the raw stack differs
    raw = np.stack([pixels[k] for k in range(len(slices))])
    assert not np.array_equal(raw[:, i, :], original.stored[:, i, :])


def test_tilted_gantry_orientation_is_corrected_with_true_positions(slices, original):
    """A tilted CT gantry: Image Orientation (Patient) turned about the x axis by t, the table moving along z
    (positions unchanged). With sin t = row spacing / 3 mm the shift per slice is one whole row, so every
    corrected voxel must equal the file pixel at the same patient position."""
    rs = slices[0].pixel_spacing[0]
    t = math.asin(rs / 3.0)  # 21.0 degrees
    iop = (1.0, 0.0, 0.0, 0.0, math.cos(t), math.sin(t))
    tilted = [dataclasses.replace(inst, image_orientation_patient=iop) for inst in slices]
    reason, _ = volume_problem(tilted)
    assert reason is None
    vol = build_volume(tilted)
    assert vol.tilt_deg == pytest.approx(math.degrees(t), abs=0.05)
    assert vol.spacing[0] == pytest.approx(3.0 * math.cos(t), abs=1e-3)  # 2.80 mm between slice planes
    assert vol.directions @ vol.directions.T == pytest.approx(np.eye(3), abs=1e-9)  # orthonormal grid
    shift = np.rint(vol.shifts[:, 0]).astype(int)
    assert vol.shifts[:, 0] == pytest.approx(shift, abs=1e-6) and abs(shift[-1]) == len(slices) - 1
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    for k, i, j in [(0, 200, 256), (10, 250, 100), (45, 300, 400), (59, 380, 256)]:
        inst = tilted[k]
        p = np.asarray(inst.image_position_patient) + i * rs * col_dir + j * inst.pixel_spacing[1] * row_dir
        voxel = vol.to_voxel(p)  # the file pixel's patient position in the corrected grid
        assert voxel == pytest.approx([k, i + shift[k], j], abs=1e-6)
        assert vol.stored[k, i + shift[k], j] == original.stored[k, i, j]  # the same value is there
        file_hu = float(vol.pipeline.modality_values(inst.stored_pixels(0)[i:i + 1, j])[0])
        assert vol.hu_at(voxel) == file_hu
    # the planes still read as the patient's, the tilt showing in the letters of the slice direction
    assert vol.plane("coronal").labels == {"left": "R", "right": "L", "top": "SA", "bottom": "IP"}
    assert vol.plane("axial").labels["top"] == "AI" and vol.plane("axial").count == len(slices)


def test_fractional_tilt_interpolates_and_too_much_tilt_is_refused(slices, original):
    def tilt(deg):
        out = []
        for k, inst in enumerate(slices):
            x, y, z = inst.image_position_patient
            out.append(dataclasses.replace(inst, image_position_patient=(x, y + k * 3.0 * math.tan(math.radians(deg)),
                                                                         z)))
        return out

    vol = build_volume(tilt(15))
    assert vol.tilt_deg == pytest.approx(15.0, abs=0.01) and "15.0 degrees shear-corrected" in vol.notes[0]
    k = 20  # shifted by 20 x 0.748 = 14.96 rows: bilinear between file rows, within the neighbours' range
    d = vol.shifts[k, 0]
    i0 = 250
    src = original.stored[k].astype(float)
    lo, hi = np.minimum(src[i0 - int(np.ceil(d))], src[i0 - int(np.floor(d))]), \
        np.maximum(src[i0 - int(np.ceil(d))], src[i0 - int(np.floor(d))])
    got = vol.stored[k, i0].astype(float)
    assert ((got >= lo - 1) & (got <= hi + 1)).all()
    with pytest.raises(VolumeError, match=rf"tilt of 50.0 degrees \(more than {MAX_TILT_DEG:g}\)"):
        build_volume(tilt(50))


def test_cli_render_says_the_stack_was_shear_corrected(ct_series_dir, tmp_path, capsys):
    """`medviewer render` of a tilted series written to disk: the picture, and a note on stderr that the
    stack was shear-corrected (the same words as the MPR view's status line)."""
    import pydicom

    from medviewer.cli import main

    files = sorted(ct_series_dir.glob("*.dcm"))
    order = sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    folder = tmp_path / "tilted"
    folder.mkdir()
    for k, path in enumerate(order[40:60]):
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * 3.0 * math.tan(math.radians(12)), z]
        ds.save_as(folder / f"{k:03d}.dcm")
    out = tmp_path / "c.png"
    assert main(["render", str(folder), "--plane", "coronal", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "medviewer: note: " in err and "12.0 degrees shear-corrected" in err and out.is_file()
