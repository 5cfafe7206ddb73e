"""The display pipeline (PS3.3 C.11 / PS3.4 N.2): stored values -> 8-bit display image.

``display_image(inst)`` is what the viewer shows, ``medviewer render`` writes and the model receives.
Model preprocessing of that image lives in :mod:`medviewer.imaging.preprocess`.
"""

from __future__ import annotations

from medviewer.imaging.enum import PresentationLutShape, RescaleType, VoiLutFunction
from medviewer.imaging.lut import LutError, ModalityLut, VoiLut
from medviewer.imaging.pipeline import DisplayPipeline, check_not_blank, display_image
from medviewer.imaging.window import (
    IDENTITY_8BIT,
    PRESETS,
    Preset,
    Window,
    apply_window,
    auto_window,
    find_preset,
    invert_u8,
    linear_window,
    presets_for,
)

__all__ = [
    "DisplayPipeline",
    "display_image",
    "check_not_blank",
    "Window",
    "VoiLutFunction",
    "PresentationLutShape",
    "RescaleType",
    "ModalityLut",
    "VoiLut",
    "LutError",
    "Preset",
    "PRESETS",
    "IDENTITY_8BIT",
    "presets_for",
    "find_preset",
    "apply_window",
    "auto_window",
    "invert_u8",
    "linear_window",
]
