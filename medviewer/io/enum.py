"""DICOM defined terms used when reading instances, as enums (PS3.3 C.7.6.3, C.7.3.1)."""

from __future__ import annotations

from enum import Enum

__all__ = ["DefinedTerm", "PhotometricInterpretation", "PixelSpacingSource", "PixelRepresentation", "RASTER_MODALITY"]

#: Modality reported for PNG/JPEG images ("Other", PS3.3 C.7.3.1.1.1).
RASTER_MODALITY = "OT"


class DefinedTerm(str, Enum):
    """Base of DICOM defined terms (CS values): :meth:`lookup` tolerates padding and case."""

    @classmethod
    def lookup(cls, value: object) -> DefinedTerm | None:
        """The member for a (possibly padded or lower-case) string or member, else ``None``."""
        if isinstance(value, cls):
            return value
        text = str(getattr(value, "value", value) or "").strip().upper()
        try:
            return cls(text)
        except ValueError:
            return None


class PhotometricInterpretation(DefinedTerm):
    """Photometric Interpretation (0028,0004), PS3.3 C.7.6.3.1.2."""

    MONOCHROME1 = "MONOCHROME1"  #: minimum value is displayed white
    MONOCHROME2 = "MONOCHROME2"  #: minimum value is displayed black
    PALETTE_COLOR = "PALETTE COLOR"
    RGB = "RGB"
    YBR_FULL = "YBR_FULL"
    YBR_FULL_422 = "YBR_FULL_422"
    YBR_PARTIAL_420 = "YBR_PARTIAL_420"
    YBR_ICT = "YBR_ICT"
    YBR_RCT = "YBR_RCT"

    @property
    def is_monochrome(self) -> bool:
        """True for MONOCHROME1/2, the only interpretations the VOI LUT applies to (PS3.3 C.11.2)."""
        return self in (PhotometricInterpretation.MONOCHROME1, PhotometricInterpretation.MONOCHROME2)

    @classmethod
    def parse(cls, value: object) -> PhotometricInterpretation | None:
        """The enum member for a (possibly padded or lower-case) string, else ``None``."""
        return cls.lookup(value)


class PixelSpacingSource(str, Enum):
    """Which attribute gave an instance's pixel spacing (PS3.3 10.7.1.3)."""

    PIXEL_SPACING = "PixelSpacing"  #: (0028,0030), in the patient
    IMAGER_PIXEL_SPACING = "ImagerPixelSpacing"  #: (0018,1164), at the detector (projection radiography)


class PixelRepresentation(int, Enum):
    """Pixel Representation (0028,0103)."""

    UNSIGNED = 0
    SIGNED = 1
