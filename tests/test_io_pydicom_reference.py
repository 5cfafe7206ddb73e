"""Every pydicom test file and every pydicom-data file with pixels, against pydicom's reference functions.

For each file that pydicom itself can decode: our stored values equal ``pydicom.pixels.pixel_array``
(first and last frame), our modality values equal ``apply_modality_lut``, and our 8-bit rendering equals
``apply_voi_lut`` (file windows, VOI LUT Sequences, and LINEAR / LINEAR_EXACT / SIGMOID windows set on the
dataset) scaled to 0..255, inverted for MONOCHROME1. Files pydicom cannot decode either (truncated,
unsupported by the installed plugins) must give our one-line ReadError, never another exception.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

from medviewer.errors import ReadError
from medviewer.imaging import DisplayPipeline, Window
from medviewer.imaging.enum import VoiLutFunction
from medviewer.io import read_instance

# Observed on pydicom 3.0 + pydicom-data 1.0 with the pylibjpeg plugins: files whose pixels were compared.
# The test fails if fewer are compared (a reader regression, or files silently skipped).
MIN_COMPARED_FILES = 155
MIN_VOI_COMPARISONS = 362


def _all_files() -> list[Path]:
    files = {Path(f) for f in get_testdata_files()}
    try:
        import data_store

        store = Path(data_store.__file__).parent / "data"
        files |= {p for p in store.iterdir() if p.is_file()}
    except ImportError:
        pass
    return sorted(files, key=lambda p: p.name)


def _has_pixels(ds: pydicom.Dataset) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _voi_range(ds: pydicom.Dataset) -> tuple[float, float]:
    """pydicom's apply_windowing output range (its y_min, y_max), to scale its output to 0..255."""
    if ds.get("ModalityLUTSequence"):
        return 0.0, 2.0 ** ds.ModalityLUTSequence[0].LUTDescriptor[2] - 1
    bits = int(ds.BitsStored)
    lo, hi = (0.0, 2.0**bits - 1) if ds.PixelRepresentation == 0 else (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1)
    if ds.get("RescaleSlope") is not None and ds.get("RescaleIntercept") is not None:
        s, b = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        lo, hi = lo * s + b, hi * s + b
    return lo, hi


def _with_frame_functional_groups(ds: pydicom.Dataset, frame: int) -> pydicom.Dataset:
    """For enhanced multi-frame objects, a copy with the frame's Pixel Value Transformation and Frame VOI
    LUT (PS3.3 C.7.6.16.2.9-10) moved to the top level, where pydicom's reference functions look."""
    moved = {"PixelValueTransformationSequence": ("RescaleSlope", "RescaleIntercept", "RescaleType"),
             "FrameVOILUTSequence": ("WindowCenter", "WindowWidth", "VOILUTFunction",
                                     "WindowCenterWidthExplanation")}
    out = pydicom.Dataset()  # only what the LUT functions read (a copy.copy would share elements)
    out.file_meta = copy.deepcopy(ds.file_meta) if hasattr(ds, "file_meta") else pydicom.dataset.FileMetaDataset()
    out.set_original_encoding(*ds.original_encoding)
    for key in ("PhotometricInterpretation", "BitsAllocated", "BitsStored", "PixelRepresentation", "RescaleSlope",
                "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter", "WindowWidth",
                "VOILUTFunction", "WindowCenterWidthExplanation", "VOILUTSequence", "PresentationLUTShape"):
        if key in ds:
            out[key] = copy.deepcopy(ds[key])
    for seq, keys in moved.items():
        if keys[0] in ds:
            continue
        item = None
        for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
            try:
                item = ds[groups].value[idx][seq].value[0]
                break
            except (KeyError, IndexError, TypeError):
                continue
        if item is None:
            continue
        for key in keys:
            if key in item:
                setattr(out, key, item[key].value)
    return out


def _expected_u8(ref_voi: np.ndarray, lo: float, hi: float, inverse: bool) -> np.ndarray:
    y = np.rint((ref_voi.astype(np.float64) - lo) / (hi - lo) * 255.0)
    y = np.clip(y, 0, 255).astype(np.uint8)
    return 255 - y if inverse else y


def _close_u8(ours: np.ndarray, expected: np.ndarray) -> bool:
    return ours.shape == expected.shape and int(np.abs(ours.astype(int) - expected.astype(int)).max()) <= 1


def _check_file(path: Path, counts: dict[str, int]) -> str | None:
    """Compare one file; returns a failure description or None. Updates `counts`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
            has_pixels = _has_pixels(ds) and "Rows" in ds
        except Exception:
            ds, has_pixels = None, False
        if not has_pixels:
            try:
                read_instance(path)
            except ReadError:
                counts["rejected"] += 1
                return None
            except Exception as exc:  # anything but ReadError is a bug
                return f"{path.name}: {type(exc).__name__} instead of ReadError: {exc}"
            counts["read_without_reference"] += 1
            return None
        try:
            inst = read_instance(path)
        except ReadError:
            counts["rejected"] += 1
            return None
        frames = sorted({0, inst.number_of_frames - 1})
        try:
            refs = [np.asarray(pixel_array(ds, index=k if inst.number_of_frames > 1 else None)) for k in frames]
        except Exception:
            # pydicom cannot decode it either: we must fail with a ReadError, not crash
            try:
                inst.stored_pixels(frames[-1])
            except ReadError:
                counts["undecodable"] += 1
                return None
            counts["decoded_where_pydicom_failed"] += 1
            return None
        try:
            ours_frames = [inst.stored_pixels(k) for k in frames]
        except ReadError as exc:
            return f"{path.name}: pydicom decodes it but we raise: {exc}"
        pi = inst.photometric_interpretation
        for k, ref, ours in zip(frames, refs, ours_frames, strict=True):
            pipe = DisplayPipeline.from_instance(inst, k)
            if pi == "PALETTE COLOR":
                rgb = apply_color_lut(ref, ds)
                if rgb.dtype != np.uint8:
                    rgb = np.rint(rgb.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
                if not np.array_equal(ours, rgb):
                    return f"{path.name} frame {k}: palette colour expansion differs"
                continue
            if ref.ndim == 3:
                if ref.dtype != np.uint8:
                    ref = np.rint(ref.astype(np.float64) * 255.0 / (2 ** int(ds.BitsStored) - 1)).astype(np.uint8)
                if not np.array_equal(ours, ref):
                    return f"{path.name} frame {k}: RGB pixels differ"
                if not np.array_equal(pipe.render(ours), ours):
                    return f"{path.name} frame {k}: colour default display is not the identity"
                continue
            if not np.array_equal(ours, ref):
                return f"{path.name} frame {k}: stored values differ from pydicom"
            step = int(np.ceil(np.sqrt(ours.size / 262_144)))  # LUT checks on <= 512^2 samples: fast
            ours, ref = ours[::step, ::step], ref[::step, ::step]
            ds_frame = _with_frame_functional_groups(ds, k)
            mod_ref = apply_modality_lut(ref, ds_frame)
            mod = pipe.modality_values(ours)
            if not np.allclose(mod, mod_ref, rtol=1e-6, atol=1e-3):
                return f"{path.name} frame {k}: modality LUT differs from apply_modality_lut"
            inverse = pi == "MONOCHROME1" or str(ds.get("PresentationLUTShape", "")).upper() == "INVERSE"
            lo, hi = _voi_range(ds_frame)
            # 1) the file's own VOI: every VOI LUT item, every window
            for idx in range(len(pipe.voi_luts)):
                ref_voi = apply_voi_lut(mod_ref, ds, index=idx, prefer_lut=True)
                top = 2.0 ** ds.VOILUTSequence[idx].LUTDescriptor[2] - 1
                top = max(top, float(pipe.voi_luts[idx].max_output))
                if not _close_u8(pipe.render(ours, voi_index=idx), _expected_u8(ref_voi, 0, top, inverse)):
                    return f"{path.name} frame {k}: VOI LUT item {idx} differs"
                counts["voi"] += 1
            if not pipe.voi_luts:
                for idx in range(len(pipe.windows)):
                    ref_voi = apply_voi_lut(mod_ref, ds_frame, index=idx, prefer_lut=False)
                    if not _close_u8(pipe.render(ours, voi_index=idx), _expected_u8(ref_voi, lo, hi, inverse)):
                        return f"{path.name} frame {k}: file window {idx} differs"
                    counts["voi"] += 1
            # 2) windows we set, with each VOI LUT Function, through pydicom's apply_voi_lut
            base = pipe.auto_window(ours)
            probe = copy.deepcopy(ds_frame)
            for key in ("VOILUTSequence", "WindowCenterWidthExplanation"):
                if key in probe:
                    del probe[key]
            for function in VoiLutFunction:
                window = Window(base.center, max(base.width, 2.0), function)
                probe.WindowCenter = window.center
                probe.WindowWidth = window.width
                probe.VOILUTFunction = function.value
                ref_voi = apply_voi_lut(mod_ref, probe, prefer_lut=False)
                if not _close_u8(pipe.render(ours, window), _expected_u8(ref_voi, lo, hi, inverse)):
                    return f"{path.name} frame {k}: {function.value} window {window} differs"
                counts["voi"] += 1
        counts["compared"] += 1
        counts.setdefault("syntaxes", set()).add(str(inst.transfer_syntax_uid))
        counts.setdefault("photometric", set()).add(pi)
        counts.setdefault("multiframe", set()).add(inst.number_of_frames > 1)
    return None


@pytest.fixture(scope="module")
def reference_results() -> tuple[list[str], dict[str, int]]:
    counts = {"compared": 0, "voi": 0, "rejected": 0, "undecodable": 0, "decoded_where_pydicom_failed": 0,
              "read_without_reference": 0}
    failures = [f for p in _all_files() if (f := _check_file(p, counts))]
    return failures, counts


def test_every_reference_file_matches_pydicom(reference_results):
    failures, counts = reference_results
    assert not failures, "\n".join(failures)
    assert counts["compared"] >= MIN_COMPARED_FILES, counts
    assert counts["voi"] >= MIN_VOI_COMPARISONS, counts
    assert counts["undecodable"] <= 10, counts  # only a handful of reference files are undecodable
    uid = pydicom.uid
    # every transfer syntax and photometric interpretation the reader promises was exercised (no reference
    # file uses JPEG Lossless Process 14 (.57): see test_jpeg_lossless_process14 below)
    assert {uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.ExplicitVRBigEndian,
            uid.DeflatedExplicitVRLittleEndian, uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit,
            uid.JPEGLosslessSV1, uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000,
            uid.RLELossless} <= counts["syntaxes"]
    assert {"MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR"} \
        <= counts["photometric"]
    assert counts["multiframe"] == {True, False}


def test_offis_modality_and_voi_lut_files_are_compared(reference_results):
    # mlut_18 (Modality LUT Sequence) and vlut_04 (VOI LUT Sequence) are the OFFIS LUT test images
    from conftest import pydicom_test_file

    for name, attr in (("mlut_18.dcm", "modality_lut"), ("vlut_04.dcm", "voi_luts")):
        inst = read_instance(pydicom_test_file(name))
        pipe = DisplayPipeline.from_instance(inst)
        if attr == "modality_lut":
            assert pipe.modality_lut.lut is not None
        else:
            assert len(pipe.voi_luts) == 1
        counts = {"compared": 0, "voi": 0, "rejected": 0, "undecodable": 0,
                  "decoded_where_pydicom_failed": 0, "read_without_reference": 0}
        assert _check_file(inst.path, counts) is None
        assert counts["compared"] == 1


@pytest.mark.parametrize(("compressed", "uncompressed"), [
    ("MR2_J2KR.dcm", "MR2_UNCR.dcm"),
    ("RG1_J2KR.dcm", "RG1_UNCR.dcm"),
    ("US1_J2KR.dcm", "US1_UNCR.dcm"),
    ("SC_rgb_rle.dcm", "SC_rgb.dcm"),
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("emri_small_RLE.dcm", "emri_small.dcm"),
    ("emri_small_jpeg_2k_lossless.dcm", "emri_small.dcm"),
])
def test_lossless_variants_render_identically(compressed, uncompressed):
    from conftest import pydicom_test_file

    from medviewer.imaging import display_image

    a, b = read_instance(pydicom_test_file(compressed)), read_instance(pydicom_test_file(uncompressed))
    assert a.transfer_syntax_uid != b.transfer_syntax_uid
    assert a.number_of_frames == b.number_of_frames
    for frame in sorted({0, a.number_of_frames - 1}):
        np.testing.assert_array_equal(a.stored_pixels(frame), b.stored_pixels(frame))
        np.testing.assert_array_equal(display_image(a, frame), display_image(b, frame))


def test_reference_files_are_available():
    names = {p.name for p in _all_files()}
    assert {"mlut_18.dcm", "vlut_04.dcm", "RG1_UNCR.dcm", "CT_small.dcm"} <= names, \
        "pydicom-data is not installed (pip install pydicom-data)"
    assert os.path.isdir(Path(pydicom.__file__).parent / "data" / "test_files")


def test_jpeg_lossless_process14(tmp_path):
    # A Selection Value 1 stream is a valid Process 14 stream: relabelled as JPEG Lossless (.57) it must
    # decode to the same pixels (no reference file uses .57 itself)
    from conftest import pydicom_test_file

    src = pydicom_test_file("JPEG-LL.dcm")
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLossless
    out = tmp_path / "p14.dcm"
    ds.save_as(out)
    relabelled, original = read_instance(out), read_instance(src)
    assert relabelled.transfer_syntax_uid == pydicom.uid.JPEGLossless
    np.testing.assert_array_equal(relabelled.stored_pixels(), original.stored_pixels())
    np.testing.assert_array_equal(relabelled.stored_pixels(), pydicom.dcmread(src).pixel_array)
