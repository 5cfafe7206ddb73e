"""Checks of encapsulated (compressed) Pixel Data before it reaches a decoder (PS3.5 A.4).

A decoder handed a truncated JPEG stream often returns the part it could decode and fills the rest
with black, without an error; one handed a JPEG 2000 codestream under a JPEG baseline label may decode
it through whichever plugin sniffs the content; one handed a codestream that declares 60000 x 60000
pixels allocates them. So before decoding we walk the item structure of the encapsulated Pixel Data
(headers only: a few small reads per fragment) and check, per frame where the frame boundaries are
known:

- the items are (FFFE,E000) fragments ending in a (FFFE,E0DD) Sequence Delimitation Item, every
  fragment lies inside the file (PS3.5 A.4) -- else the file is truncated;
- the first fragment starts with the marker of the transfer syntax's family: SOI (FFD8) for JPEG and
  JPEG-LS (ISO 10918-1, 14495-1), SOC+SIZ (FF4F FF51) or the JP2 signature box for JPEG 2000 / HTJ2K
  (ISO 15444-1), a 64-byte RLE header (PS3.5 G.5);
- the image size and number of components in the JPEG SOF / JPEG 2000 SIZ marker segment agree with
  Rows, Columns and Samples per Pixel;
- a JPEG / JPEG 2000 frame ends with its EOI/EOC marker (FFD9), so a cut stream is refused instead of
  being shown with its lower part black.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import pydicom.uid as _uid

__all__ = ["check_encapsulated", "EncapsulationProblem", "JPEG_FAMILY", "J2K_FAMILY"]

JPEG_FAMILY = frozenset({_uid.JPEGBaseline8Bit, _uid.JPEGExtended12Bit, _uid.JPEGLossless, _uid.JPEGLosslessSV1})
JPEG_LS_FAMILY = frozenset({_uid.JPEGLSLossless, _uid.JPEGLSNearLossless})
J2K_FAMILY = frozenset({_uid.JPEG2000Lossless, _uid.JPEG2000, _uid.HTJ2KLossless, _uid.HTJ2KLosslessRPCL,
                        _uid.HTJ2K})

_ITEM = (0xFFFE, 0xE000)
_SEQ_DELIM = (0xFFFE, 0xE0DD)
_UNDEFINED = 0xFFFFFFFF
_JP2_SIGNATURE = b"\x00\x00\x00\x0cjP  \r\n\x87\n"
_MAX_ITEMS = 1_000_000
_HEAD = 65536  # bytes of a frame's first fragment read to find its SOF/SIZ


class EncapsulationProblem(ValueError):
    """The encapsulated Pixel Data is malformed; the message is the one-line reason."""

    def __init__(self, reason: str, truncated: bool = False) -> None:
        super().__init__(reason)
        self.truncated = truncated


def _items(fp: BinaryIO, offset: int, file_size: int) -> list[tuple[int, int]]:
    """(value offset, length) of every item up to the Sequence Delimitation Item, BOT first."""
    items: list[tuple[int, int]] = []
    pos = offset
    while True:
        fp.seek(pos)
        head = fp.read(8)
        if len(head) < 8:
            raise EncapsulationProblem(
                f"encapsulated Pixel Data is truncated: the file ends after {len(items)} item(s) without the "
                f"Sequence Delimitation Item (FFFE,E0DD); the file is incomplete", truncated=True)
        group, elem, length = struct.unpack("<HHI", head)
        if (group, elem) == _SEQ_DELIM:
            return items
        if (group, elem) != _ITEM:
            raise EncapsulationProblem(
                f"encapsulated Pixel Data is malformed: found ({group:04X},{elem:04X}) where an item "
                f"(FFFE,E000) or the Sequence Delimitation Item was expected (PS3.5 A.4)")
        if length == _UNDEFINED or length % 2:
            raise EncapsulationProblem(
                f"encapsulated Pixel Data is malformed: item {len(items)} has "
                f"{'undefined' if length == _UNDEFINED else 'odd'} length {length} (PS3.5 A.4)")
        if pos + 8 + length > file_size:
            raise EncapsulationProblem(
                f"encapsulated Pixel Data is truncated: fragment {len(items)} declares {length} bytes, "
                f"{max(0, file_size - pos - 8)} present; the file is incomplete", truncated=True)
        items.append((pos + 8, length))
        if len(items) > _MAX_ITEMS:
            raise EncapsulationProblem(f"encapsulated Pixel Data has more than {_MAX_ITEMS:,} items; refused")
        pos += 8 + length


def _frames(fp: BinaryIO, items: list[tuple[int, int]], n_frames: int) -> list[list[tuple[int, int]]] | None:
    """Fragments grouped per frame, or None when the boundaries cannot be known from the structure."""
    bot, frags = items[0], items[1:]
    if not frags:
        raise EncapsulationProblem("encapsulated Pixel Data holds no fragment (only the Basic Offset Table)")
    if n_frames == 1:
        return [frags]
    if len(frags) == n_frames:
        return [[f] for f in frags]
    if bot[1] == 4 * n_frames:
        fp.seek(bot[0])
        offsets = struct.unpack(f"<{n_frames}I", fp.read(4 * n_frames))
        base = frags[0][0] - 8
        starts = {voff - 8 - base: k for k, (voff, _) in enumerate(frags)}
        if list(offsets) != sorted(offsets) or any(o not in starts for o in offsets):
            raise EncapsulationProblem("the Basic Offset Table points between fragments (PS3.5 A.4)")
        bounds = [starts[o] for o in offsets] + [len(frags)]
        return [frags[bounds[k]:bounds[k + 1]] for k in range(n_frames)]
    if len(frags) < n_frames:
        raise EncapsulationProblem(f"encapsulated Pixel Data has {len(frags)} fragment(s) for {n_frames} frames; "
                                   f"frames are missing", truncated=True)
    return None


def _jpeg_sof(head: bytes) -> tuple[int, int, int, int, int] | None:
    """(marker, precision, rows, columns, components) of the first SOF marker segment in a JPEG stream."""
    pos = 2
    while pos + 4 <= len(head):
        if head[pos] != 0xFF:
            return None
        marker = head[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", head[pos + 2:pos + 4])
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            if pos + 10 > len(head):
                return None
            precision, rows, cols, comps = struct.unpack(">BHHB", head[pos + 4:pos + 10])
            return marker, precision, rows, cols, comps
        if marker == 0xDA or length < 2:
            return None
        pos += 2 + length
    return None


def _j2k_siz(head: bytes) -> tuple[int, int, int] | None:
    """(rows, columns, components) of a JPEG 2000 codestream's SIZ marker segment (ISO 15444-1 A.5.1)."""
    if head.startswith(_JP2_SIGNATURE):
        at = head.find(b"\xff\x4f\xff\x51")
        if at < 0:
            return None
        head = head[at:]
    if len(head) < 42 or head[:4] != b"\xff\x4f\xff\x51":
        return None
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", head[8:24])
    (csiz,) = struct.unpack(">H", head[40:42])
    return ysiz - yo, xsiz - xo, csiz


def _check_frame_start(head: bytes, ts: str, rows: int, cols: int, samples: int, bits: int, k: int) -> None:
    name = _uid.UID(ts).name
    where = f"frame {k}" if k else "the first frame"
    if ts in JPEG_FAMILY or ts in JPEG_LS_FAMILY:
        if not head.startswith(b"\xff\xd8"):
            what = "a JPEG 2000 codestream" if (head.startswith(b"\xff\x4f") or head.startswith(_JP2_SIGNATURE)) \
                else f"bytes {head[:4].hex(' ').upper()}"
            raise EncapsulationProblem(f"{where} is {what}, not a JPEG stream (no SOI marker FFD8) as the "
                                       f"transfer syntax {name} says; refused")
        sof = _jpeg_sof(head)
        if sof is None:
            return  # SOF beyond the bytes read or unusual layout: the decoder and the shape check decide
        marker, _precision, r, c, comps = sof
        if (marker == 0xF7) != (ts in JPEG_LS_FAMILY):
            raise EncapsulationProblem(
                f"{where} is a {'JPEG-LS' if marker == 0xF7 else 'JPEG'} stream (SOF marker FF{marker:02X}) but the "
                f"transfer syntax says {name}; refused")
        if (r and r != rows) or c != cols or comps != samples:
            raise EncapsulationProblem(
                f"{where}'s JPEG header declares {c}x{r} with {comps} component(s); the DICOM header says "
                f"{cols}x{rows} with Samples per Pixel {samples}; refused")
    elif ts in J2K_FAMILY:
        if not (head.startswith(b"\xff\x4f\xff\x51") or head.startswith(_JP2_SIGNATURE)):
            what = "a JPEG stream (SOI FFD8)" if head.startswith(b"\xff\xd8") else f"bytes {head[:4].hex(' ').upper()}"
            raise EncapsulationProblem(f"{where} is {what}, not a JPEG 2000 codestream (SOC+SIZ FF4F FF51) as the "
                                       f"transfer syntax {name} says; refused")
        siz = _j2k_siz(head)
        if siz is not None:
            r, c, comps = siz
            if r != rows or c != cols or comps != samples:
                raise EncapsulationProblem(
                    f"{where}'s JPEG 2000 SIZ declares {c}x{r} with {comps} component(s); the DICOM header says "
                    f"{cols}x{rows} with Samples per Pixel {samples}; refused")
    elif ts == _uid.RLELossless:
        if len(head) < 64:
            raise EncapsulationProblem(f"{where}: RLE header shorter than 64 bytes (PS3.5 G.5); refused")
        header = struct.unpack("<16I", head[:64])
        segments = header[0]
        expected = samples * max(1, bits // 8)
        if segments != expected or header[1] != 64:
            raise EncapsulationProblem(
                f"{where}: RLE header declares {segments} segment(s) (first at byte {header[1]}); "
                f"{expected} at byte 64 expected for Samples per Pixel {samples}, Bits Allocated {bits} "
                f"(PS3.5 G.5); refused")


def check_encapsulated(fp: BinaryIO, offset: int, file_size: int, ts: str, *, rows: int, columns: int,
                       samples: int, bits_allocated: int, frames: int) -> int:
    """Check encapsulated Pixel Data whose value starts at byte `offset` of the open file `fp`.

    Parameters
    ----------
    fp, offset, file_size
        The open file, the offset of the Pixel Data value (its Basic Offset Table item) and the file size.
    ts
        Transfer Syntax UID.
    rows, columns, samples, bits_allocated, frames
        From the DICOM header, to compare with the codestreams.

    Returns
    -------
    int
        The number of fragments (Basic Offset Table excluded).

    Raises
    ------
    EncapsulationProblem
        Truncated, malformed, or a codestream that contradicts the header or the transfer syntax;
        ``truncated`` is set when the file is incomplete.
    """
    items = _items(fp, offset, file_size)
    if not items:
        raise EncapsulationProblem("encapsulated Pixel Data holds no item (not even a Basic Offset Table)")
    grouped = _frames(fp, items, frames)
    frags = items[1:]
    ts = str(ts)
    eoi_family = ts in JPEG_FAMILY or ts in JPEG_LS_FAMILY or ts in J2K_FAMILY
    if grouped is None:  # boundaries unknown: check what is certain, the stream's first start and last end
        grouped = [[frags[0], frags[-1]]]
    for k, frame in enumerate(grouped):
        first, last = frame[0], frame[-1]
        fp.seek(first[0])
        head = fp.read(min(first[1], _HEAD if k == 0 else 64))
        _check_frame_start(head, ts, rows, columns, samples, bits_allocated, k)
        if eoi_family:
            fp.seek(last[0] + max(0, last[1] - 8))
            tail = fp.read(min(8, last[1])).rstrip(b"\x00\xff")  # even-length padding: 00 or FF
            if not tail.endswith(b"\xff\xd9"):
                where = f"frame {k}" if len(grouped) > 1 else "the frame"
                raise EncapsulationProblem(
                    f"compressed Pixel Data is truncated: {where} does not end with the end-of-image marker "
                    f"(FFD9), so its decode would be incomplete; refused", truncated=True)
    return len(frags)
