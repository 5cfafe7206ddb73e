"""One image on disk -- a DICOM instance or a PNG/JPEG file -- read header first, pixels lazily.

DICOM is recognised by content (the ``DICM`` prefix of PS3.10 7.1, or a bare dataset that starts with a
group 0x0002/0x0008 element), never by file extension. Pixels are decoded by pydicom 3 with the
pylibjpeg plugins (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, HTJ2K, RLE) one frame at a time,
so opening a folder or scrolling a multi-frame object never decodes more than is shown.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medviewer.errors import MedViewerError, ReadError, error_line
from medviewer.io import header
from medviewer.io.dicom_checks import (
    _PIXEL_TAGS,
    _check_elements_after_pixels,
    _check_palette,
    _check_rescale,
    _checked_int,
    _probe_pixel_element,
    _transfer_syntax_problem,
)
from medviewer.io.encapsulation import EncapsulationProblem, check_encapsulated
from medviewer.io.encapsulation import _items as _encapsulated_items
from medviewer.io.enum import RASTER_MODALITY, PhotometricInterpretation, PixelSpacingSource, RescaleType
from medviewer.io.files import check_regular, open_regular, os_error_reason
from medviewer.io.header import MAX_MODALITY_MAGNITUDE, HeaderError, PixelSpacing, Rescale, rescale_problem
from medviewer.io.raster import _raster_header, _read_raster, _to_u8_color
from medviewer.io.sniff import _UNDEFINED, FileKind, _sniff, sniff_kind
from medviewer.io.transfer_syntax import check_decodable, transfer_syntax_name
from medviewer.limits import get_limits

__all__ = ["Instance", "read_instance", "sniff_kind", "FileKind", "quiet_pydicom_warnings", "rescale_problem",
           "MAX_MODALITY_MAGNITUDE", "PixelSpacing", "Rescale"]


def quiet_pydicom_warnings() -> None:
    """Silence pydicom's UserWarnings about non-conformant values (odd VRs, padding, VR mismatches) and
    OpenCV's decoder warnings.

    Reading continues past them and real problems surface as :class:`ReadError`, so command-line tools
    call this to keep their error output to one line.
    """
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    try:  # OpenCV's C++ warnings ("[ WARN:0] ... imdecode_") go straight to stderr; errors are ours to report
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except (AttributeError, cv2.error):
        pass

@dataclass(eq=False, frozen=True)
class Instance:
    """An image file's header: identifiers, geometry, pixel-module attributes; pixels on demand.

    Attributes follow the DICOM keywords they come from (PS3.6). For PNG/JPEG files ``is_dicom`` is
    False, ``modality`` is ``"OT"``, UIDs are empty, geometry is ``None`` and ``dataset`` is ``None``.

    One source of truth: for DICOM, ``dataset`` (the header as read, without Pixel Data) is authoritative.
    Every typed field is derived from it by :mod:`medviewer.io.header` once, in :func:`read_instance`, and
    the instance is frozen, so the fields cannot drift from the dataset; per-frame values come from the
    dataset on demand (:meth:`frame_pixel_spacing`, :meth:`frame_rescale`, :attr:`units`). Do not edit
    ``dataset`` in place; to change a header, save an edited copy and read that.

    ``pixel_spacing`` is frame 0's (row spacing, column spacing) in mm and ``pixel_spacing_source`` the
    attribute it came from (:class:`~medviewer.io.enum.PixelSpacingSource`, PS3.3 10.7.1.3: Imager Pixel
    Spacing is at the detector plane). ``photometric_interpretation`` is a
    :class:`~medviewer.io.enum.PhotometricInterpretation` (a ``str``: it compares equal to the DICOM value).
    """

    path: Path
    is_dicom: bool
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    patient_id: str = ""
    patient_name: str = ""
    patient_sex: str = ""
    patient_age: str = ""
    study_date: str = ""
    study_description: str = ""
    series_description: str = ""
    series_number: int | None = None
    instance_number: int | None = None
    modality: str = RASTER_MODALITY
    rows: int = 0
    columns: int = 0
    number_of_frames: int = 1
    samples_per_pixel: int = 1
    photometric_interpretation: PhotometricInterpretation = PhotometricInterpretation.MONOCHROME2
    bits_allocated: int = 8
    bits_stored: int = 8
    pixel_representation: int = 0
    pixel_spacing: tuple[float, float] | None = None
    pixel_spacing_source: PixelSpacingSource | None = None
    image_orientation_patient: tuple[float, ...] | None = None
    image_position_patient: tuple[float, ...] | None = None
    slice_location: float | None = None
    slice_thickness: float | None = None
    frame_of_reference_uid: str = ""
    sop_class_uid: str = ""
    transfer_syntax_uid: str | None = None
    dataset: Dataset | None = None
    _full: Dataset | None = field(default=None, repr=False)
    _pixel_offset: int | None = field(default=None, repr=False)  # file offset of native Pixel Data value

    # ------------------------------------------------------------------ header, per frame
    def frame_pixel_spacing(self, frame: int = 0) -> PixelSpacing | None:
        """Pixel spacing of `frame` (0-based) in mm with its source: per-frame Pixel Measures override the
        shared ones (PS3.3 C.7.6.16); ``None`` when the image has none (PNG/JPEG, or no valid attribute).
        See :func:`medviewer.io.header.pixel_spacing`."""
        return header.pixel_spacing(self.dataset, frame) if self.dataset is not None else None

    def frame_rescale(self, frame: int = 0) -> Rescale:
        """Rescale Slope/Intercept/Type of `frame` (0-based) and the units they give
        (:func:`medviewer.io.header.rescale`); the identity, unspecified units, for PNG/JPEG.

        Raises
        ------
        ReadError
            The frame's Rescale Slope or Intercept is present but not a finite number.
        """
        if self.dataset is None:
            return Rescale()
        try:
            return header.rescale(self.dataset, frame, self.modality)
        except HeaderError as exc:
            raise ReadError(self.path, str(exc)) from None

    @property
    def units(self) -> RescaleType:
        """Units of frame 0's modality values (:func:`medviewer.io.header.modality_units`): ``HU`` for a CT
        without Rescale Type or with Rescale Type HU; ``US`` (unspecified) for PNG/JPEG."""
        if self.dataset is None:
            return RescaleType.US
        return header.modality_units(self.dataset, 0, self.modality)

    # ------------------------------------------------------------------ pixels
    @property
    def is_color(self) -> bool:
        """True when :meth:`stored_pixels` returns RGB ``(rows, cols, 3)`` uint8."""
        palette = self.photometric_interpretation == PhotometricInterpretation.PALETTE_COLOR
        return self.samples_per_pixel == 3 or palette

    def stored_pixels(self, frame: int = 0) -> np.ndarray:
        """Decode one frame's stored values.

        Parameters
        ----------
        frame
            0-based frame index, ``0 <= frame < number_of_frames``.

        Returns
        -------
        np.ndarray
            Monochrome: ``(rows, columns)`` stored values, integer dtype as decoded (e.g. uint16/int16;
            float32/float64 for Float Pixel Data), before any Modality LUT. Colour (RGB, YBR_* -- converted
            to RGB as PS3.3 C.7.6.3.1.2 defines -- and PALETTE COLOR expanded through its LUTs,
            PS3.3 C.7.6.3.1.5): ``(rows, columns, 3)`` uint8 RGB.

        Raises
        ------
        ReadError
            The frame index is out of range or the pixel data cannot be decoded (truncated, unsupported
            transfer syntax -- the message names the plugin that would decode it).
        """
        if not 0 <= frame < max(1, self.number_of_frames):
            raise ReadError(self.path, f"frame {frame} out of range (the image has {self.number_of_frames})")
        if not self.is_dicom:
            img = _read_raster(self.path, (self.rows, self.columns))
            return _to_u8_color(img, 16) if img.ndim == 3 else img
        arr = self._decode_dicom(frame)
        if arr.ndim == 3 and arr.shape[-1] != 3 and self.samples_per_pixel == 1:
            arr = arr[0]  # a decoder returned all frames
        expected = (self.rows, self.columns) + ((3,) if self.samples_per_pixel == 3 else ())
        if arr.shape != expected:
            raise ReadError(self.path, f"decoded frame has shape {arr.shape}, the header declares "
                                       f"{expected} (Rows, Columns[, Samples per Pixel]); refused")
        pi = self.photometric_interpretation
        if pi == PhotometricInterpretation.PALETTE_COLOR:
            from pydicom.pixels import apply_color_lut

            try:
                arr = apply_color_lut(arr, self.dataset)
            except Exception as exc:
                raise ReadError(self.path, f"cannot apply the Palette Color Lookup Table: {exc}") from exc
            return _to_u8_color(arr, 16 if arr.dtype.itemsize > 1 else 8)
        if arr.ndim == 3:
            return _to_u8_color(arr, self.bits_stored)
        return arr

    def _read_native_frame(self, frame: int) -> np.ndarray | None:
        """Little-endian native monochrome/palette frames: read the frame's bytes at their offset.

        Same result as pydicom's native decoder (including its unused-bit correction, PS3.5 8.1.1) without
        parsing the header a second time. None when the fast path does not apply.
        """
        if (self._pixel_offset is None or self.samples_per_pixel != 1
                or self.bits_allocated not in (8, 16, 32)
                or self.transfer_syntax_uid not in (pydicom.uid.ImplicitVRLittleEndian,
                                                    pydicom.uid.ExplicitVRLittleEndian)):
            return None
        itemsize = self.bits_allocated // 8
        count = self.rows * self.columns
        dtype = np.dtype(f"<{'i' if self.pixel_representation == 1 else 'u'}{itemsize}")
        try:
            with open_regular(self.path) as fp:
                fp.seek(self._pixel_offset + frame * count * itemsize)
                arr = np.fromfile(fp, dtype=dtype, count=count)
        except (OSError, ValueError):
            return None
        if arr.size != count:
            return None
        arr = arr.reshape(self.rows, self.columns)
        shift = self.bits_allocated - self.bits_stored
        if 0 < shift < self.bits_allocated:
            np.left_shift(arr, shift, out=arr)
            np.right_shift(arr, shift, out=arr)
        return arr.astype(dtype.newbyteorder("="), copy=False)

    def _decode_dicom(self, frame: int) -> np.ndarray:
        from pydicom.pixels import pixel_array

        fast = self._read_native_frame(frame)
        if fast is not None:
            return fast
        reason = check_decodable(self.transfer_syntax_uid)
        if reason:
            raise ReadError(self.path, reason)
        index = frame if self.number_of_frames > 1 else None
        try:
            if self._full is None:
                try:
                    with open_regular(self.path) as fp:
                        return np.asarray(pixel_array(fp, index=index))
                except (ReadError, KeyboardInterrupt, MemoryError):
                    raise
                except Exception:
                    # bare datasets (no file meta), deflated or odd files: read fully once, keep it
                    object.__setattr__(self, "_full", _read_full(self.path, self.dataset))
            full = self._full if self._full is not None else _read_full(self.path, self.dataset)
            return np.asarray(pixel_array(full, index=index))
        except ReadError:
            raise
        except MemoryError:
            raise ReadError(self.path, "out of memory decoding the pixel data; refused") from None
        except Exception as exc:
            name = transfer_syntax_name(self.transfer_syntax_uid)
            raise ReadError(self.path, f"cannot decode the pixel data ({name}): {error_line(exc)}") from exc

    def __repr__(self) -> str:
        return (f"Instance({str(self.path)!r}, {self.modality}, {self.rows}x{self.columns}"
                f"x{self.number_of_frames}, {self.photometric_interpretation})")


def _read_full(path: Path, header: Dataset | None) -> Dataset:
    with open_regular(path) as fp:
        ds = pydicom.dcmread(fp, force=True)
    meta = ds.file_meta
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                                  pydicom.uid.ExplicitVRLittleEndian if little else
                                  pydicom.uid.ExplicitVRBigEndian)
    return ds


# ---------------------------------------------------------------------- raster
def _read_raster_instance(path: Path, kind: str) -> Instance:
    header = _raster_header(path, kind)
    if header is None:
        raise ReadError(path, f"not a readable {kind.upper()} image (no {'IHDR' if kind == FileKind.PNG else 'SOF'} "
                              f"header found; corrupt or truncated)")
    rows, cols, samples, bits = header
    if rows <= 0 or cols <= 0:
        raise ReadError(path, f"invalid image size {cols}x{rows}")
    budget = get_limits().frame_problem(rows, cols, samples)
    if budget:
        raise ReadError(path, f"{budget}; refused before decoding")
    bits = 16 if bits > 8 else 8
    return Instance(
        path=path, is_dicom=False, modality=RASTER_MODALITY, rows=rows, columns=cols,
        number_of_frames=1, samples_per_pixel=samples,
        photometric_interpretation=(PhotometricInterpretation.RGB if samples == 3
                                    else PhotometricInterpretation.MONOCHROME2),
        bits_allocated=bits, bits_stored=bits, pixel_representation=0,
        sop_instance_uid="", series_description=path.name,
    )


# ----------------------------------------------------------------------- DICOM
def _expected_native_bytes(inst: Instance) -> int:
    bits = inst.bits_allocated
    pixels = inst.rows * inst.columns * max(1, inst.number_of_frames) * inst.samples_per_pixel
    if inst.photometric_interpretation == PhotometricInterpretation.YBR_FULL_422:
        pixels = pixels * 2 // 3
    return (pixels * bits + 7) // 8


def _read_dicom_instance(path: Path) -> Instance:
    with open_regular(path) as fp:
        file_size = os.fstat(fp.fileno()).st_size
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=True)
            probe = _probe_pixel_element(fp, ds, file_size)
        except RecursionError:
            raise ReadError(path, "not a readable DICOM file (header): sequences nested too deeply") from None
        except OSError as exc:
            raise ReadError(path, os_error_reason(exc)) from None
        except Exception as exc:
            raise ReadError(path, f"not a readable DICOM file (header): {error_line(exc)}") from exc
        return _checked_dicom_instance(path, fp, file_size, ds, probe)


def _checked_dicom_instance(path: Path, fp: Any, file_size: int, ds: Dataset,
                            probe: tuple[int, int, int] | None) -> Instance:
    meta = getattr(ds, "file_meta", None)
    ts = str(meta.get("TransferSyntaxUID", "") or "").strip().rstrip("\x00") if meta is not None else ""
    if not ts:
        try:
            implicit, little = ds.original_encoding
            ts = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                  pydicom.uid.ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
        except Exception:
            ts = ""
    if len(ds) == 0:
        raise ReadError(path, "not a DICOM file (no data elements could be parsed)")

    deflated = ts == pydicom.uid.DeflatedExplicitVRLittleEndian
    if probe is None and not deflated:
        sop = header.text(ds, "SOPClassUID") or (str(meta.get("MediaStorageSOPClassUID", "")) if meta else "")
        if sop == "1.2.840.10008.1.3.10":
            raise ReadError(path, "is a DICOMDIR (a directory of other files, no image); open its folder")
        what = pydicom.uid.UID(sop).name if sop else "unknown SOP class"
        raise ReadError(path, f"no Pixel Data (7FE0,0010) in this DICOM object ({what}); nothing to display")
    if ts:
        problem = _transfer_syntax_problem(ts)
        if problem:
            raise ReadError(path, problem)

    try:
        inst = _instance_from_header(path, ds, ts or None)
    except MedViewerError:  # ReadError, or a LimitError naming the bad environment variable
        raise
    except Exception as exc:
        raise ReadError(path, f"invalid image header: {error_line(exc)}") from exc

    if probe is not None:
        tag, length, offset = probe
        if length < 0:
            raise ReadError(path, f"{_PIXEL_TAGS[tag]} is truncated: {-length} bytes present, "
                                  f"the element declares more; the file is incomplete")
        if length == 0:
            raise ReadError(path, f"{_PIXEL_TAGS[tag]} is empty")
        compressed = bool(ts) and pydicom.uid.UID(ts).is_compressed
        if length == _UNDEFINED:
            if not compressed and ts:
                raise ReadError(path, f"Pixel Data is encapsulated (undefined length) but the transfer syntax "
                                      f"{transfer_syntax_name(ts)} is not a compressed one (PS3.5 A.4); refused")
            try:
                check_encapsulated(fp, offset, file_size, ts, rows=inst.rows, columns=inst.columns,
                                   samples=inst.samples_per_pixel, bits_allocated=inst.bits_allocated,
                                   frames=inst.number_of_frames)
            except EncapsulationProblem as exc:
                raise ReadError(path, str(exc)) from None
            except OSError as exc:
                raise ReadError(path, os_error_reason(exc)) from None
        elif compressed:
            raise ReadError(path, f"Pixel Data has a defined length but the transfer syntax "
                                  f"{transfer_syntax_name(ts)} requires encapsulated (compressed) data (PS3.5 A.4)")
        if length != _UNDEFINED and tag == 0x7FE00010 and not compressed:
            expected = _expected_native_bytes(inst)
            if length < expected:
                raise ReadError(path, f"Pixel Data is truncated: {length} bytes for {inst.rows}x{inst.columns}"
                                      f"x{inst.number_of_frames} frames of {inst.bits_allocated}-bit samples "
                                      f"({expected} expected)")
            if tag == 0x7FE00010 and inst.photometric_interpretation != PhotometricInterpretation.YBR_FULL_422:
                object.__setattr__(inst, "_pixel_offset", offset)
        try:  # a cut in what follows the pixels (Data Set Trailing Padding) is a truncation too
            if length == _UNDEFINED:
                *_, (last, last_len) = _encapsulated_items(fp, offset, file_size)
                end = last + last_len + 8  # past the Sequence Delimitation Item
            else:
                end = offset + length
            _check_elements_after_pixels(path, fp, ds, end, file_size)
        except OSError as exc:
            raise ReadError(path, os_error_reason(exc)) from None
    return inst


def _instance_from_header(path: Path, ds: Dataset, ts: str | None) -> Instance:
    rows, cols = _checked_int(path, ds, "Rows"), _checked_int(path, ds, "Columns")
    if not rows or not cols or rows < 0 or cols < 0:
        raise ReadError(path, f"missing or invalid Rows (0028,0010) / Columns (0028,0011): {rows} / {cols}")
    pi_text = header.text(ds, "PhotometricInterpretation").upper()
    samples = _checked_int(path, ds, "SamplesPerPixel")
    if samples is None:
        samples = 3 if pi_text and not pi_text.startswith(("MONOCHROME", "PALETTE")) else 1
    if samples not in (1, 3):
        raise ReadError(path, f"invalid Samples per Pixel (0028,0002) {samples} (1 or 3 expected, "
                              f"PS3.3 C.7.6.3.1.1)")
    frames = _checked_int(path, ds, "NumberOfFrames")
    if frames is None:
        frames = 1
    if frames < 1:
        raise ReadError(path, f"invalid Number of Frames (0028,0008) {frames}")
    if not pi_text:
        pi_text = (PhotometricInterpretation.RGB if samples == 3 else PhotometricInterpretation.MONOCHROME2).value
    pi = PhotometricInterpretation.parse(pi_text)
    if pi is None:
        raise ReadError(path, f"unsupported Photometric Interpretation (0028,0004) '{pi_text}'")
    needs = 1 if pi.is_monochrome or pi == PhotometricInterpretation.PALETTE_COLOR else 3
    if samples != needs:
        raise ReadError(path, f"Photometric Interpretation {pi.value} with Samples per Pixel (0028,0002) "
                              f"{samples} ({needs} expected, PS3.3 C.7.6.3.1.2); the header contradicts itself")
    bits_allocated = _checked_int(path, ds, "BitsAllocated")
    if bits_allocated is None:
        bits_allocated = 8
    if bits_allocated not in (1, 8, 16, 32, 64):
        raise ReadError(path, f"unsupported Bits Allocated (0028,0100) {bits_allocated} "
                              f"(1, 8, 16, 32 or 64 expected)")
    bits_stored = _checked_int(path, ds, "BitsStored")
    if bits_stored is None:
        bits_stored = bits_allocated
    if not 1 <= bits_stored <= bits_allocated:
        raise ReadError(path, f"invalid Bits Stored (0028,0101) {bits_stored} for Bits Allocated "
                              f"{bits_allocated} (1..{bits_allocated} expected, PS3.3 C.7.6.3.1)")
    representation = _checked_int(path, ds, "PixelRepresentation") or 0
    if representation not in (0, 1):
        raise ReadError(path, f"invalid Pixel Representation (0028,0103) {representation} (0 or 1 expected)")
    if pi == PhotometricInterpretation.PALETTE_COLOR:
        _check_palette(path, ds)
    modality = header.text(ds, "Modality").upper() or RASTER_MODALITY
    if pi.is_monochrome and "ModalityLUTSequence" not in ds:
        _check_rescale(path, ds, frames, modality, bits_stored, representation == 1)
    budget = get_limits().frame_problem(rows, cols, samples, frames)
    if budget:
        raise ReadError(path, f"{budget}; refused before allocating")

    spacing = header.pixel_spacing(ds, 0)
    location = header.decimal(ds, "SliceLocation")
    return Instance(
        path=path,
        is_dicom=True,
        sop_instance_uid=header.text(ds, "SOPInstanceUID"),
        study_instance_uid=header.text(ds, "StudyInstanceUID"),
        series_instance_uid=header.text(ds, "SeriesInstanceUID"),
        patient_id=header.text(ds, "PatientID"),
        patient_name=header.text(ds, "PatientName"),
        patient_sex=header.text(ds, "PatientSex"),
        patient_age=header.text(ds, "PatientAge"),
        study_date=header.text(ds, "StudyDate"),
        study_description=header.text(ds, "StudyDescription"),
        series_description=header.text(ds, "SeriesDescription"),
        series_number=header.integer(ds, "SeriesNumber"),
        instance_number=header.integer(ds, "InstanceNumber"),
        modality=modality,
        rows=rows,
        columns=cols,
        number_of_frames=frames,
        samples_per_pixel=samples,
        photometric_interpretation=pi,
        bits_allocated=bits_allocated,
        bits_stored=bits_stored,
        pixel_representation=representation,
        pixel_spacing=spacing.as_tuple() if spacing else None,
        pixel_spacing_source=spacing.source if spacing else None,
        image_orientation_patient=header.image_orientation(ds, 0),
        image_position_patient=header.image_position(ds, 0),
        slice_location=location,
        slice_thickness=header.slice_thickness(ds, 0),
        frame_of_reference_uid=header.text(ds, "FrameOfReferenceUID"),
        sop_class_uid=header.text(ds, "SOPClassUID"),
        transfer_syntax_uid=ts,
        dataset=ds,
    )


def read_instance(path: str | Path) -> Instance:
    """Read an image file's header: DICOM (recognised by content) or PNG/JPEG.

    Only the header is parsed (DICOM: up to Pixel Data, whose presence and length are checked; raster:
    the PNG IHDR / JPEG SOF marker); pixels are decoded later by :meth:`Instance.stored_pixels`.

    Parameters
    ----------
    path
        A file path.

    Returns
    -------
    Instance

    Raises
    ------
    ReadError
        Missing file, not DICOM/PNG/JPEG, no Pixel Data, truncated Pixel Data, unsupported Photometric
        Interpretation or unparsable header; the one-line message names the file and the cause.

    Examples
    --------
    >>> inst = read_instance("CT_small.dcm")  # doctest: +SKIP
    >>> inst.modality, inst.rows, inst.pixel_spacing  # doctest: +SKIP
    ('CT', 128, (0.661468, 0.661468))
    """
    p = Path(path)
    check_regular(p)
    kind = _sniff(p)
    if kind == FileKind.DICOM:
        return _read_dicom_instance(p)
    if kind in (FileKind.PNG, FileKind.JPEG):
        return _read_raster_instance(p, kind)
    if p.stat().st_size == 0:
        raise ReadError(p, "empty file")
    raise ReadError(p, "not a DICOM, PNG or JPEG file (unrecognised content)")
