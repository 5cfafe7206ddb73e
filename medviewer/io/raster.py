"""PNG/JPEG files as images: header-only size probes (PNG IHDR, JPEG SOFn), truncation checks and decoding.

Used by :mod:`medviewer.io.instance` for non-DICOM images; the pixel budget of :mod:`medviewer.limits` is
checked from the header before anything is decoded.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medviewer.errors import ReadError, error_line
from medviewer.io.files import open_regular, os_error_reason
from medviewer.io.sniff import FileKind, _sniff
from medviewer.limits import get_limits

__all__: list[str] = []  # private helpers of medviewer.io.instance


def _to_u8_color(arr: np.ndarray, bits: int) -> np.ndarray:
    """RGB samples of `bits` bits -> uint8 by rounding ``x * 255 / (2**bits - 1)``."""
    if arr.dtype == np.uint8:
        return arr
    bits = max(1, min(int(bits), 32))
    scaled = np.clip(np.rint(arr.astype(np.float64) * (255.0 / (2**bits - 1))), 0, 255)
    return scaled.astype(np.uint8)


def _read_raster(path: Path, expected: tuple[int, int] | None = None) -> np.ndarray:
    """PNG/JPEG pixels: uint8/uint16 ``(H, W)`` gray or ``(H, W, 3)`` RGB (alpha dropped).

    The declared size is checked against the pixel budget (:mod:`medviewer.limits`) before decoding;
    `expected` ``(rows, columns)``, when given, must match the decoded image.
    """
    header = _raster_header(path, _sniff(path))
    if header is None:
        raise ReadError(path, "not a readable PNG/JPEG image (no PNG IHDR / JPEG SOF header found)")
    budget = get_limits().frame_problem(header[0], header[1], header[2])
    if budget:
        raise ReadError(path, f"{budget}; refused before decoding")
    try:
        with open_regular(path) as fp:
            data = np.fromfile(fp, dtype=np.uint8)
    except OSError as exc:
        raise ReadError(path, os_error_reason(exc)) from None
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    except cv2.error as exc:
        raise ReadError(path, f"not a readable PNG/JPEG image: {error_line(exc)}") from None
    if img is None:
        raise ReadError(path, "not a readable PNG/JPEG image (corrupt or truncated)")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.dtype not in (np.uint8, np.uint16):
        raise ReadError(path, f"unsupported raster sample type {img.dtype} (expected 8- or 16-bit)")
    if expected is not None and img.shape[:2] != tuple(expected):
        raise ReadError(path, f"decoded image is {img.shape[1]}x{img.shape[0]}, its header declares "
                              f"{expected[1]}x{expected[0]}; refused")
    return img


def _jpeg_header(fp: Any, file_size: int) -> tuple[int, int, int, int] | None:
    """Walk JPEG marker segments (seeking, not reading the file) to the first SOFn: (rows, cols, samples, bits)."""
    pos = 2
    for _ in range(10_000):
        fp.seek(pos)
        head = fp.read(10)
        if len(head) < 4 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", head[2:4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if len(head) < 10:
                return None
            bits, height, width, comps = struct.unpack(">BHHB", head[4:10])
            return height, width, (1 if comps == 1 else 3), bits
        if marker in (0xD9, 0xDA) or length < 2 or pos + 2 + length > file_size:
            return None
        pos += 2 + length
    return None


def _raster_header(path: Path, kind: str) -> tuple[int, int, int, int] | None:
    """(rows, columns, samples, bits) from a PNG IHDR or a JPEG SOFn marker, without decoding."""
    try:
        with open_regular(path) as fp:
            if kind == FileKind.PNG:
                head = fp.read(32)
                if len(head) < 26 or head[12:16] != b"IHDR":
                    return None
                width, height, bits, color_type = struct.unpack(">IIBB", head[16:26])
                samples = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}.get(color_type)
                if samples is None:
                    return None
                _check_raster_end(path, fp, kind, 33)
                return height, width, samples, 8 if color_type == 3 else bits
            header = _jpeg_header(fp, os.fstat(fp.fileno()).st_size)
            if header is not None:
                _check_raster_end(path, fp, kind, fp.tell())
            return header
    except OSError as exc:
        raise ReadError(path, os_error_reason(exc)) from None


#: how far from the end of a PNG/JPEG file its end marker is looked for (writers may pad a little)
_TAIL_BYTES = 4096
_PNG_IEND = b"IEND\xaeB`\x82"  # the IEND chunk's type and CRC (PNG spec 11.2.5)
_JPEG_EOI = b"\xff\xd9"  # end of image (ITU T.81 B.1.1.3); never inside entropy-coded data (FF is stuffed)


def _check_raster_end(path: Path, fp: Any, kind: str, after: int) -> None:
    """Refuse a PNG without its IEND chunk, or a JPEG without its EOI marker after the SOF, in the last
    :data:`_TAIL_BYTES`: the file was cut. A cheap check (one read at the end) that lets the header-only
    readers (``medviewer info``, the folder scan) call a truncated raster truncated; decoders fill the
    missing rows with grey or black, or refuse only when decoding.

    Raises
    ------
    ReadError
        ``truncated: no PNG IEND chunk at the end`` / ``truncated: no JPEG end-of-image marker (FFD9) ...``.
    """
    size = os.fstat(fp.fileno()).st_size
    start = max(after, size - _TAIL_BYTES)
    fp.seek(start)
    tail = fp.read(size - start)
    if kind == FileKind.PNG:
        if _PNG_IEND not in tail:
            raise ReadError(path, "truncated: no PNG IEND chunk at the end of the file")
    elif _JPEG_EOI not in tail:
        raise ReadError(path, "truncated: no JPEG end-of-image marker (FFD9) at the end of the file")
