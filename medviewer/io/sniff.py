"""What a file is, by its first bytes: DICOM (PS3.10 7.1 ``DICM`` prefix, or a bare dataset), PNG or JPEG.

Never by file extension; a file that is not a readable regular file is :attr:`FileKind.UNKNOWN` (or, from
the private :func:`_sniff`, a :class:`~medviewer.errors.ReadError` naming the reason).
"""

from __future__ import annotations

import struct
from enum import Enum
from pathlib import Path

from medviewer.errors import ReadError
from medviewer.io.files import open_regular, os_error_reason

__all__ = ["FileKind", "sniff_kind"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_UNDEFINED = 0xFFFFFFFF


class FileKind(str, Enum):
    """What :func:`sniff_kind` recognised a file as (by content)."""

    DICOM = "dicom"
    PNG = "png"
    JPEG = "jpeg"
    UNKNOWN = "unknown"


def sniff_kind(path: str | Path) -> FileKind:
    """Recognise a file by its first bytes: one of the :class:`FileKind` values.

    DICOM Part 10 files carry ``DICM`` at byte 128; bare datasets (no preamble) are accepted when their
    first element is in group 0x0002 or 0x0008 (either byte order) with a plausible VR or length.
    Anything that is not a readable regular file (missing, permission denied, a FIFO or device: never
    opened in a way that could block) is :attr:`FileKind.UNKNOWN`.
    """
    try:
        return _sniff(Path(path))
    except ReadError:
        return FileKind.UNKNOWN


def _sniff(path: Path) -> FileKind:
    """:func:`sniff_kind`, but an unreadable or special file raises :class:`ReadError` with the reason."""
    with open_regular(path) as fp:
        try:
            head = fp.read(132)
        except OSError as exc:
            raise ReadError(path, os_error_reason(exc)) from None
    if len(head) >= 132 and head[128:132] == b"DICM":
        return FileKind.DICOM
    if head.startswith(_PNG_MAGIC):
        return FileKind.PNG
    if head.startswith(_JPEG_MAGIC):
        return FileKind.JPEG
    if len(head) >= 8:
        for order in "<>":
            group, elem = struct.unpack(order + "HH", head[:4])
            if group in (0x0002, 0x0008) and elem < 0x2000:
                vr = head[4:6]
                if vr.isalpha() and vr.isupper():
                    return FileKind.DICOM
                (length,) = struct.unpack(order + "I", head[4:8])
                if length < 0x10000 or length == _UNDEFINED:
                    return FileKind.DICOM
    return FileKind.UNKNOWN
