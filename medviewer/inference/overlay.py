"""The one AI overlay: heat map, flagged regions and labels as an RGBA layer at a given geometry.

Everything a reader sees of an AI result on the image is drawn here, Qt-free (numpy + OpenCV), once (this
module sits in ``inference``, below ``export`` and ``workstation``, which both draw with it;
:mod:`medviewer.workstation.overlay` re-exports it):

* the class activation map, coloured by :func:`medviewer.inference.heatmap.heat_rgba` -- transparent
  below 0.15 of the label's peak evidence, opacity ramping to full at 0.5 (the rule the viewport always
  used, :data:`~medviewer.inference.heatmap.HEAT_FLOOR`, :data:`~medviewer.inference.heatmap.HEAT_RAMP`);
* each flagged region's outline (2 px, anti-aliased) and its tag ``"1 pneumonia P=0.93"``: the finding and
  the model's probability for it (never the CAM peak, which is 1.00 by construction and reads as one);
* the line that says an image is outside the model's intended use (or was shown anyway),
  :attr:`medviewer.inference.applicability.Assessment.scope_label`, centred near the bottom.

The geometry is the output size and the 3x3 image -> output affine matrix (the viewport's
:meth:`medviewer.workstation.viewport.ViewportModel.matrix`; the identity at the image's size for
``medviewer infer --overlays``). The Qt viewport draws the returned layer 1:1 over its image; PNG export and
``infer --overlays`` composite it with :func:`medviewer.inference.heatmap.composite` -- the same 8-bit
source-over the Qt raster engine uses -- so what is exported is what the reader saw.

Example
-------
>>> import numpy as np
>>> cam = np.zeros((40, 60), np.float32); cam[10:20, 20:40] = 1.0
>>> layer = overlay_layer((120, 80), np.diag([2.0, 2.0, 1.0]), cam=cam)
>>> layer.shape, layer.dtype, int(layer[30, 60, 3]) > 0, int(layer[5, 5, 3])
((80, 120, 4), dtype('uint8'), True, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from medviewer.inference.applicability import Assessment
from medviewer.inference.heatmap import heat_rgba

__all__ = ["AiOverlay", "REGION_COLOR", "SCOPE_COLOR", "overlay_layer", "ai_overlay_layer", "overlay_key",
           "text_scale_for", "opencv_matrix"]

#: outline and tag colour of flagged regions (RGB): a yellow that stands out on grey and on the jet/turbo maps
REGION_COLOR = (255, 230, 0)
#: colour of the out-of-intended-use line (RGB): the workstation's amber for AI flags
SCOPE_COLOR = (255, 159, 26)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class AiOverlay:
    """What is drawn of one AI result on one frame (the viewport's and the export's settings).

    Attributes
    ----------
    frame_uid
        ``(series key, frame index)`` the prediction belongs to; a viewport draws it only on that frame.
    prediction
        A :class:`medviewer.inference.session.Prediction` (``cams``, ``regions``, ``applicability``).
    labels, flagged
        The model's labels and the flagged ones (as the AI panel shows them).
    heatmap_on
        Draw the class activation map.
    opacity
        Opacity of the heat map where the evidence is strongest, in [0, 1].
    colormap
        A key of :data:`medviewer.inference.heatmap.COLORMAPS`.
    cam_label
        Index of the label whose CAM is drawn.
    show_regions
        Draw the flagged regions.
    verdict
        One line drawn centred at the bottom of the view, so each viewport of a 1x2 / 2x2 layout says its
        own result without a click (and a PNG export carries it).
    """

    frame_uid: tuple[str, int]
    prediction: Any
    labels: list[str]
    flagged: list[str]
    heatmap_on: bool = True
    opacity: float = 0.45
    colormap: str = "jet"
    cam_label: int = 0
    show_regions: bool = True
    verdict: str | None = None  #: the image's one-line AI verdict (``PredictionEntry.summary()``), drawn at the bottom


def text_scale_for(size: tuple[int, int]) -> float:
    """Text size factor for an output of ``size = (width, height)``: 1 (about 13 px high) up to 1024 px
    on the short side, then growing with it, so a 2k radiograph's exported overlay is legible."""
    return max(1.0, min(size) / 1024.0)


def opencv_matrix(matrix: np.ndarray) -> np.ndarray:
    """2x3 matrix for OpenCV from a 3x3 image -> output affine of continuous coordinates.

    Continuous coordinates put pixel ``(row i, col j)`` on ``[j, j+1) x [i, i+1)`` (centre ``j + 0.5``),
    as Qt's painter does; OpenCV puts pixel centres on integers: ``M_cv = T(-0.5) @ M @ T(+0.5)``."""
    m = np.asarray(matrix, np.float64)
    if m.shape == (2, 3):
        m = np.vstack([m, [0.0, 0.0, 1.0]])
    if m.shape != (3, 3):
        raise ValueError(f"expected a 3x3 (or 2x3) affine matrix, got shape {m.shape}")
    t_in = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]], np.float64)
    t_out = np.array([[1, 0, -0.5], [0, 1, -0.5], [0, 0, 1]], np.float64)
    return (t_out @ m @ t_in)[:2]


def _stamp(layer: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int], origin: tuple[int, int] = (0, 0)) -> None:
    """Source-over a solid colour with coverage ``mask`` (uint8, 255 = opaque; a patch whose top-left pixel
    is at ``origin = (x, y)`` of the layer, clipped to it) onto the non-premultiplied RGBA ``layer``."""
    h, w = layer.shape[:2]
    x0, y0 = int(origin[0]), int(origin[1])
    lx0, ly0 = max(x0, 0), max(y0, 0)
    lx1, ly1 = min(x0 + mask.shape[1], w), min(y0 + mask.shape[0], h)
    if lx1 <= lx0 or ly1 <= ly0:
        return
    m = mask[ly0 - y0:ly1 - y0, lx0 - x0:lx1 - x0]
    if not m.any():
        return
    sl = (slice(ly0, ly1), slice(lx0, lx1))
    a_s = m.astype(np.float32)[..., None] / 255.0
    dst = layer[sl].astype(np.float32)
    a_d = dst[..., 3:] / 255.0
    a_o = a_s + a_d * (1.0 - a_s)
    col = (np.asarray(rgb, np.float32) * a_s + dst[..., :3] * a_d * (1.0 - a_s)) / np.maximum(a_o, 1e-6)
    layer[sl] = np.clip(np.concatenate([col, a_o * 255.0], axis=2) + 0.5, 0, 255).astype(np.uint8)


def _text(layer: np.ndarray, text: str, org: tuple[float, float], scale: float,
          rgb: tuple[int, int, int]) -> None:
    """Outlined text (1 px dark rim, coloured fill) with its baseline at ``org`` (output pixels)."""
    fs, th = 0.5 * scale, max(1, round(scale))
    (tw, asc), base = cv2.getTextSize(text, _FONT, fs, th)
    pad = 2 + th
    x, y = int(round(org[0])), int(round(org[1]))
    fill = np.zeros((asc + base + 2 * pad, tw + 2 * pad), np.uint8)  # a patch around the text only
    cv2.putText(fill, text, (pad, pad + asc), _FONT, fs, 255, th, cv2.LINE_AA)
    rim = cv2.dilate(fill, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)))  # a 1 px outline
    origin = (x - pad, y - asc - pad)
    _stamp(layer, (rim.astype(np.float32) * (200.0 / 255.0)).astype(np.uint8), (0, 0, 0), origin)
    _stamp(layer, fill, rgb, origin)


def _text_box(text: str, scale: float) -> tuple[int, int, int]:
    """``(width, ascent, line height)`` of ``text`` at ``scale`` in output pixels."""
    (tw, tha), base = cv2.getTextSize(text, _FONT, 0.5 * scale, max(1, round(scale)))
    return tw, tha, tha + base + round(5 * scale)


def overlay_layer(size: tuple[int, int], matrix: np.ndarray, *, cam: np.ndarray | None = None,
                  colormap: str = "jet", opacity: float = 0.45, regions: Sequence[Any] = (),
                  scope_text: str | None = None, text_scale: float | None = None,
                  region_color: tuple[int, int, int] = REGION_COLOR, line_width: int = 2, boxes: bool = False,
                  region_tags: bool = True, heat: np.ndarray | None = None,
                  scores: dict[str, float] | None = None, verdict: str | None = None) -> np.ndarray:
    """Heat map, region outlines and labels as one RGBA layer at a given geometry.

    Parameters
    ----------
    size
        Output ``(width, height)`` in pixels (the viewport's size, or the image's for an export on its grid).
    matrix
        3x3 affine mapping image ``(x, y, 1)`` (continuous, pixel ``(i, j)`` on ``[j, j+1) x [i, i+1)``) to
        output coordinates, e.g. :meth:`medviewer.workstation.viewport.ViewState.matrix`.
    cam
        float ``(H, W)`` normalised CAM (0..1) on the image grid, or None for no heat map.
    colormap, opacity
        Heat-map colours and its opacity at full evidence (see :func:`medviewer.inference.heatmap.heat_rgba`).
    regions
        :class:`medviewer.inference.regions.Region` s (``contour``, ``bbox``, ``label``, ``peak``) on the
        image grid; numbered from 1 in this order.
    scope_text
        A line centred near the bottom, e.g. :attr:`~medviewer.inference.applicability.Assessment.scope_label`.
    text_scale
        Text size factor; default :func:`text_scale_for` of ``size``.
    region_color, line_width, boxes, region_tags
        Outline colour (RGB) and width in output pixels; also draw each bounding box; write each region's
        tag ``"{n} {label} P={probability:.2f}"`` (just ``"{n} {label}"`` when ``scores`` lacks the label).
    scores
        label -> the model's probability (:attr:`medviewer.inference.session.Prediction.scores`), for the tags.
    verdict
        One line centred at the bottom (below ``scope_text``), shortened with "..." to fit the width.
    heat
        The CAM already coloured, uint8 ``(H, W, 4)`` from :func:`~medviewer.inference.heatmap.heat_rgba`
        (used instead of ``cam``; lets a caller cache it).

    Returns
    -------
    np.ndarray
        uint8 ``(height, width, 4)`` RGBA, not premultiplied; alpha 0 where nothing is drawn.

    Raises
    ------
    ValueError
        A bad size or matrix, an unknown colour map, or ``opacity`` outside [0, 1].
    """
    w, h = int(size[0]), int(size[1])
    if w <= 0 or h <= 0:
        raise ValueError(f"output size must be positive, got {size}")
    m = np.asarray(matrix, np.float64)
    m_cv = opencv_matrix(m)
    scale = text_scale if text_scale is not None else text_scale_for((w, h))
    if heat is None and cam is not None:
        heat = heat_rgba(cam, colormap, opacity)
    if heat is not None:
        layer = cv2.warpAffine(heat, m_cv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                               borderValue=(0, 0, 0, 0))
    else:
        layer = np.zeros((h, w, 4), np.uint8)
    if regions:
        polys = []
        for r in regions:
            contour = np.asarray(getattr(r, "contour", np.zeros((0, 2))), np.float64).reshape(-1, 2)
            if len(contour) >= 2:
                polys.append(contour + 0.5)  # pixel centres
            if boxes:
                x0, y0, x1, y1 = r.bbox
                polys.append(np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float64))
        # to output coordinates, then OpenCV's integer-centred pixels; drawn on a patch around them
        pts = [poly @ m[:2, :2].T + m[:2, 2] - 0.5 for poly in polys]
        if pts:
            lw = max(1, int(line_width))
            allp = np.concatenate(pts)
            x0 = int(np.clip(np.floor(allp[:, 0].min()) - lw - 2, 0, w))
            y0 = int(np.clip(np.floor(allp[:, 1].min()) - lw - 2, 0, h))
            x1 = int(np.clip(np.ceil(allp[:, 0].max()) + lw + 3, 0, w))
            y1 = int(np.clip(np.ceil(allp[:, 1].max()) + lw + 3, 0, h))
            if x1 > x0 and y1 > y0:
                lines = np.zeros((y1 - y0, x1 - x0), np.uint8)
                cv2.polylines(lines, [np.round((p - (x0, y0)) * 16).astype(np.int32).reshape(-1, 1, 2) for p in pts],
                              True, 255, lw, cv2.LINE_AA, shift=4)
                _stamp(layer, lines, region_color, (x0, y0))
        if region_tags:
            _, _, lh = _text_box("Ag", scale)
            top_margin = 6 * lh  # clear of the viewport's corner text
            for i, r in enumerate(regions):
                x0, y0, x1, y1 = r.bbox
                corners = np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], np.float64) @ m[:2, :2].T + m[:2, 2]
                top = min(corners.tolist(), key=lambda q: (q[1], q[0]))
                p = (scores or {}).get(r.label)
                text = f"{i + 1} {r.label}" + ("" if p is None else f" P={float(p):.2f}")
                tw, asc, _ = _text_box(text, scale)
                tx = min(max(top[0], 8.0), w - tw - 8.0)
                ty = top[1] - 6 * scale
                if ty < top_margin:  # near the top: inside the box
                    ty = max(top[1], top_margin) + asc + 4 * scale
                _text(layer, text, (tx, ty), scale, region_color)
    if scope_text:
        tw, _, lh = _text_box(scope_text, scale * 1.1)
        _text(layer, scope_text, ((w - tw) / 2.0, h - 3.6 * lh), scale * 1.1, SCOPE_COLOR)
    if verdict:
        text = _ascii(verdict)
        tw, _, lh = _text_box(text, scale)
        while tw > 0.96 * w and len(text) > 8:
            text = text[: max(8, int(len(text) * 0.96 * w / tw) - 3)].rstrip() + "..."
            tw, _, lh = _text_box(text, scale)
        colour = SCOPE_COLOR if scope_text else REGION_COLOR
        _text(layer, text, ((w - tw) / 2.0, h - 2.2 * lh), scale, colour)
    return layer


_ASCII = str.maketrans({"\u2013": "-", "\u2014": "-", "\u2265": ">=", "\u2264": "<=", "\u00d7": "x", "\u2026": "...",
                        "\u00b2": "2", "\u00b7": "-"})


def _ascii(text: str) -> str:
    """OpenCV's Hershey fonts draw ASCII only: typographic characters as ASCII, anything else as '?'."""
    return text.translate(_ASCII).encode("ascii", "replace").decode("ascii")


def _cam_index(ai: AiOverlay) -> int | None:
    cams = getattr(ai.prediction, "cams", None)
    if not ai.heatmap_on or cams is None or len(cams) == 0:
        return None
    return int(np.clip(ai.cam_label, 0, len(cams) - 1))


def _shown(ai: AiOverlay, regions: bool) -> tuple[int | None, list[Any], str | None]:
    """What the policy lets an overlay show: (CAM index or None, regions, scope line)."""
    app = Assessment.coerce(getattr(ai.prediction, "applicability", None))
    silent = app is not None and app.withheld  # outside the intended use: no heat map, no region, and it is said
    li = None if silent else _cam_index(ai)
    regs = [] if silent or not (regions and ai.show_regions) else list(getattr(ai.prediction, "regions", []) or [])
    return li, regs, None if app is None else app.scope_label


def overlay_key(ai: AiOverlay, regions: bool = True) -> tuple:
    """Everything :func:`ai_overlay_layer` depends on besides the geometry (a render-cache key).

    Holds ``id(prediction)``: a cache using it must keep the prediction alive with the entry."""
    li, regs, scope = _shown(ai, regions)
    return (ai.frame_uid, id(ai.prediction), li, ai.colormap if li is not None else None,
            round(float(ai.opacity), 6) if li is not None else None, scope, ai.verdict,
            tuple((r.label, tuple(r.bbox), round(float(r.peak), 6),
                   round(float((getattr(ai.prediction, "scores", None) or {}).get(r.label, -1.0)), 4)) for r in regs))


def ai_overlay_layer(ai: AiOverlay, size: tuple[int, int], matrix: np.ndarray, *, regions: bool = True,
                     text_scale: float | None = None, cache: Any = None) -> np.ndarray:
    """:func:`overlay_layer` of an AI result, following the intended-use policy.

    Outside the model's intended use (not overridden) neither heat map nor regions are drawn, only the
    scope line; after "Show anyway" everything is drawn with the "shown anyway" line. ``regions=False``
    leaves the outlines out (the viewport's overlays switched off). ``cache`` (a
    :class:`medviewer.workstation.viewport.RenderCache`) keeps the coloured CAM on the image grid.

    Returns
    -------
    np.ndarray
        uint8 ``(height, width, 4)`` RGBA.
    """
    li, regs, scope = _shown(ai, regions)
    heat = None
    if li is not None:
        cam = ai.prediction.cams[li]

        def colour() -> tuple[Any, np.ndarray]:
            return ai.prediction, heat_rgba(cam, ai.colormap, float(ai.opacity))

        key = (id(ai.prediction), li, ai.colormap, float(ai.opacity))
        heat = (cache.get("heat", key, colour) if cache is not None else colour())[1]
    return overlay_layer(size, matrix, heat=heat, regions=regs, scope_text=scope, text_scale=text_scale,
                         scores=getattr(ai.prediction, "scores", None), verdict=ai.verdict)
