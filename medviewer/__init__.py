"""MedViewer: a DICOM reading workstation with explainable AI.

Qt is imported only under :mod:`medviewer.gui`; everything else (reading, display pipeline,
inference, export) is plain Python/numpy/OpenCV and usable without a window.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
