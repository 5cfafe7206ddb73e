"""Resource limits: how big an image or model input MedViewer agrees to allocate, how long it waits.

Declared sizes (DICOM Rows x Columns x Samples per Pixel x Number of Frames, a PNG IHDR, a JPEG SOF
marker, a model card's input size) are checked against these budgets *before* any pixel buffer is
allocated, so a file that lies about its size cannot drive the machine out of memory. The field's
precedents are OpenCV's ``CV_IO_MAX_IMAGE_PIXELS`` (default 2**30) and Pillow's decompression-bomb guard
(``Image.MAX_IMAGE_PIXELS``, about 89 M pixels).

Every limit has a default and an environment variable that overrides it (read at each call, so a test or
a deployment can change it without reloading anything):

====================================  ======================================  ===================================
setting                               environment variable                    default
====================================  ======================================  ===================================
``max_frame_pixels``                  ``MEDVIEWER_MAX_FRAME_PIXELS``          2**26 (67 M samples, 8192 x 8192)
``max_series_pixels``                 ``MEDVIEWER_MAX_SERIES_PIXELS``         2**31 (2.1 G samples, all frames)
``max_model_input_pixels``            ``MEDVIEWER_MAX_MODEL_INPUT_PIXELS``    2**24 (16.7 M, 4096 x 4096)
``model_validation_seconds``          ``MEDVIEWER_DRY_RUN_SECONDS``           20 s (each validation dry run)
====================================  ======================================  ===================================

Pixel counts are *samples*: an RGB pixel counts three. 8192 x 8192 is above any projection radiograph or
mammogram (about 4000 x 5000) a reading workstation opens; measured, ``medviewer render`` of an 8192 x 8192
frame peaks at 0.8 GB (16-bit) and 0.6 GB (32-bit float, rendered in blocks of rows). Values must be
positive integers (seconds: a positive number); an unparsable value is an error naming the variable
(:class:`LimitError`), never silently ignored.

Qt-free and torch-free: the GUI, the CLI and inference all read the same settings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from medviewer.errors import MedViewerError

__all__ = [
    "Limits",
    "LimitError",
    "get_limits",
    "MAX_FRAME_PIXELS_ENV",
    "MAX_SERIES_PIXELS_ENV",
    "MAX_MODEL_INPUT_PIXELS_ENV",
    "MODEL_VALIDATION_SECONDS_ENV",
    "DEFAULT_MAX_FRAME_PIXELS",
    "DEFAULT_MAX_SERIES_PIXELS",
    "DEFAULT_MAX_MODEL_INPUT_PIXELS",
    "DEFAULT_MODEL_VALIDATION_SECONDS",
]

MAX_FRAME_PIXELS_ENV = "MEDVIEWER_MAX_FRAME_PIXELS"
MAX_SERIES_PIXELS_ENV = "MEDVIEWER_MAX_SERIES_PIXELS"
MAX_MODEL_INPUT_PIXELS_ENV = "MEDVIEWER_MAX_MODEL_INPUT_PIXELS"
MODEL_VALIDATION_SECONDS_ENV = "MEDVIEWER_DRY_RUN_SECONDS"  # as medviewer.inference.package reads it

DEFAULT_MAX_FRAME_PIXELS = 2**26
DEFAULT_MAX_SERIES_PIXELS = 2**31
DEFAULT_MAX_MODEL_INPUT_PIXELS = 2**24
DEFAULT_MODEL_VALIDATION_SECONDS = 20.0


class LimitError(MedViewerError, ValueError):
    """An environment variable holds an invalid limit (the message names the variable and the value)."""


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(float(text)) if "e" in text.lower() else int(text.replace("_", ""))
    except ValueError:
        raise LimitError(f"{name}={text!r} is not an integer") from None
    if value < 1:
        raise LimitError(f"{name}={text!r} must be at least 1")
    return value


def _env_seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise LimitError(f"{name}={text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise LimitError(f"{name}={text!r} must be a positive, finite number of seconds")
    return value


@dataclass(frozen=True)
class Limits:
    """The resource limits in force (see the module docstring for defaults and environment variables).

    Attributes
    ----------
    max_frame_pixels : int
        Most samples (rows x columns x samples per pixel) one decoded frame or raster image may declare.
    max_series_pixels : int
        Most samples one instance may declare over all its frames (rows x columns x samples x frames),
        and the budget a viewer should keep a whole series' decoded frames under.
    max_model_input_pixels : int
        Most pixels (height x width) a model package may declare as its input size.
    model_validation_seconds : float
        Time limit of a model package's validation dry run.
    """

    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS
    max_series_pixels: int = DEFAULT_MAX_SERIES_PIXELS
    max_model_input_pixels: int = DEFAULT_MAX_MODEL_INPUT_PIXELS
    model_validation_seconds: float = DEFAULT_MODEL_VALIDATION_SECONDS

    @classmethod
    def from_env(cls) -> Limits:
        """The defaults, overridden by the ``MEDVIEWER_*`` environment variables.

        Raises
        ------
        LimitError
            A variable is set to something that is not a positive integer (seconds: positive number).
        """
        return cls(
            max_frame_pixels=_env_int(MAX_FRAME_PIXELS_ENV, DEFAULT_MAX_FRAME_PIXELS),
            max_series_pixels=_env_int(MAX_SERIES_PIXELS_ENV, DEFAULT_MAX_SERIES_PIXELS),
            max_model_input_pixels=_env_int(MAX_MODEL_INPUT_PIXELS_ENV, DEFAULT_MAX_MODEL_INPUT_PIXELS),
            model_validation_seconds=_env_seconds(MODEL_VALIDATION_SECONDS_ENV, DEFAULT_MODEL_VALIDATION_SECONDS),
        )

    def frame_problem(self, rows: int, columns: int, samples: int = 1, frames: int = 1) -> str | None:
        """``None`` when an image of this declared size is within the budgets, else a one-line reason.

        Parameters
        ----------
        rows, columns, samples, frames
            Declared dimensions (DICOM Rows, Columns, Samples per Pixel, Number of Frames; a raster's
            height, width and channels with ``frames=1``).
        """
        per_frame = int(rows) * int(columns) * max(1, int(samples))
        if per_frame > self.max_frame_pixels:
            return (f"declared size {columns}x{rows}x{samples} = {per_frame:,} samples per frame exceeds the "
                    f"limit of {self.max_frame_pixels:,} ({MAX_FRAME_PIXELS_ENV})")
        total = per_frame * max(1, int(frames))
        if total > self.max_series_pixels:
            return (f"declared size {columns}x{rows}x{samples} x {frames} frames = {total:,} samples exceeds the "
                    f"limit of {self.max_series_pixels:,} ({MAX_SERIES_PIXELS_ENV})")
        return None


def get_limits() -> Limits:
    """The limits in force now: :meth:`Limits.from_env` (environment read at each call)."""
    return Limits.from_env()
