"""DICOM defined terms of the display pipeline, as enums (PS3.3 C.11)."""

from __future__ import annotations

from enum import Enum

__all__ = ["VoiLutFunction", "PresentationLutShape", "RescaleType"]


class VoiLutFunction(str, Enum):
    """VOI LUT Function (0028,1056), PS3.3 C.11.2.1.2 / C.11.2.1.3."""

    LINEAR = "LINEAR"  #: the default when the attribute is absent
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"

    @classmethod
    def parse(cls, value: object) -> VoiLutFunction:
        """The member for a DICOM string; absent or unknown values fall back to LINEAR (PS3.3 C.11.2.1.3)."""
        if isinstance(value, cls):
            return value
        text = str(getattr(value, "value", value) or "").strip().upper()
        try:
            return cls(text)
        except ValueError:
            return cls.LINEAR


class PresentationLutShape(str, Enum):
    """Presentation LUT Shape (2050,0020), PS3.3 C.11.6.1.2."""

    IDENTITY = "IDENTITY"  #: output is in P-Values (MONOCHROME2, colour)
    INVERSE = "INVERSE"  #: output after inversion is in P-Values (MONOCHROME1)


class RescaleType(str, Enum):
    """Common Rescale Type (0028,1054) values, PS3.3 C.11.1.1.2 (HU for CT)."""

    HU = "HU"  #: Hounsfield Units
    US = "US"  #: unspecified
    OD = "OD"  #: optical density
