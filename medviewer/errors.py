"""Exceptions raised by MedViewer's Qt-free code.

Every error carries a one-line, user-facing message naming the file (or model) and the cause, so the
CLI can print it and the GUI can show it in a dialog without a traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MedViewerError", "ReadError", "ModelPackageError", "InferenceError"]


class MedViewerError(Exception):
    """Base class of all errors MedViewer reports to a user."""


class ReadError(MedViewerError, ValueError):
    """A file could not be read as an image (DICOM, PNG or JPEG).

    Parameters
    ----------
    path
        The file that failed.
    reason
        One line: the cause and, where there is one, what to do (e.g. which decoder plugin to install).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ModelPackageError(MedViewerError, ValueError):
    """A model package (``model.onnx`` + ``model.json``) failed validation; the message says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class InferenceError(MedViewerError, RuntimeError):
    """Running a model failed (bad input shape, provider failure)."""
