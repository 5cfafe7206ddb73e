"""Lookup tables of the grayscale standard display pipeline: Modality LUT and VOI LUT (PS3.3 C.11).

PS3.4 N.2.1.1 order: stored values -> Modality LUT (C.11.1) -> VOI LUT (C.11.2) -> Presentation LUT
(C.11.6) -> P-Values. These classes are built once per instance from its header (pydicom Dataset).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

from medviewer.io.enum import RescaleType

__all__ = ["ModalityLut", "VoiLut", "LutError", "read_lut_item"]


class LutError(ValueError):
    """A Modality or VOI LUT Sequence item whose descriptor and data disagree (PS3.3 C.11.1.1.1,
    C.11.2.1.1); the message says which value is wrong."""


def _descriptor(item: Dataset, pixel_signed: bool) -> tuple[int, int, int]:
    try:
        raw = item.LUTDescriptor
        values = list(raw) if not isinstance(raw, int | float) else [raw]
        desc = [int(v) for v in values]
    except Exception:
        raise LutError("LUT Descriptor (0028,3002) is missing or unreadable") from None
    if len(desc) != 3:
        raise LutError(f"LUT Descriptor (0028,3002) must have 3 values, got {len(desc)}")
    entries, first, bits = desc
    if entries < 0 or bits < 0:
        raise LutError(f"LUT Descriptor (0028,3002) {desc} has a negative value")
    entries = entries or 65536  # PS3.3 C.11.1.1.1: 0 means 2**16 entries
    if not 8 <= bits <= 16:
        raise LutError(f"LUT Descriptor (0028,3002) declares {bits} bits per entry (8 to 16 expected)")
    if pixel_signed and first > 32767:  # US/SS ambiguity of the first mapped value
        first -= 65536
    return entries, first, bits


def read_lut_item(item: Dataset, pixel_signed: bool, little_endian: bool = True
                  ) -> tuple[int, np.ndarray, int]:
    """Decode and validate one Modality/VOI LUT Sequence item (PS3.3 C.11.1.1.1, C.11.2.1.1).

    Returns
    -------
    (first_mapped, data, bits)
        First input value mapped, the LUT entries as int64 ``(n,)`` (``n`` = the descriptor's number of
        entries) and the nominal bits per entry.

    Raises
    ------
    LutError
        Descriptor without 3 values, bits per entry outside 8..16, fewer LUT Data (0028,3006) values
        than the descriptor declares, or no data.
    """
    entries, first, bits = _descriptor(item, pixel_signed)
    if "LUTData" not in item:
        raise LutError("no LUT Data (0028,3006)")
    elem = item["LUTData"]
    if elem.VR in ("OW", "OB", "UN") or isinstance(elem.value, bytes | bytearray):
        raw = bytes(elem.value or b"")
        count = len(raw) // 2
        data = np.asarray(struct.unpack(f"{'<' if little_endian else '>'}{count}H", raw[: 2 * count]), np.int64)
    else:
        value = elem.value
        if value is None:
            value = []
        data = np.asarray(list(value) if not isinstance(value, int | float) else [value], np.int64)
    if data.size == 0:
        raise LutError("empty LUT Data (0028,3006)")
    if data.size < entries:
        raise LutError(f"LUT Data (0028,3006) has {data.size} values, the LUT Descriptor declares {entries}")
    return first, data[:entries], bits


@dataclass(frozen=True, eq=False)
class ModalityLut:
    """Modality LUT (PS3.3 C.11.1): Rescale Slope/Intercept, or a Modality LUT Sequence.

    ``lut`` (int64 ``(n,)``) with ``first_mapped`` takes precedence; inputs below ``first_mapped`` map to the
    first entry and inputs past the end to the last (C.11.1.1.1). Otherwise ``y = slope * x + intercept``.
    ``rescale_type`` is the Rescale Type / Modality LUT Type as written; ``units`` what the values are, as
    decided by :func:`medviewer.io.header.rescale_units` (HU for a CT without Rescale Type).
    """

    slope: float = 1.0
    intercept: float = 0.0
    rescale_type: str = ""
    lut: np.ndarray | None = None
    first_mapped: int = 0
    lut_bits: int = 16
    units: RescaleType = RescaleType.US

    @property
    def is_identity(self) -> bool:
        """True when modality values equal stored values."""
        return self.lut is None and self.slope == 1.0 and self.intercept == 0.0

    def apply(self, stored: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        """Stored values -> modality values (HU for CT), as `dtype` (float32 by default)."""
        x = np.asarray(stored)
        if self.lut is not None:
            idx = np.clip(x.astype(np.int64) - self.first_mapped, 0, self.lut.size - 1)
            return self.lut[idx].astype(dtype)
        y = x.astype(dtype)
        if self.slope != 1.0:
            y *= dtype(self.slope)
        if self.intercept != 0.0:
            y += dtype(self.intercept)
        return y


@dataclass(frozen=True, eq=False)
class VoiLut:
    """One VOI LUT Sequence item (PS3.3 C.11.2.1.1): a table from modality values to display values."""

    first_mapped: int
    data: np.ndarray
    bits: int
    explanation: str = ""

    @property
    def max_output(self) -> int:
        """Full-scale output value: ``2**bits - 1``, widened when the data exceed the declared bits."""
        bits = self.bits if 8 <= self.bits <= 16 else 16
        top = int(self.data.max()) if self.data.size else 0
        while top > 2**bits - 1 and bits < 32:
            bits += 1
        return 2**bits - 1

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Modality values -> ``[0, 1]`` float64 (inputs clipped to the table's range, C.11.2.1.1)."""
        x = np.asarray(values)
        x = np.floor(x).astype(np.int64) if x.dtype.kind == "f" else x.astype(np.int64)
        idx = np.clip(x - self.first_mapped, 0, self.data.size - 1)
        return self.data[idx] / float(self.max_output)
