"""Structural checks of a DICOM file read header first: the pixel element's presence and length, what
follows it, the transfer syntax, Palette Color LUTs and the rescale (PS3.5 7.1, A.4; PS3.3 C.7.6.3.1.5,
C.7.6.16.2.9). Each refuses with one :class:`~medviewer.errors.ReadError` line; private helpers of
:mod:`medviewer.io.instance`.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from medviewer.errors import ReadError
from medviewer.io import header
from medviewer.io.header import HeaderError
from medviewer.io.sniff import _UNDEFINED

__all__: list[str] = []  # private helpers of medviewer.io.instance

_PIXEL_TAGS = {0x7FE00010: "Pixel Data", 0x7FE00008: "Float Pixel Data", 0x7FE00009: "Double Float Pixel Data"}
_LONG_LENGTH_VRS = (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")


_MISSING = object()


def _checked_int(path: Path, ds: Dataset, keyword: str) -> int | None:
    """An integer Image Pixel attribute; present but unparsable (odd VR/value) -> ReadError naming it."""
    value: Any = _MISSING
    try:
        value = header.value(ds, keyword)
        if value is None:
            return None
        if isinstance(value, list):
            value = value[0]
        if isinstance(value, bytes):
            raise ValueError(value)
        number = float(value)
        if not number.is_integer():
            raise ValueError(value)
        return int(number)
    except Exception:
        elem = ds[keyword] if keyword in ds else None
        name = f"{elem.name} {elem.tag}" if elem is not None else keyword
        shown = value if value is not _MISSING else "(unreadable)"
        vr = f" (VR {elem.VR})" if elem is not None else ""
        raise ReadError(path, f"invalid {name} value {shown!r}{vr}; the header is malformed") from None


def _probe_pixel_element(fp: Any, ds: Dataset, file_size: int) -> tuple[int, int, int] | None:
    """After ``dcmread(stop_before_pixels=True)``: (tag, value length, value offset) of the pixel element,
    or None. A negative length is the number of bytes present when the value is cut short."""
    try:
        implicit, little = ds.original_encoding
    except Exception:
        implicit, little = True, True
    order = "<" if little in (True, None) else ">"
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None
    group, elem = struct.unpack(order + "HH", head[:4])
    tag = (group << 16) | elem
    if tag not in _PIXEL_TAGS:
        return None
    vr = head[4:6]
    if implicit or not (vr.isalpha() and vr.isupper()):  # some writers put implicit-VR Pixel Data here
        (length,) = struct.unpack(order + "I", head[4:8])
        value_start = start + 8
    elif vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"UN", b"OV"):
        (length,) = struct.unpack(order + "I", head[8:12])
        value_start = start + 12
    else:
        (length,) = struct.unpack(order + "H", head[6:8])
        value_start = start + 8
    if length != _UNDEFINED and value_start + length > file_size:
        return tag, -(file_size - value_start), value_start  # negative: bytes actually present
    return tag, length, value_start


def _check_elements_after_pixels(path: Path, fp: Any, ds: Dataset, end: int, file_size: int) -> None:
    """Refuse a file cut inside the elements that follow the pixel element (typically Data Set Trailing
    Padding (FFFC,FFFC), PS3.10 7.2): the pixels may be whole, but the file is incomplete like any other
    truncation. `end` is the offset just past the pixel element. Bytes that do not parse as a later element
    (some writers append junk) are left alone.

    Raises
    ------
    ReadError
        ``... is truncated: ... declares N bytes, M present; the file is incomplete``.
    """
    try:
        implicit, little = ds.original_encoding
    except Exception:
        implicit, little = True, True
    order = "<" if little in (True, None) else ">"
    pos = end
    for _ in range(16):  # a handful of trailing elements at most; never a walk over junk
        if pos >= file_size:
            return
        fp.seek(pos)
        head = fp.read(12)
        if len(head) < 4:
            return
        group, elem = struct.unpack(order + "HH", head[:4])
        tag = (group << 16) | elem
        if tag <= 0x7FE00010 or group == 0xFFFE:  # not an element after Pixel Data (PS3.5 7.1: ascending)
            return
        known = pydicom.datadict.dictionary_has_tag(tag)
        name = f"{pydicom.datadict.dictionary_description(tag) if known else 'element'} ({group:04X},{elem:04X})"
        explicit_long = not implicit and head[4:6] in _LONG_LENGTH_VRS
        header_len = 12 if explicit_long else 8
        if len(head) < header_len:
            raise ReadError(path, f"truncated: the file ends inside the header of {name} after the Pixel Data; "
                                  f"the file is incomplete")
        if implicit or explicit_long:
            (length,) = struct.unpack(order + "I", head[header_len - 4:header_len])
        else:
            (length,) = struct.unpack(order + "H", head[6:8])
        if length == _UNDEFINED:
            return  # an undefined-length sequence after the pixels: not ours to walk
        if pos + header_len + length > file_size:
            raise ReadError(path, f"truncated: {name} after the Pixel Data declares {length} bytes, "
                                  f"{file_size - pos - header_len} present; the file is incomplete")
        pos += header_len + length


def _transfer_syntax_problem(ts: str) -> str | None:
    """None when `ts` is a known transfer syntax UID (PS3.5 10, PS3.6 Annex A), else the reason."""
    try:
        uid = pydicom.uid.UID(ts)
        if uid.is_transfer_syntax:
            return None
    except Exception:
        pass
    return (f"unknown Transfer Syntax UID (0002,0010) '{ts}': not a DICOM transfer syntax (PS3.5 10), so "
            f"the pixel data cannot be decoded")


def _check_palette(path: Path, ds: Dataset) -> None:
    """Palette Color Lookup Table descriptors and data (PS3.3 C.7.6.3.1.5, C.7.9): refuse what would not
    decode to a colour image (0 or 7 bits per entry, wrong value count, missing data)."""
    for colour in ("Red", "Green", "Blue"):
        key = f"{colour}PaletteColorLookupTableDescriptor"
        try:
            desc = ds.get(key)
            values = [] if desc is None else [int(v) for v in (desc.value if hasattr(desc, "value") else desc)]
        except Exception:
            values = None
        name = f"{colour} Palette Color Lookup Table Descriptor"
        if values is None or len(values) != 3:
            raise ReadError(path, f"PALETTE COLOR image with a missing or malformed {name} "
                                  f"(3 values expected, PS3.3 C.7.6.3.1.5)")
        entries, _first, bits = values
        if bits not in (8, 16):
            raise ReadError(path, f"{name} declares {bits} bits per entry (8 or 16 expected, "
                                  f"PS3.3 C.7.6.3.1.5); refused")
        entries = entries or 65536
        data = ds.get(f"{colour}PaletteColorLookupTableData")
        segmented = f"Segmented{colour}PaletteColorLookupTableData" in ds
        if data is None and not segmented:
            raise ReadError(path, f"PALETTE COLOR image without {colour} Palette Color Lookup Table Data")
        if data is not None and not segmented:
            try:
                value = data.value if hasattr(data, "value") else data
                count = len(value) if isinstance(value, bytes | bytearray) else 2 * len(value)
            except Exception:
                count = 0
            if count < entries:  # bytes; 8-bit entries may be packed two per 16-bit word
                raise ReadError(path, f"{colour} Palette Color Lookup Table Data has {count} bytes; the "
                                      f"descriptor declares {entries} entries of {bits} bits; refused")


def _check_rescale(path: Path, ds: Dataset, frames: int, modality: str, bits_stored: int, signed: bool) -> None:
    """Refuse a rescale that would make every modality value wrong: an unreadable Rescale Slope/Intercept
    or one that overflows (:func:`rescale_problem`), for the first frame and every frame with its own Pixel
    Value Transformation (PS3.3 C.7.6.16.2.9)."""
    checked = [0]
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        try:
            per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
            checked += [k for k, item in enumerate(per_frame) if 0 < k < frames
                        and "PixelValueTransformationSequence" in item]
        except Exception:
            pass
    for frame in checked:
        try:
            values = header.rescale(ds, frame, modality)
        except HeaderError as exc:
            raise ReadError(path, str(exc)) from None
        problem = values.problem(bits_stored, signed)
        if problem:
            raise ReadError(path, problem if len(checked) == 1 else f"frame {frame + 1}: {problem}")
