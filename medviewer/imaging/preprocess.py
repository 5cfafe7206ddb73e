"""Model preprocessing: the display pipeline's 8-bit image -> a network input tensor, and back.

This is the one implementation used by both the app (:mod:`medviewer.inference`) and ``training``, so a
model sees the same pixels in training and in the viewer. Its parameters come from the model card's
:class:`~medviewer.spec.Preprocessing` and :class:`~medviewer.spec.InputSpec`, defined in the leaf module
:mod:`medviewer.spec` (re-exported by :mod:`medviewer.inference.card`): :mod:`medviewer.imaging` never
imports :mod:`medviewer.inference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from medviewer.spec import InputSpec, Preprocessing, ResizeMode

__all__ = ["ResizeGeometry", "fit_to_input", "normalise", "preprocess", "preprocess_batch"]

_INTERP = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}


@dataclass(frozen=True)
class ResizeGeometry:
    """How an original image of ``(orig_h, orig_w)`` pixels was placed into the ``(in_h, in_w)`` input.

    The image occupies input rows ``top : top + content_h`` and columns ``left : left + content_w``;
    the rest is padding (letterbox) or nothing (squeeze).
    """

    orig_h: int
    orig_w: int
    in_h: int
    in_w: int
    top: int = 0
    left: int = 0
    content_h: int = 0
    content_w: int = 0

    def to_original(self, maps: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Map input-space maps (e.g. CAMs) onto the original image grid.

        Parameters
        ----------
        maps
            ``(h, w)`` or ``(K, h, w)`` float array covering the whole network input (any resolution,
            typically the last feature map's, e.g. 7x7 for a 224 input).

        Returns
        -------
        np.ndarray
            float32 ``(orig_h, orig_w)`` or ``(K, orig_h, orig_w)``: the padding is cut off and the
            content area resized to the original size, so the map lands on the original pixels.
        """
        arr = np.asarray(maps, dtype=np.float32)
        if arr.ndim == 3:
            return np.stack([self.to_original(m, interpolation) for m in arr])
        if arr.ndim != 2:
            raise ValueError(f"expected (h, w) or (K, h, w) maps, got shape {arr.shape}")
        full = cv2.resize(arr, (self.in_w, self.in_h), interpolation=interpolation)
        content = full[self.top : self.top + self.content_h, self.left : self.left + self.content_w]
        return cv2.resize(content, (self.orig_w, self.orig_h), interpolation=interpolation)

    def point_to_input(self, x: float, y: float) -> tuple[float, float]:
        """Original pixel coordinates (x=column, y=row, pixel centres) -> input coordinates."""
        sx = self.content_w / self.orig_w
        sy = self.content_h / self.orig_h
        return (x + 0.5) * sx - 0.5 + self.left, (y + 0.5) * sy - 0.5 + self.top


def fit_to_input(image_u8: np.ndarray, spec: Preprocessing, inp: InputSpec) -> tuple[np.ndarray, ResizeGeometry]:
    """Convert channels and resize a display image to the network's input size (still uint8).

    Parameters
    ----------
    image_u8
        uint8 ``(H, W)`` grayscale or ``(H, W, 3)`` RGB, as produced by the display pipeline.

    Returns
    -------
    (np.ndarray, ResizeGeometry)
        uint8 ``(inp.height, inp.width, inp.channels)`` and the geometry that undoes the resize.
    """
    img = np.asarray(image_u8)
    if img.dtype != np.uint8:
        raise ValueError(f"preprocess expects the 8-bit display image, got dtype {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if inp.channels == 1 else img
    elif img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2) if inp.channels == 3 else img
    else:
        raise ValueError(f"expected (H, W) or (H, W, 3) image, got shape {img.shape}")
    h0, w0 = img.shape[:2]
    interp = _INTERP[spec.interpolation]
    if spec.resize == ResizeMode.SQUEEZE:
        out = cv2.resize(img, (inp.width, inp.height), interpolation=interp)
        geom = ResizeGeometry(h0, w0, inp.height, inp.width, 0, 0, inp.height, inp.width)
    else:
        s = min(inp.width / w0, inp.height / h0)
        cw, ch = max(1, round(w0 * s)), max(1, round(h0 * s))
        top, left = (inp.height - ch) // 2, (inp.width - cw) // 2
        out = np.full((inp.height, inp.width) + img.shape[2:], spec.pad_value, np.uint8)
        out[top : top + ch, left : left + cw] = cv2.resize(img, (cw, ch), interpolation=interp)
        geom = ResizeGeometry(h0, w0, inp.height, inp.width, top, left, ch, cw)
    if out.ndim == 2:
        out = out[:, :, None]
    return out, geom


def normalise(fitted_u8: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """uint8 ``(H, W, C)`` -> float32 ``(C, H, W)``: ``(x * scale - mean[c]) / std[c]``."""
    x = fitted_u8.astype(np.float32) * np.float32(spec.scale)
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(image_u8: np.ndarray, spec: Preprocessing, inp: InputSpec) -> tuple[np.ndarray, ResizeGeometry]:
    """Display image -> float32 ``(C, H, W)`` network input and its :class:`ResizeGeometry`.

    Equivalent to :func:`normalise` (:func:`fit_to_input` (...)). Training applies augmentation between
    the two steps, on the uint8 fitted image.
    """
    fitted, geom = fit_to_input(image_u8, spec, inp)
    return normalise(fitted, spec), geom


def preprocess_batch(images_u8: list[np.ndarray], spec: Preprocessing, inp: InputSpec
                     ) -> tuple[np.ndarray, list[ResizeGeometry]]:
    """Several display images -> float32 ``(N, C, H, W)`` and one geometry each."""
    pairs = [preprocess(im, spec, inp) for im in images_u8]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]
