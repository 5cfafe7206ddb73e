"""Reading images: DICOM instances (pydicom + pylibjpeg) and PNG/JPEG (OpenCV), folder scans.

``read_instance(path)`` reads one file's header (pixels lazily, :meth:`Instance.stored_pixels`);
``scan(paths)`` finds every image under files/folders and groups them patient -> study -> series.
:mod:`medviewer.io.header` is the one reader of header attributes (functional groups, DS values, per-frame
pixel spacing and rescale, units); :mod:`medviewer.io.enum` holds the defined terms.
"""

from __future__ import annotations

from medviewer.io import header
from medviewer.io.enum import PhotometricInterpretation, PixelRepresentation, PixelSpacingSource, RescaleType
from medviewer.io.header import HeaderError, PixelSpacing, Rescale
from medviewer.io.instance import Instance, quiet_pydicom_warnings, read_instance, sniff_kind
from medviewer.io.scan import Gap, ScanResult, Series, Skipped, SliceOrder, Study, order_instances, scan
from medviewer.io.transfer_syntax import check_decodable, decoder_hint, transfer_syntax_name

__all__ = [
    "Instance",
    "read_instance",
    "sniff_kind",
    "quiet_pydicom_warnings",
    "scan",
    "ScanResult",
    "Study",
    "Series",
    "Skipped",
    "Gap",
    "SliceOrder",
    "order_instances",
    "PhotometricInterpretation",
    "PixelRepresentation",
    "PixelSpacingSource",
    "RescaleType",
    "header",
    "HeaderError",
    "PixelSpacing",
    "Rescale",
    "check_decodable",
    "decoder_hint",
    "transfer_syntax_name",
]
