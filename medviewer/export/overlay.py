"""Overlay images: the display image with a class activation heat map, region outlines and a caption.

Used by ``medviewer infer --overlays`` and by the workstation's "export view" (the GUI passes the
viewport's rendered RGB array to :func:`save_image`). Qt-free: numpy + OpenCV only. The heat map, the
regions and the intended-use line are drawn by the one overlay function,
:func:`medviewer.workstation.overlay.overlay_layer` (here at the identity geometry, on the image's own grid),
the same the viewport draws, and composited with :func:`medviewer.inference.heatmap.composite`.

Example
-------
>>> rgb = render_overlay(display_u8, prediction)  # doctest: +SKIP
>>> save_image("out/overlay.png", rgb)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from medviewer.errors import MedViewerError
from medviewer.inference.applicability import findings_withheld
from medviewer.inference.heatmap import composite, to_rgb
from medviewer.inference.overlay import REGION_COLOR, AiOverlay, ai_overlay_layer, overlay_layer
from medviewer.inference.regions import Region

__all__ = ["REGION_COLOR", "draw_regions", "draw_caption", "overlay_label", "render_overlay", "save_image",
           "IMAGE_SUFFIXES"]

#: file suffixes :func:`save_image` writes
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _scale(shape: tuple[int, ...]) -> float:
    return max(shape[0], shape[1]) / 512.0


def draw_regions(rgb: np.ndarray, regions: Sequence[Region], color: tuple[int, int, int] = REGION_COLOR,
                 thickness: int | None = None, boxes: bool = False, captions: bool = True,
                 scores: dict[str, float] | None = None) -> np.ndarray:
    """Draw region outlines (and optionally bounding boxes) on a copy of ``rgb``, as the viewport does.

    Parameters
    ----------
    rgb
        uint8 ``(H, W)`` or ``(H, W, 3)`` on the regions' pixel grid (the original image).
    regions
        :class:`~medviewer.inference.regions.Region` s; their ``contour`` (x, y) pixels are drawn.
    thickness
        Line width in pixels; default 2.
    boxes
        Also draw each bounding box.
    captions
        Write each region's tag ``"n label P=probability"`` next to it.
    scores
        label -> the model's probability (``Prediction.scores``) for the tags; without it a tag is ``"n label"``.

    Returns
    -------
    np.ndarray
        uint8 ``(H, W, 3)`` RGB.
    """
    out = to_rgb(rgb)
    h, w = out.shape[:2]
    layer = overlay_layer((w, h), np.eye(3), regions=regions, region_color=color, line_width=thickness or 2,
                          boxes=boxes, region_tags=captions, scores=scores)
    return composite(out, layer)


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, color: tuple[int, int, int]) -> None:
    scale = max(0.3, scale)
    th = max(1, round(scale * 2))
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
    x = int(min(max(0, org[0]), max(0, img.shape[1] - w)))
    y = int(min(max(h + 1, org[1]), img.shape[0] - base))
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), th + 2, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, th, cv2.LINE_AA)


def draw_caption(rgb: np.ndarray, lines: Sequence[str], color: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Write ``lines`` in the top-left corner of a copy of ``rgb`` (outlined text, legible on any image)."""
    out = to_rgb(rgb)
    s = _scale(out.shape)
    scale = max(0.3, 0.55 * s)
    (_, h), base = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, round(scale * 2)))
    step = h + base + max(2, round(4 * s))
    for i, line in enumerate(lines):
        _text(out, line, (max(2, round(6 * s)), step * (i + 1)), scale, color)
    return out


def overlay_label(prediction, label: str | None = None, negative_label: str | None = None) -> str:
    """The label whose CAM an overlay shows.

    ``label`` when given (checked); else the most probable flagged label; else the most probable label
    other than ``negative_label`` (the card's "no finding" label).
    """
    if label is not None:
        if label not in prediction.labels:
            raise ValueError(f"unknown label {label!r}; the model's labels are {prediction.labels}")
        return label
    pool = [lab for lab in prediction.flagged if lab != negative_label]
    pool = pool or [lab for lab in prediction.labels if lab != negative_label] or list(prediction.labels)
    return max(pool, key=lambda lab: prediction.scores[lab])


def render_overlay(display_u8: np.ndarray, prediction, label: str | None = None, *, alpha: float = 0.4,
                   colormap: str = "jet", regions: bool = True, caption: bool = True,
                   negative_label: str | None = None) -> np.ndarray:
    """The display image with one label's CAM, the region outlines and tags, and a score caption.

    The image part is exactly what the viewport shows of the result at 1:1 (one overlay function,
    :func:`medviewer.workstation.overlay.ai_overlay_layer`, at the identity geometry): the heat-map rule
    of :func:`medviewer.inference.heatmap.heat_alpha`, the intended-use policy (out of scope: no heat map
    and no region, and the line saying so), the same outlines and tags.

    Parameters
    ----------
    display_u8
        uint8 ``(H, W)`` or ``(H, W, 3)``: the image the prediction was made on (original grid).
    prediction
        A :class:`medviewer.inference.session.Prediction` for that image.
    label
        The label to show; default :func:`overlay_label` (ignoring ``negative_label`` when given).
    alpha
        Opacity of the heat map where the evidence is strongest, in [0, 1].
    colormap
        A key of :data:`medviewer.inference.heatmap.COLORMAPS`.
    regions
        Outline ``prediction.regions``.
    caption
        Write the scores (flagged labels marked ``*``) in the top-left corner.

    Returns
    -------
    np.ndarray
        uint8 ``(H, W, 3)`` RGB.

    Raises
    ------
    ValueError
        An unknown label or colour map, ``alpha`` outside [0, 1], or a CAM of another size than the image.
    """
    label = overlay_label(prediction, label, negative_label)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = to_rgb(display_u8)
    h, w = base.shape[:2]
    cam_shape = tuple(np.shape(prediction.cam(label)))
    if cam_shape != (h, w):
        raise ValueError(f"CAM shape {cam_shape} does not match the image {(h, w)}")
    ai = AiOverlay(("", 0), prediction, list(prediction.labels), list(prediction.flagged), heatmap_on=True,
                   opacity=alpha, colormap=colormap, cam_label=list(prediction.labels).index(label),
                   show_regions=regions)
    out = composite(base, ai_overlay_layer(ai, (w, h), np.eye(3)))
    if caption:
        lines = [f"{'*' if lab in prediction.flagged else ' '}{lab}: {prediction.scores[lab]:.3f}"
                 for lab in prediction.labels]
        withheld = findings_withheld(getattr(prediction, "applicability", None))
        out = draw_caption(out, lines + ([] if withheld else [f"heat map: {label}"]))
    return out


def save_image(path: str | Path, image: np.ndarray) -> Path:
    """Write uint8 ``(H, W)`` gray or ``(H, W, 3)`` RGB to PNG/JPEG/TIFF/BMP (by suffix); parents created.

    Raises
    ------
    MedViewerError
        Unsupported suffix, wrong array, or the file could not be written (one line, names the file).
    """
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise MedViewerError(f"{path}: unsupported image type {path.suffix!r}; use one of {', '.join(IMAGE_SUFFIXES)}")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3))):
        raise MedViewerError(f"{path}: expected a uint8 (H, W) or (H, W, 3) image, got {arr.dtype} {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        ok = cv2.imwrite(str(path), arr)
    except (OSError, cv2.error) as exc:
        raise MedViewerError(f"{path}: cannot write the image ({exc})") from None
    if not ok:
        raise MedViewerError(f"{path}: cannot write the image (is the folder writable?)")
    return path
