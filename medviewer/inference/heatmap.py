"""Class activation maps for display: normalisation, OpenCV colour maps and alpha blending.

The heat-map rule (one, for the viewport, PNG export and ``medviewer infer --overlays``): a pixel's opacity
is ``opacity * clip((cam - HEAT_FLOOR) / HEAT_RAMP, 0, 1)`` -- evidence below 0.15 of the label's peak
stays transparent so the anatomy is readable, and the colour is at full opacity from 0.5 up
(:func:`heat_alpha`, :func:`heat_rgba`). Layers are composited with :func:`composite`, 8-bit source-over
on premultiplied colour with the integer rounding of Qt's raster engine.

Example
-------
>>> import numpy as np
>>> cam = np.zeros((4, 6), np.float32); cam[1, 2] = 1.0
>>> colorize(cam, "turbo").shape
(4, 6, 3)
>>> blend(np.zeros((4, 6), np.uint8), cam, alpha=0.5).dtype
dtype('uint8')
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["COLORMAPS", "HEAT_FLOOR", "HEAT_RAMP", "normalize_cam", "colorize", "heat_alpha", "heat_rgba",
           "composite", "blend", "to_rgb"]

#: CAM values (0..1 of the label's peak) at or below this are not drawn
HEAT_FLOOR = 0.15
#: the heat map's opacity ramps linearly from HEAT_FLOOR to full over this range of CAM values
HEAT_RAMP = 0.35

#: colour map name -> OpenCV ``cv2.COLORMAP_*`` constant (see OpenCV ``applyColorMap``)
COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "cividis": cv2.COLORMAP_CIVIDIS,
    "hot": cv2.COLORMAP_HOT,
    "parula": cv2.COLORMAP_PARULA,
    "bone": cv2.COLORMAP_BONE,
}


def normalize_cam(cam: np.ndarray) -> np.ndarray:
    """Scale a raw CAM for display: negative evidence clipped to 0, the peak mapped to 1.

    Unlike a min-max scaling, a map with no positive evidence stays all zero, and the same raw value is
    never both the minimum and the maximum (MONAI's default normaliser maps the maximum to 0; this one
    maps it to 1).

    Parameters
    ----------
    cam
        float ``(h, w)`` or ``(K, h, w)``; with a leading K each map is scaled on its own.

    Returns
    -------
    np.ndarray
        float32, same shape, values in [0, 1].
    """
    arr = np.maximum(np.asarray(cam, np.float32), 0.0)
    if arr.ndim == 3:
        peak = arr.reshape(arr.shape[0], -1).max(axis=1) if arr.size else np.zeros(arr.shape[0], np.float32)
        scale = np.where(peak > 0, 1.0 / np.maximum(peak, 1e-30), 0.0).astype(np.float32)
        return arr * scale[:, None, None]
    peak = float(arr.max()) if arr.size else 0.0
    return arr / np.float32(peak) if peak > 0 else np.zeros_like(arr)


def _check_colormap(colormap: str) -> int:
    try:
        return COLORMAPS[colormap.lower()]
    except KeyError:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}") from None


def _cam_u8(cam: np.ndarray) -> np.ndarray:
    """A CAM in [0, 1] as 8-bit levels: ``round(255 * clip(cam, 0, 1))`` (OpenCV, vectorised)."""
    return cv2.convertScaleAbs(np.maximum(np.asarray(cam, np.float32), np.float32(0.0)), alpha=255.0)


def colorize(cam01: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Colour a normalised CAM.

    Parameters
    ----------
    cam01
        float ``(H, W)`` in [0, 1] (values outside are clipped).
    colormap
        A key of :data:`COLORMAPS`.

    Returns
    -------
    np.ndarray
        uint8 ``(H, W, 3)`` RGB.

    Raises
    ------
    ValueError
        Unknown colour map name or a CAM that is not 2-D.
    """
    cmap = _check_colormap(colormap)
    arr = np.asarray(cam01, np.float32)
    if arr.ndim != 2:
        raise ValueError(f"colorize expects an (H, W) map, got shape {arr.shape}")
    return cv2.cvtColor(cv2.applyColorMap(_cam_u8(arr), cmap), cv2.COLOR_BGR2RGB)


def heat_alpha(cam01: np.ndarray, opacity: float = 0.45) -> np.ndarray:
    """Per-pixel opacity of the heat map: ``opacity * clip((cam - HEAT_FLOOR) / HEAT_RAMP, 0, 1)``.

    Parameters
    ----------
    cam01
        float ``(H, W)`` normalised CAM (0..1).
    opacity
        Opacity where the evidence is at least ``HEAT_FLOOR + HEAT_RAMP`` (0.5), in [0, 1].

    Returns
    -------
    np.ndarray
        float32 ``(H, W)`` in [0, opacity].

    Raises
    ------
    ValueError
        ``opacity`` outside [0, 1].
    """
    if not 0.0 <= float(opacity) <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    cam = np.asarray(cam01, np.float32)
    return np.clip((cam - np.float32(HEAT_FLOOR)) * np.float32(1.0 / HEAT_RAMP), 0.0, 1.0) * np.float32(opacity)


def heat_rgba(cam01: np.ndarray, colormap: str = "jet", opacity: float = 0.45) -> np.ndarray:
    """The heat map as an RGBA layer on the CAM's grid: :func:`colorize` colours, :func:`heat_alpha` alpha.

    Both are looked up from the CAM quantised to 8 bits (as :func:`colorize` does), so a 2k map takes
    a few milliseconds.

    Returns
    -------
    np.ndarray
        uint8 ``(H, W, 4)`` RGBA, not premultiplied.

    Raises
    ------
    ValueError
        Unknown colour map, a CAM that is not 2-D, or ``opacity`` outside [0, 1].
    """
    cmap = _check_colormap(colormap)
    arr = np.asarray(cam01, np.float32)
    if arr.ndim != 2:
        raise ValueError(f"heat_rgba expects an (H, W) map, got shape {arr.shape}")
    levels = np.arange(256, dtype=np.float32) / np.float32(255.0)
    alpha_lut = np.clip(heat_alpha(levels, opacity) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    u8 = _cam_u8(arr)
    b, g, r = cv2.split(cv2.applyColorMap(u8, cmap))
    return cv2.merge([r, g, b, cv2.LUT(u8, alpha_lut)])


def _div255(x: np.ndarray) -> np.ndarray:
    """``x / 255`` rounded the way Qt's raster engine does (``(x + (x >> 8) + 0x80) >> 8``), for integer
    ``0 <= x <= 255 * 255``; within 1 of the exact rounding."""
    return (x + (x >> 8) + 0x80) >> 8


def composite(base_u8: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """Draw an RGBA layer over an opaque image: 8-bit source-over on premultiplied colour.

    ``out = c * a / 255 + d * (255 - a) / 255`` per channel, each product divided by 255 with Qt's
    integer rounding, with ``c, a`` the layer's colour and alpha and ``d`` the image -- the arithmetic of
    Qt's raster engine (premultiply, then ``src + dst * (255 - a) / 255``), so a layer composited here
    equals the layer drawn by the viewport.

    Parameters
    ----------
    base_u8
        uint8 ``(H, W)`` gray or ``(H, W, 3)`` RGB.
    rgba
        uint8 ``(H, W, 4)`` RGBA, not premultiplied, same ``H, W``.

    Returns
    -------
    np.ndarray
        uint8 ``(H, W, 3)`` RGB.

    Raises
    ------
    ValueError
        Wrong dtypes or shapes.
    """
    base = to_rgb(base_u8)
    layer = np.asarray(rgba)
    if layer.dtype != np.uint8 or layer.ndim != 3 or layer.shape[2] != 4 or layer.shape[:2] != base.shape[:2]:
        raise ValueError(f"expected a uint8 (H, W, 4) layer of the image's size {base.shape[:2]}, "
                         f"got {layer.dtype} {layer.shape}")
    a = layer[..., 3:].astype(np.uint16)
    src = _div255(layer[..., :3].astype(np.uint16) * a)
    dst = _div255(base.astype(np.uint16) * (255 - a))
    return (src + dst).astype(np.uint8)


def to_rgb(image_u8: np.ndarray) -> np.ndarray:
    """uint8 ``(H, W)`` gray or ``(H, W, 3)`` RGB -> a new uint8 ``(H, W, 3)`` RGB array."""
    img = np.asarray(image_u8)
    if img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 display image, got dtype {img.dtype}")
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.ndim == 3 and img.shape[2] == 3:
        return img.copy()
    if img.ndim == 3 and img.shape[2] == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    raise ValueError(f"expected (H, W) or (H, W, 3) image, got shape {img.shape}")


def blend(display_u8: np.ndarray, cam01: np.ndarray, alpha: float = 0.4, colormap: str = "jet",
          *, weighted: bool = True) -> np.ndarray:
    """Blend a colour-mapped CAM over the display image (:func:`heat_rgba` then :func:`composite`).

    Parameters
    ----------
    display_u8
        uint8 ``(H, W)`` or ``(H, W, 3)``: the image as displayed.
    cam01
        float ``(H, W)`` in [0, 1] on the same grid (see :attr:`Prediction.cams`).
    alpha
        Opacity of the heat map in [0, 1] (where the evidence is strongest when ``weighted``).
    colormap
        A key of :data:`COLORMAPS`.
    weighted
        If True (default) each pixel's opacity follows the heat-map rule, :func:`heat_alpha`, so regions
        without activation keep the original grey values, exactly as the viewport shows them; if False the
        opacity is ``alpha`` everywhere (classic CAM figure).

    Returns
    -------
    np.ndarray
        uint8 ``(H, W, 3)`` RGB.
    """
    base = to_rgb(display_u8)
    cam = np.asarray(cam01, np.float32)
    if cam.shape != base.shape[:2]:
        raise ValueError(f"CAM shape {cam.shape} does not match the image {base.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if weighted:
        return composite(base, heat_rgba(cam, colormap, alpha))
    return cv2.addWeighted(base, 1.0 - alpha, colorize(cam, colormap), alpha, 0.0)
