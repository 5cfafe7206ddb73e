"""The one DICOM header reader: attribute values, functional groups, per-frame pixel spacing and rescale.

Everything in MedViewer that interprets a header attribute -- :func:`medviewer.io.read_instance` (the
typed fields of :class:`~medviewer.io.Instance`) and the display pipeline
(:class:`medviewer.imaging.DisplayPipeline`) -- reads it through this module, so the rules below hold
everywhere. Qt-free, no torch.

Rules
-----
Missing or invalid numbers read as ``None``.
    A DS/IS value (PS3.5 6.2) that is absent, empty, not a number, or not finite (``nan``, ``inf``,
    ``1e999``) is ``None`` -- never NaN, never 0, never a default. :func:`decimal_values` applies this to
    each value of a multi-valued attribute; :func:`decimals` to a vector of fixed multiplicity (Pixel
    Spacing 2, Image Orientation (Patient) 6, Image Position (Patient) 3), which is ``None`` as a whole when
    any component is missing or invalid or the count is wrong. What a caller does with ``None`` is its
    policy: a missing Pixel Spacing means "no calibrated measurements"; a present but unreadable Rescale
    Slope refuses the image (:func:`rescale` raises :class:`HeaderError`), since every modality value
    would be wrong.

Functional groups: per-frame overrides shared (PS3.3 C.7.6.16).
    For frame ``k`` of an enhanced multi-frame object, a functional group macro (Pixel Measures, Pixel
    Value Transformation, Frame VOI LUT, Plane Position, Plane Orientation, ...) is taken from item ``k`` of
    the Per-frame Functional Groups Sequence (5200,9230) when it is there, else from the Shared Functional
    Groups Sequence (5200,9229) (:func:`functional_group`). Attributes at the top level of the dataset
    (classic single-frame IODs, where functional groups do not exist) are used first
    (:func:`attribute_source`).

Pixel spacing, per frame, with its source (PS3.3 10.7.1.3).
    Pixel Measures (frame's functional group) or Pixel Spacing (0028,0030): in the patient; else Imager
    Pixel Spacing (0018,1164): at the detector plane (projection radiography, not corrected for
    magnification); else Nominal Scanned Pixel Spacing (0018,2010): of a scanned film or document
    (secondary capture). :class:`~medviewer.io.enum.PixelSpacingSource` records which.

Rescale and units, per frame (PS3.3 C.11.1).
    Rescale Slope/Intercept/Type from the top level, else the frame's Pixel Value Transformation
    functional group. The units of the modality values are decided here and only here
    (:func:`rescale_units`): Rescale Type (or Modality LUT Type) when present -- ``HU`` is Hounsfield
    Units, ``US`` unspecified, unknown text unspecified; when absent, HU for Modality CT (the CT Image
    Module, PS3.3 C.8.2.1, requires Rescale Type only when the units are not HU) and unspecified otherwise.
    A CT whose Rescale Type is ``US`` is therefore *not* in HU.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.values import convert_numbers

from medviewer.io.enum import PixelSpacingSource, RescaleType

__all__ = [
    "HeaderError",
    "value",
    "text",
    "integer",
    "decimal",
    "decimals",
    "decimal_values",
    "functional_group",
    "attribute_source",
    "PixelSpacing",
    "pixel_spacing",
    "image_orientation",
    "image_position",
    "slice_thickness",
    "Rescale",
    "rescale",
    "rescale_units",
    "modality_units",
    "rescale_problem",
    "MAX_MODALITY_MAGNITUDE",
]

_STRING_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI", "UC"})
#: binary numeric VRs decoded here (PS3.5 6.2): the struct format character of one value
_BINARY_VRS = {"US": "H", "SS": "h", "UL": "I", "SL": "i", "FL": "f", "FD": "d"}

#: Modality values beyond this magnitude are refused: float32 (the pixel pipeline's type) overflows at
#: 3.4e38, and no real modality (HU, counts, SUV) comes near it.
MAX_MODALITY_MAGNITUDE = 1e30


class HeaderError(ValueError):
    """A header attribute that is present but cannot be used; the message is one line naming it."""


# ------------------------------------------------------------------------------------------ raw values
def value(ds: Dataset | None, keyword: str) -> Any:
    """An attribute's value, ``None`` when absent or empty.

    Fast path for browsing: an unconverted string element whose bytes are plain ASCII is decoded here
    (split on backslash into a list of str when multi-valued), and an unconverted binary number (US, SS,
    UL, SL, FL, FD; PS3.5 6.2) goes straight to ``pydicom.values.convert_numbers``, instead of through
    pydicom's general element conversion, which dominates header-reading time. Anything else (binary VRs, non-ASCII text needing the Specific
    Character Set, already converted elements) goes through pydicom; a Person Name becomes ``str``.

    Raises
    ------
    Exception
        Whatever pydicom raises converting a malformed element; :func:`text`, :func:`integer` and the
        number readers turn that into their "missing" value.
    """
    if ds is None:
        return None
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    raw = ds.get_item(tag)
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
        vr = raw.VR or dictionary_VR(tag)
        if vr in _STRING_VRS and raw.value.isascii():
            decoded = raw.value.decode("ascii").rstrip(" \x00")
            if not decoded:
                return None
            parts = [t.strip() for t in decoded.split("\\")]
            return parts if len(parts) > 1 else parts[0]
        code = _BINARY_VRS.get(vr)
        if code is not None and raw.value and len(raw.value) % struct.calcsize(code) == 0:
            # Rows, Columns, Bits Allocated ...: pydicom's own number decoder, without building the element
            return convert_numbers(raw.value, raw.is_little_endian is not False, code)
    val = ds[tag].value
    if val is None or val == "":
        return None
    if isinstance(val, pydicom.multival.MultiValue | list | tuple):
        return [str(v) if isinstance(v, pydicom.valuerep.PersonName) else v for v in val]
    return str(val) if isinstance(val, pydicom.valuerep.PersonName) else val


def text(ds: Dataset | None, keyword: str) -> str:
    """An attribute as stripped text (multiple values joined with ``\\``); ``""`` when absent or unreadable."""
    try:
        val = value(ds, keyword)
    except Exception:  # an unparsable value in an odd file must not stop browsing
        return ""
    if val is None:
        return ""
    if isinstance(val, list):
        return "\\".join(str(v) for v in val)
    return str(val).strip()


def integer(ds: Dataset | None, keyword: str) -> int | None:
    """The first value of an IS/US attribute as int; ``None`` when absent, empty or not a number."""
    try:
        val = value(ds, keyword)
        if isinstance(val, list):
            val = val[0] if val else None
        if val is None or val == "":
            return None
        return int(float(val))
    except Exception:
        return None


def _number(item: Any) -> float | None:
    try:
        number = float(item)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def decimal_values(ds: Dataset | None, keyword: str) -> tuple[float | None, ...] | None:
    """Every value of a DS/IS attribute: ``None`` when the attribute is absent or empty (or unreadable as a
    whole), else one entry per value, each ``None`` when it is not a finite number."""
    try:
        val = value(ds, keyword)
    except Exception:
        return None
    if val is None:
        return None
    items = val if isinstance(val, list) else [val]
    return tuple(_number(v) for v in items)


def decimals(ds: Dataset | None, keyword: str, count: int) -> tuple[float, ...] | None:
    """A DS vector of exactly `count` finite values, else ``None`` (absent, any value invalid, wrong count)."""
    values = decimal_values(ds, keyword)
    if values is None or len(values) != count or any(v is None for v in values):
        return None
    return values  # type: ignore[return-value]


def decimal(ds: Dataset | None, keyword: str) -> float | None:
    """A single-valued DS/IS attribute as a finite float, else ``None`` (absent, invalid, several values)."""
    values = decimals(ds, keyword, 1)
    return values[0] if values else None


# ------------------------------------------------------------------------------------ functional groups
def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    try:
        seq = ds.get(keyword) if ds is not None else None
        return seq[0] if seq else None
    except (TypeError, IndexError, AttributeError, KeyError):
        return None


def functional_group(ds: Dataset | None, sequence: str, frame: int = 0) -> Dataset | None:
    """The item of functional group `sequence` (e.g. ``"PixelMeasuresSequence"``) that applies to `frame`.

    Per-frame overrides shared (PS3.3 C.7.6.16): item `frame` (0-based) of the Per-frame Functional Groups
    Sequence when it holds `sequence`, else the Shared Functional Groups Sequence's; ``None`` when neither
    does (or the object has no functional groups).
    """
    if ds is None:
        return None
    try:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        frame_item = per_frame[frame] if per_frame is not None and 0 <= frame < len(per_frame) else None
    except (TypeError, IndexError, AttributeError, KeyError):
        frame_item = None
    for group in (frame_item, _first_item(ds, "SharedFunctionalGroupsSequence")):
        item = _first_item(group, sequence)
        if item is not None:
            return item
    return None


def attribute_source(ds: Dataset | None, keywords: str | Iterable[str], sequence: str,
                     frame: int = 0) -> Dataset | None:
    """Where `frame`'s `keywords` are read from: the dataset itself when any of them is at its top level
    (classic IODs), else the frame's `sequence` functional group item (:func:`functional_group`)."""
    if ds is None:
        return None
    names = (keywords,) if isinstance(keywords, str) else tuple(keywords)
    if any(name in ds for name in names):
        return ds
    return functional_group(ds, sequence, frame)


# --------------------------------------------------------------------------------------------- geometry
@dataclass(frozen=True)
class PixelSpacing:
    """Physical distance between pixel centres of one frame, in mm, and the attribute it came from.

    Attributes
    ----------
    row
        Between adjacent rows (vertical), mm (first value of Pixel Spacing, PS3.3 10.7.1.3).
    column
        Between adjacent columns (horizontal), mm.
    source
        Which attribute: in the patient (Pixel Spacing), at the detector (Imager Pixel Spacing) or of a
        scanned document (Nominal Scanned Pixel Spacing).
    """

    row: float
    column: float
    source: PixelSpacingSource

    def as_tuple(self) -> tuple[float, float]:
        """``(row, column)`` in mm."""
        return self.row, self.column


_SPACING_ATTRIBUTES = (
    ("PixelSpacing", PixelSpacingSource.PIXEL_SPACING),
    ("ImagerPixelSpacing", PixelSpacingSource.IMAGER_PIXEL_SPACING),
    ("NominalScannedPixelSpacing", PixelSpacingSource.NOMINAL_SCANNED_PIXEL_SPACING),
)


def pixel_spacing(ds: Dataset | None, frame: int = 0) -> PixelSpacing | None:
    """`frame`'s pixel spacing (0-based frame), or ``None`` when no attribute gives two positive finite values.

    Order: the frame's Pixel Measures functional group (per-frame over shared) or a top-level Pixel
    Spacing (0028,0030); then Imager Pixel Spacing (0018,1164); then Nominal Scanned Pixel Spacing
    (0018,2010). An attribute that is present but invalid (a non-number, zero or negative) is skipped.
    """
    measures = attribute_source(ds, "PixelSpacing", "PixelMeasuresSequence", frame)
    for keyword, source in _SPACING_ATTRIBUTES:
        values = decimals(measures if keyword == "PixelSpacing" else ds, keyword, 2)
        if values is not None and min(values) > 0:
            return PixelSpacing(values[0], values[1], source)
    return None


def image_orientation(ds: Dataset | None, frame: int = 0) -> tuple[float, ...] | None:
    """`frame`'s Image Orientation (Patient) (0020,0037): 6 direction cosines (row, then column), or ``None``."""
    return decimals(attribute_source(ds, "ImageOrientationPatient", "PlaneOrientationSequence", frame),
                    "ImageOrientationPatient", 6)


def image_position(ds: Dataset | None, frame: int = 0) -> tuple[float, ...] | None:
    """`frame`'s Image Position (Patient) (0020,0032): x, y, z of the first pixel's centre in mm, or ``None``."""
    return decimals(attribute_source(ds, "ImagePositionPatient", "PlanePositionSequence", frame),
                    "ImagePositionPatient", 3)


def slice_thickness(ds: Dataset | None, frame: int = 0) -> float | None:
    """`frame`'s Slice Thickness (0018,0050) in mm (top level, else Pixel Measures), or ``None``."""
    return decimal(attribute_source(ds, "SliceThickness", "PixelMeasuresSequence", frame), "SliceThickness")


# ---------------------------------------------------------------------------------------------- rescale
def rescale_units(rescale_type: object, modality: object = "") -> RescaleType:
    """The units of modality values: the one place that decides "HU".

    Parameters
    ----------
    rescale_type
        Rescale Type (0028,1054) or Modality LUT Type (0028,3004) as written (padding and case ignored);
        ``""``/``None`` when absent.
    modality
        Modality (0008,0060).

    Returns
    -------
    RescaleType
        The defined term when `rescale_type` is one (PS3.3 C.11.1.1.2); :attr:`RescaleType.US`
        (unspecified) for any other text; when absent, :attr:`RescaleType.HU` for CT (the CT Image Module,
        PS3.3 C.8.2.1, requires Rescale Type only when the units are not HU) and ``US`` otherwise.
    """
    written = str(getattr(rescale_type, "value", rescale_type) or "").strip()
    if written:
        return RescaleType.lookup(written) or RescaleType.US
    return RescaleType.HU if str(modality or "").strip().upper() == "CT" else RescaleType.US


@dataclass(frozen=True)
class Rescale:
    """Rescale Slope/Intercept/Type of one frame: ``modality value = slope * stored value + intercept``.

    Attributes
    ----------
    slope, intercept
        Finite floats; 1 and 0 when the attributes are absent.
    rescale_type
        Rescale Type (0028,1054) as written (stripped, upper case), ``""`` when absent.
    units
        The units of the modality values (:func:`rescale_units`).
    """

    slope: float = 1.0
    intercept: float = 0.0
    rescale_type: str = ""
    units: RescaleType = RescaleType.US

    @property
    def is_hu(self) -> bool:
        """True when modality values are Hounsfield Units."""
        return self.units == RescaleType.HU

    @property
    def is_identity(self) -> bool:
        """True when modality values equal stored values."""
        return self.slope == 1.0 and self.intercept == 0.0

    def problem(self, bits_stored: int, signed: bool) -> str | None:
        """:func:`rescale_problem` for these values."""
        return rescale_problem(self.slope, self.intercept, bits_stored, signed)


_RESCALE_NAMES = {"RescaleSlope": "Rescale Slope (0028,1053)", "RescaleIntercept": "Rescale Intercept (0028,1052)"}


def rescale(ds: Dataset | None, frame: int = 0, modality: str | None = None) -> Rescale:
    """`frame`'s rescale (0-based frame): top-level attributes, else its Pixel Value Transformation group.

    Parameters
    ----------
    ds
        The header; ``None`` gives the identity rescale.
    frame
        0-based frame index.
    modality
        Modality (0008,0060) for :func:`rescale_units`; read from `ds` when ``None``.

    Raises
    ------
    HeaderError
        Rescale Slope or Intercept is present but not a single finite number (the "missing or invalid
        reads as None" rule, applied to an attribute the image cannot be shown without).
    """
    if modality is None:
        modality = text(ds, "Modality")
    source = attribute_source(ds, ("RescaleSlope", "RescaleIntercept"), "PixelValueTransformationSequence", frame)
    if source is None:
        return Rescale(units=rescale_units("", modality))
    numbers = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        if keyword not in source:
            numbers.append(default)
            continue
        number = decimal(source, keyword)
        if number is None:
            shown = text(source, keyword) or "(empty)"
            where = f" of frame {frame + 1}" if source is not ds else ""
            raise HeaderError(f"{_RESCALE_NAMES[keyword]}{where} is {shown!r}, not a finite number "
                              f"(PS3.3 C.11.1); refused")
        numbers.append(number)
    written = text(source, "RescaleType").upper()
    return Rescale(numbers[0], numbers[1], written, rescale_units(written, modality))


def modality_units(ds: Dataset | None, frame: int = 0, modality: str | None = None) -> RescaleType:
    """The units of `frame`'s modality values (never raises): Modality LUT Type of a Modality LUT Sequence
    (0028,3000) when there is one, else the Rescale Type, through :func:`rescale_units`."""
    if modality is None:
        modality = text(ds, "Modality")
    lut = _first_item(ds, "ModalityLUTSequence")
    if lut is not None:
        return rescale_units(text(lut, "ModalityLUTType"), modality)
    source = attribute_source(ds, ("RescaleSlope", "RescaleIntercept"), "PixelValueTransformationSequence", frame)
    return rescale_units(text(source, "RescaleType"), modality)


def rescale_problem(slope: float, intercept: float, bits_stored: int, signed: bool) -> str | None:
    """None when Rescale Slope/Intercept (PS3.3 C.11.1) map every storable value to a finite modality value
    within +-1e30, else a one-line reason (non-finite or zero slope, non-finite intercept, overflow)."""
    if not np.isfinite(slope):
        return f"Rescale Slope (0028,1053) is {slope}, not a finite number (PS3.3 C.11.1); refused"
    if not np.isfinite(intercept):
        return f"Rescale Intercept (0028,1052) is {intercept}, not a finite number (PS3.3 C.11.1); refused"
    if slope == 0:
        return "Rescale Slope (0028,1053) is 0: every pixel would have the same modality value; refused"
    bits = max(1, min(int(bits_stored or 16), 64))
    lo, hi = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0**bits - 1)
    with np.errstate(over="ignore", invalid="ignore"):
        ends = np.array([lo, hi], np.float64) * slope + intercept
    if not np.all(np.isfinite(ends)) or float(np.abs(ends).max()) > MAX_MODALITY_MAGNITUDE:
        return (f"Rescale Slope {slope:g} / Intercept {intercept:g} overflow: stored values {lo:g}..{hi:g} map "
                f"to {ends[0]:g}..{ends[1]:g} (PS3.3 C.11.1); refused")
    return None
