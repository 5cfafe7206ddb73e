"""Exceptions raised by MedViewer's Qt-free code.

Every error carries a one-line, user-facing message naming the file (or model) and the cause, so the
CLI can print it and the GUI can show it in a dialog without a traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MedViewerError", "ReadError", "ModelPackageError", "InferenceError", "error_line", "display_path",
           "DEBUG_ENV"]

#: set (to anything) for diagnostics that are hidden by default: the traceback of an unexpected error in a
#: GUI worker task, and onnxruntime's own log while a session is created (which names a CUDA library it misses)
DEBUG_ENV = "MEDVIEWER_DEBUG"


def display_path(path: str | Path) -> str:
    """`path` as printable text: bytes of a non-UTF-8 file name (held by Python as lone surrogates,
    PEP 383) are shown as ``\\xNN`` escapes, so printing or writing it as UTF-8 never raises
    ``UnicodeEncodeError``."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


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
        super().__init__(f"{display_path(self.path)}: {reason}")


class ModelPackageError(MedViewerError, ValueError):
    """A model package (``model.onnx`` + ``model.json``) failed validation; the message says why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class InferenceError(MedViewerError, RuntimeError):
    """Running a model failed (bad input shape, provider failure)."""


def error_line(exc: BaseException, limit: int = 300) -> str:
    """One user-facing line for any exception: a :class:`MedViewerError`'s own message, else
    ``Type: message``; white space (newlines included) folded, at most ``limit`` characters."""
    text = display_path(" ".join(str(exc).split()))
    if not isinstance(exc, MedViewerError):
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return (text[: limit - 1] + "…" if len(text) > limit else text) or type(exc).__name__
