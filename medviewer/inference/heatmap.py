"""Class activation maps for display: normalisation, OpenCV colour maps and alpha blending.

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

__all__ = ["COLORMAPS", "normalize_cam", "colorize", "blend", "to_rgb"]

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
    u8 = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cmap), cv2.COLOR_BGR2RGB)


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
    """Alpha-blend a colour-mapped CAM over the display image.

    Parameters
    ----------
    display_u8
        uint8 ``(H, W)`` or ``(H, W, 3)``: the image as displayed.
    cam01
        float ``(H, W)`` in [0, 1] on the same grid (see :attr:`Prediction.cams`).
    alpha
        Opacity of the heat map in [0, 1].
    colormap
        A key of :data:`COLORMAPS`.
    weighted
        If True (default) each pixel's opacity is ``alpha * cam01`` so regions without activation keep
        the original grey values; if False the opacity is ``alpha`` everywhere (classic CAM figure).

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
    heat = colorize(cam, colormap)
    if weighted:
        a = (np.clip(cam, 0.0, 1.0) * np.float32(alpha))[:, :, None]
        out = base.astype(np.float32) * (1.0 - a) + heat.astype(np.float32) * a
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)
    return cv2.addWeighted(base, 1.0 - alpha, heat, alpha, 0.0)
