"""DICOM defined terms used when reading instances, as enums (PS3.3 C.7.6.3, C.7.3.1, C.11.1).

Members are ``str`` subclasses whose ``str()`` and format are the DICOM value, so they compare equal to
the strings in a header and serialise to them in JSON (``medviewer info --json``).
"""

from __future__ import annotations

from enum import Enum
from typing import TypeVar

__all__ = ["DefinedTerm", "PhotometricInterpretation", "PixelSpacingSource", "PixelRepresentation", "RescaleType",
           "RASTER_MODALITY"]

_Term = TypeVar("_Term", bound="DefinedTerm")

#: Modality reported for PNG/JPEG images ("Other", PS3.3 C.7.3.1.1.1).
RASTER_MODALITY = "OT"


class DefinedTerm(str, Enum):
    """Base of DICOM defined terms (CS values): :meth:`lookup` tolerates padding and case."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def lookup(cls: type[_Term], value: object) -> _Term | None:
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
    """Which attribute gave an instance's pixel spacing (PS3.3 10.7.1.3); values are the attribute keywords."""

    PIXEL_SPACING = "PixelSpacing"  #: (0028,0030) or Pixel Measures: in the patient
    IMAGER_PIXEL_SPACING = "ImagerPixelSpacing"  #: (0018,1164): at the detector (projection radiography)
    NOMINAL_SCANNED_PIXEL_SPACING = "NominalScannedPixelSpacing"  #: (0018,2010): of a scanned film/document

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @property
    def in_patient(self) -> bool:
        """True when distances are in the patient; Imager Pixel Spacing is at the detector plane (not
        corrected for geometric magnification) and a scanned document's spacing is of the film."""
        return self == PixelSpacingSource.PIXEL_SPACING


class PixelRepresentation(int, Enum):
    """Pixel Representation (0028,0103)."""

    UNSIGNED = 0
    SIGNED = 1


class RescaleType(DefinedTerm):
    """Rescale Type (0028,1054) / Modality LUT Type (0028,3004) defined terms, PS3.3 C.11.1.1.2: the units of
    modality values. :func:`medviewer.io.header.rescale_units` decides which applies (HU for CT without one)."""

    OD = "OD"  #: optical density
    HU = "HU"  #: Hounsfield Units
    US = "US"  #: unspecified
    MGML = "MGML"  #: mg/ml
    Z_EFF = "Z_EFF"  #: effective atomic number
    ED = "ED"  #: electron density, 10^23 electrons/ml
    EDW = "EDW"  #: electron density normalised to water
    HU_MOD = "HU_MOD"  #: modified Hounsfield Units
    PCT = "PCT"  #: percentage

    @property
    def label(self) -> str:
        """Short unit label for display: ``"HU"``, ``"mg/ml"``, ``"%"``, ...; ``""`` when unspecified."""
        return _UNIT_LABELS.get(self, self.value)


_UNIT_LABELS = {RescaleType.US: "", RescaleType.MGML: "mg/ml", RescaleType.PCT: "%", RescaleType.Z_EFF: "Zeff",
                RescaleType.HU_MOD: "HU (modified)"}
