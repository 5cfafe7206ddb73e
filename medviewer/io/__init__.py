"""Reading images: DICOM instances (pydicom + pylibjpeg) and PNG/JPEG (OpenCV), folder scans.

``read_instance(path)`` reads one file's header (pixels lazily, :meth:`Instance.stored_pixels`);
``scan(paths)`` finds every image under files/folders and groups them patient -> study -> series.
"""

from __future__ import annotations

from medviewer.io.enum import PhotometricInterpretation, PixelRepresentation, PixelSpacingSource
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
    "check_decodable",
    "decoder_hint",
    "transfer_syntax_name",
]
