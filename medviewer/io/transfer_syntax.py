"""Transfer syntaxes (PS3.5 10, Annex A) and the pixel-data decoder plugin that handles each."""

from __future__ import annotations

__all__ = ["transfer_syntax_name", "decoder_hint", "check_decodable"]

import pydicom.uid as _uid

# Which installable package decodes which family of compressed transfer syntaxes (pydicom 3 plugins).
_LIBJPEG = "pylibjpeg-libjpeg"
_OPENJPEG = "pylibjpeg-openjpeg"
_RLE = "pylibjpeg-rle"

_PLUGIN_FOR: dict[str, str] = {
    _uid.JPEGBaseline8Bit: _LIBJPEG,
    _uid.JPEGExtended12Bit: _LIBJPEG,
    _uid.JPEGLossless: _LIBJPEG,
    _uid.JPEGLosslessSV1: _LIBJPEG,
    _uid.JPEGLSLossless: _LIBJPEG,
    _uid.JPEGLSNearLossless: _LIBJPEG,
    _uid.JPEG2000Lossless: _OPENJPEG,
    _uid.JPEG2000: _OPENJPEG,
    _uid.HTJ2KLossless: _OPENJPEG,
    _uid.HTJ2KLosslessRPCL: _OPENJPEG,
    _uid.HTJ2K: _OPENJPEG,
    _uid.RLELossless: _RLE,
}


def transfer_syntax_name(uid: str | None) -> str:
    """Human-readable name of a Transfer Syntax UID (``"unknown"`` when absent)."""
    if not uid:
        return "unknown"
    name = _uid.UID(str(uid)).name
    return name or str(uid)


def decoder_hint(uid: str | None) -> str:
    """What would decode pixel data in transfer syntax `uid`: a pip package, or why none exists."""
    if not uid:
        return "the file has no Transfer Syntax UID"
    if uid in _PLUGIN_FOR:
        return f"install the '{_PLUGIN_FOR[uid]}' plugin (pip install {_PLUGIN_FOR[uid]}) or 'gdcm'"
    name = transfer_syntax_name(uid)
    if "MPEG" in name or "HEVC" in name or "H.264" in name:
        return "video transfer syntaxes have no pydicom decoder; transcode it (e.g. with ffmpeg or dcmtk)"
    if "JPEG XL" in name or "JPIP" in name or "Deflated Image Frame" in name:
        return "no installed pydicom plugin decodes it; transcode it (e.g. dcmconv/gdcmconv --raw)"
    return "no pydicom decoder is known for it; transcode it to Explicit VR Little Endian (gdcmconv --raw)"


def check_decodable(uid: str | None) -> str | None:
    """Return ``None`` when pydicom can decode pixel data in `uid` now, else a one-line reason.

    The reason names the transfer syntax and the plugin that would decode it, e.g.
    ``"no decoder for JPEG 2000 Image Compression: install the 'pylibjpeg-openjpeg' plugin ..."``.
    """
    if not uid:
        return None
    from pydicom.pixels import get_decoder

    name = transfer_syntax_name(uid)
    try:
        decoder = get_decoder(_uid.UID(str(uid)))
    except NotImplementedError:
        return f"unsupported transfer syntax {name} ({uid}): {decoder_hint(uid)}"
    if not decoder.is_available:
        return f"no decoder installed for {name}: {decoder_hint(uid)}"
    return None
