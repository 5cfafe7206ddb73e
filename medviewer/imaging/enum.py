"""DICOM defined terms of the display pipeline, as enums (PS3.3 C.11).

:class:`RescaleType` is defined in :mod:`medviewer.io.enum` (the header reader decides the units) and
re-exported here.
"""

from __future__ import annotations

from medviewer.io.enum import DefinedTerm, RescaleType

__all__ = ["VoiLutFunction", "PresentationLutShape", "RescaleType"]


class VoiLutFunction(DefinedTerm):
    """VOI LUT Function (0028,1056), PS3.3 C.11.2.1.2 / C.11.2.1.3."""

    LINEAR = "LINEAR"  #: the default when the attribute is absent
    LINEAR_EXACT = "LINEAR_EXACT"
    SIGMOID = "SIGMOID"

    @classmethod
    def parse(cls, value: object) -> VoiLutFunction:
        """The member for a DICOM string; absent or unknown values fall back to LINEAR (PS3.3 C.11.2.1.3)."""
        return cls.lookup(value) or cls.LINEAR


class PresentationLutShape(DefinedTerm):
    """Presentation LUT Shape (2050,0020), PS3.3 C.11.6.1.2."""

    IDENTITY = "IDENTITY"  #: output is in P-Values (MONOCHROME2, colour)
    INVERSE = "INVERSE"  #: output after inversion is in P-Values (MONOCHROME1)
