"""Qt-free viewport model: view state, VOI choice, current frame, render cache and events.

This is the logic of one image viewport without the widget (the napari / 3D Slicer way): the Qt view in
:mod:`medviewer.gui.viewport` observes a :class:`ViewportModel`'s ``psygnal`` events and repaints; it keeps
no state of its own about what is shown. The same model drives the viewport in tests without a window, and
:mod:`medviewer.workstation.linking` links models to each other.

Coordinates: image coordinates are continuous ``(x, y)`` with the image spanning ``[0, W] x [0, H]``
(pixel ``(row i, col j)`` covers ``[j, j+1) x [i, i+1)``); screen coordinates are view pixels.

Render cache, one rule: every derived image (the display image at the shown resolution, the stored values
area-averaged to it, the modality values, the AI overlay layer) is stored under a key made of everything it
depends on -- source, frame, window, invert, minification factors, geometry, overlay settings -- and is
valid exactly when its key is asked for again. Nothing is invalidated by hand; a bounded LRU
(:class:`RenderCache`) forgets what is no longer asked for.

Example
-------
>>> m = ViewportModel()
>>> seen = []
>>> _ = m.frame_changed.connect(seen.append)
>>> m.set_view_size(512, 512)
>>> m.has_image()
False
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from psygnal import Signal

from medviewer.workstation.viewstate import ViewState, nice_scale_length_mm

__all__ = ["ViewState", "nice_scale_length_mm", "RenderCache", "DisplayLayer", "ViewportModel",
           "minification_factors"]


def minification_factors(zoom: float, aspect: float = 1.0) -> tuple[float, float]:
    """How much to shrink an image before it is drawn at ``zoom`` (screen pixels per image pixel along x,
    ``zoom / aspect`` along y): ``(fx, fy)`` in (0, 1], quantised to quarter octaves so that small zoom
    changes reuse the cached reduction; 1.0 (full resolution) from a zoom of 0.9 up."""
    out = []
    for z in (zoom, zoom / aspect):
        f = 1.0 if z >= 0.9 else 2.0 ** (math.ceil(math.log2(max(z, 1e-3)) * 4) / 4)
        out.append(min(1.0, f))
    return out[0], out[1]


def _area_resize(arr: np.ndarray, fx: float, fy: float) -> np.ndarray:
    """Area-average ``arr`` by factors ``fx, fy`` (< 1) for crisp minification (OpenCV ``INTER_AREA``)."""
    h, w = arr.shape[:2]
    nw, nh = max(1, round(w * fx)), max(1, round(h * fy))
    return cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_AREA)


class RenderCache:
    """Derived images under keys made of everything they depend on; a bounded LRU per kind.

    The one invalidation rule of the viewport: an entry is valid exactly when its full key is asked for
    again; nothing is invalidated by hand. Each kind (``"display"``, ``"values"``, ...) keeps at most
    ``max_per_kind`` entries, so a window/level drag, which asks for a new display image per frame, never
    pushes out the modality values or the overlay layer.
    """

    def __init__(self, max_per_kind: int = 2) -> None:
        self.max_per_kind = max(1, int(max_per_kind))
        self._kinds: dict[str, OrderedDict[Hashable, Any]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, kind: str, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The entry of ``kind`` under ``key``, computed (and stored) when absent."""
        store = self._kinds.setdefault(kind, OrderedDict())
        if key in store:
            store.move_to_end(key)
            self.hits += 1
            return store[key]
        self.misses += 1
        value = compute()
        store[key] = value
        while len(store) > self.max_per_kind:
            store.popitem(last=False)
        return value

    def __len__(self) -> int:
        return sum(len(s) for s in self._kinds.values())

    def clear(self) -> None:
        """Forget everything (e.g. to free memory); never needed for correctness."""
        self._kinds.clear()


@dataclass(frozen=True)
class DisplayLayer:
    """The shown frame rendered for display at the shown resolution.

    Attributes
    ----------
    key
        The render-cache key it was made under (source, frame, window, invert, minification).
    image
        uint8 ``(h, w)`` grey or ``(h, w, 3)`` RGB (PS3.4 N.2 display pipeline output).
    scale_x, scale_y
        Image pixels per layer pixel (1.0 at full resolution): draw the layer with the view matrix
        followed by ``scale(scale_x, scale_y)``.
    """

    key: tuple
    image: np.ndarray
    scale_x: float
    scale_y: float


def _same(a: Any, b: Any) -> bool:
    return a is b or a == b


class ViewportModel:
    """One viewport's state, its VOI choice and current frame, a render cache, and events.

    The frame source is any object with the :class:`medviewer.workstation.frames.FrameSource` interface
    (``len()``, ``cached(k)``, ``pipeline(k)``, ``spacing(k)``, ``instance(k)``, ``uid``); this module does
    not import it. Pixels are decoded elsewhere (worker threads); the model only reads the source's cache
    and says which frame it waits for (:attr:`frame_wanted`).

    Events (``psygnal`` signals, emitted synchronously on the calling thread):

    * ``source_changed()`` -- a new series (or none) is shown;
    * ``frame_changed(int)`` -- the shown frame index changed;
    * ``image_ready(int)`` -- the shown frame's pixels arrived and were adopted (size, default window);
    * ``window_changed(center, width)`` -- VOI window (modality units, HU on CT; None on colour images),
      preset or invert changed;
    * ``view_changed()`` -- zoom, pan, rotation, flips or the view size changed;
    * ``overlay_changed()`` -- the AI overlay shown on the frame changed;
    * ``links_changed()`` -- which properties are linked to other viewports changed (:attr:`links`);
    * ``frame_wanted(int)`` -- the model waits for this frame's pixels (prefetch priority).
    """

    source_changed = Signal()
    frame_changed = Signal(int)
    image_ready = Signal(int)
    window_changed = Signal(object, object)
    view_changed = Signal()
    overlay_changed = Signal()
    links_changed = Signal()
    frame_wanted = Signal(int)

    #: what :attr:`links` may hold: scroll (slice position or index), zoom/pan, window/level
    LINKABLE = ("scroll", "zoom", "window")

    def __init__(self) -> None:
        self.state = ViewState()
        self.source: Any = None
        self.source_key = ""
        self.view_size: tuple[int, int] = (1, 1)
        self.ai: Any = None  # medviewer.workstation.overlay.AiOverlay
        self.links: frozenset[str] = frozenset()
        self.cache = RenderCache()
        self._generation = 0  # bumped per set_source: cache keys never mix two sources
        self._adopted: tuple[int, int] | None = None  # (generation, frame) whose size and window are taken
        self._default_window: tuple[float, float] | None = None
        self._voi_initialised = False

    # -- source and frame ----------------------------------------------------------------------------
    def set_source(self, source: Any, key: str = "", frame: int = 0) -> None:
        """Show ``source`` (None clears) from ``frame`` with a fitted view and the file's default window."""
        self._generation += 1
        self.source = source
        self.source_key = key or (str(source.uid) if source is not None else "")
        self.ai = None
        self._adopted = None
        self._default_window = None
        self._voi_initialised = False
        self.state = ViewState()
        if source is not None:
            self.state.n_frames = len(source)
            self.state.frame = int(np.clip(frame, 0, len(source) - 1))
            inst = source.instance(self.state.frame)
            sp = source.spacing(self.state.frame)
            self.state.set_image_size(int(inst.columns), int(inst.rows), sp[1] / sp[0] if sp else 1.0)
            self.state.fit(*self.view_size)
        self.source_changed.emit()
        self.refresh()

    @property
    def frame(self) -> int:
        """Index of the shown frame (0-based)."""
        return self.state.frame

    @property
    def n_frames(self) -> int:
        return self.state.n_frames if self.source is not None else 0

    def frame_uid(self) -> tuple[str, int] | None:
        """``(series key, frame index)`` of the shown frame, None without a source."""
        return None if self.source is None else (self.source_key, self.state.frame)

    def current_instance(self) -> Any:
        return None if self.source is None else self.source.instance(self.state.frame)

    def spacing(self) -> tuple[float, float] | None:
        """``(row, column)`` pixel spacing of the shown frame in mm, or None."""
        return None if self.source is None else self.source.spacing(self.state.frame)

    def has_image(self) -> bool:
        """True when the shown frame's pixels are decoded and adopted (its size and window are known)."""
        return (self.source is not None and self._adopted == (self._generation, self.state.frame)
                and self.source.cached(self.state.frame) is not None)

    def set_frame(self, k: int) -> bool:
        """Show frame ``k`` (clamped); True (and ``frame_changed``) when it changed. A decoded frame is
        adopted (``image_ready``) before ``frame_changed``, so its listeners see :meth:`has_image`."""
        if self.source is None:
            return False
        k = int(np.clip(k, 0, len(self.source) - 1))
        if k == self.state.frame:
            return False
        self.state.frame = k
        self.refresh()
        self.frame_changed.emit(k)
        return True

    def step(self, delta: int) -> bool:
        """Move ``delta`` frames (clamped)."""
        return self.set_frame(self.state.frame + int(delta))

    def refresh(self) -> bool:
        """Adopt the shown frame if its pixels are decoded (size, first window), else ask for it.

        Returns True when the frame is shown. Emits ``image_ready`` the first time a frame is adopted."""
        src = self.source
        if src is None:
            return False
        k = self.state.frame
        if self._adopted == (self._generation, k):
            return True
        stored = src.cached(k)
        if stored is None:
            self.frame_wanted.emit(k)
            return False
        sp = src.spacing(k)
        if self.state.set_image_size(int(stored.shape[1]), int(stored.shape[0]), sp[1] / sp[0] if sp else 1.0):
            self.state.fit(*self.view_size)  # a frame of another size
            self.view_changed.emit()
        self._adopted = (self._generation, k)
        if not self._voi_initialised:
            self._voi_initialised = True
            w = src.pipeline(k).default_window(stored)
            self._default_window = None if w is None else (float(w.center), float(w.width))
            if w is None:  # colour or identity display: no window
                self.state.center_w = self.state.width_w = None
            else:
                self.state.center_w, self.state.width_w = float(w.center), float(w.width)
                self.window_changed.emit(self.state.center_w, self.state.width_w)
        self.image_ready.emit(k)
        return True

    def on_frame_decoded(self, k: int) -> None:
        """Tell the model that frame ``k`` was decoded (from the prefetch); adopts it when shown."""
        if self.source is not None and k == self.state.frame and not self.has_image():
            self.refresh()

    # -- VOI ----------------------------------------------------------------------------------------
    @property
    def file_window(self) -> tuple[float, float] | None:
        """The file's (or automatic) window ``(center, width)`` the frame was first shown with."""
        return self._default_window

    def set_window(self, center: float, width: float, preset: str = "") -> None:
        """VOI window in modality units (HU on CT); width at least 1. ``preset`` names its preset."""
        c, w = float(center), max(1.0, float(width))
        if (c, w, preset) == (self.state.center_w, self.state.width_w, self.state.preset):
            return
        self.state.center_w, self.state.width_w, self.state.preset = c, w, preset
        self.window_changed.emit(c, w)

    def apply_preset(self, preset: Any) -> None:
        """Apply a :class:`medviewer.imaging.Preset` (``name``, ``center``, ``width``)."""
        self.set_window(preset.center, preset.width, str(getattr(preset, "name", "")))

    def default_window(self) -> None:
        """Back to the window the frame was first shown with (the file's, or the automatic one)."""
        if self._default_window is not None:
            self.set_window(*self._default_window)

    def set_invert(self, on: bool) -> None:
        if bool(on) != self.state.invert:
            self.state.invert = bool(on)
            self.window_changed.emit(self.state.center_w, self.state.width_w)

    def toggle_invert(self) -> None:
        self.set_invert(not self.state.invert)

    def drag_window(self, dx: float, dy: float, sensitivity: float | None = None) -> None:
        """Left-drag window/level by ``(dx, dy)`` screen pixels; ``sensitivity`` in modality units per
        pixel (default: the current width / 500)."""
        s = self.state
        if s.width_w is None:
            return
        sens = sensitivity if sensitivity is not None else max(float(s.width_w), 1.0) / 500.0
        s.drag_window(dx, dy, sens)
        s.preset = ""
        self.window_changed.emit(s.center_w, s.width_w)

    # -- geometry -----------------------------------------------------------------------------------
    def set_view_size(self, w: int, h: int) -> None:
        """The view's size in screen pixels; a fitted image stays fitted."""
        size = (max(1, int(w)), max(1, int(h)))
        if size == self.view_size:
            return
        self.view_size = size
        if self.state.fitted:
            self.state.fit(*size)
        self.view_changed.emit()

    def matrix(self) -> np.ndarray:
        """3x3 affine matrix mapping homogeneous image ``(x, y, 1)`` to view pixels."""
        return self.state.matrix(*self.view_size)

    def to_image(self, sx: float, sy: float) -> tuple[float, float]:
        return self.state.to_image(sx, sy, *self.view_size)

    def to_screen(self, x: float, y: float) -> tuple[float, float]:
        return self.state.to_screen(x, y, *self.view_size)

    def fit(self) -> None:
        self.state.fit(*self.view_size)
        self.view_changed.emit()

    def actual_size(self) -> None:
        self.state.actual_size()
        self.view_changed.emit()

    def zoom_by(self, factor: float, anchor: tuple[float, float] | None = None) -> None:
        """Zoom by ``factor`` keeping the image point under screen point ``anchor`` in place."""
        self.state.zoom_by(factor, anchor, self.view_size if anchor is not None else None)
        self.view_changed.emit()

    def pan_by(self, dx: float, dy: float) -> None:
        """Move the image by ``(dx, dy)`` screen pixels."""
        self.state.pan_by(dx, dy, *self.view_size)
        self.view_changed.emit()

    def set_zoom_center(self, zoom: float, center: tuple[float, float]) -> None:
        """Set zoom (screen pixels per image pixel) and the image point shown at the view's centre."""
        z = float(np.clip(zoom, 1 / 64, 64))
        c = (float(center[0]), float(center[1]))
        if _same(z, self.state.zoom) and _same(c, tuple(self.state.center)):
            return
        self.state.zoom, self.state.center, self.state.fitted = z, c, False
        self.view_changed.emit()

    def rotate(self, degrees: int) -> None:
        """Rotate clockwise by a multiple of 90 degrees (a fitted image is refitted)."""
        self.state.rotate(degrees)
        if self.state.fitted:
            self.state.fit(*self.view_size)
        self.view_changed.emit()

    def flip(self, horizontal: bool) -> None:
        if horizontal:
            self.state.flip_h = not self.state.flip_h
        else:
            self.state.flip_v = not self.state.flip_v
        self.view_changed.emit()

    def centre_on(self, bbox: tuple[float, float, float, float]) -> None:
        """Centre and zoom on an image box ``(x0, y0, x1, y1)``."""
        self.state.centre_on(bbox, *self.view_size)
        self.view_changed.emit()

    def reset(self) -> None:
        """No rotation, flips or inversion, fitted, the file's window."""
        s = self.state
        s.rotation, s.flip_h, s.flip_v = 0, False, False
        s.fit(*self.view_size)
        self.view_changed.emit()
        self.set_invert(False)
        self.default_window()

    # -- links --------------------------------------------------------------------------------------
    def set_linked(self, what: str, on: bool) -> None:
        """Link (or unlink) ``what`` -- one of :attr:`LINKABLE` -- to the other linked viewports."""
        if what not in self.LINKABLE:
            raise ValueError(f"cannot link {what!r}; choose one of {', '.join(self.LINKABLE)}")
        links = self.links | {what} if on else self.links - {what}
        if links != self.links:
            self.links = frozenset(links)
            self.links_changed.emit()

    # -- AI overlay ---------------------------------------------------------------------------------
    def set_ai(self, ai: Any) -> None:
        """The AI result drawn on a frame (:class:`medviewer.workstation.overlay.AiOverlay`), or None."""
        self.ai = ai
        self.overlay_changed.emit()

    # -- rendering ----------------------------------------------------------------------------------
    def _window_for(self, pipe: Any) -> Any:
        """The :class:`medviewer.imaging.Window` to render with, None for the file's own VOI."""
        from medviewer.imaging import Window

        s = self.state
        untouched_lut = pipe.voi_luts and not pipe.windows and (s.center_w, s.width_w) == self._default_window
        if s.width_w and s.center_w is not None and not untouched_lut:  # an untouched VOI LUT Sequence is
            # shown as display_image does; the file's VOI LUT Function (e.g. SIGMOID) is kept while dragging
            return Window(float(s.center_w), float(s.width_w), pipe.voi_function)
        return None

    def _reduced(self, stored: np.ndarray, fx: float, fy: float) -> np.ndarray:
        """Stored values area-averaged to the shown resolution, so a W/L drag on a 2k radiograph windows
        ~1M pixels instead of 4M and needs no per-frame resize."""
        if (fx >= 1.0 and fy >= 1.0) or stored.dtype not in (np.uint8, np.uint16, np.int16, np.float32):
            return stored  # full resolution, or e.g. int32 (no area resize in OpenCV)
        key = (self._generation, self.state.frame, fx, fy)
        return self.cache.get("reduced", key, lambda: _area_resize(stored, fx, fy))

    def display_layer(self) -> DisplayLayer | None:
        """The shown frame through its display pipeline at the shown resolution (cached), or None while
        its pixels are not decoded."""
        if not self.has_image():
            return None
        src, s = self.source, self.state
        stored = src.cached(s.frame)
        fx, fy = minification_factors(s.zoom, s.aspect)
        key = (self._generation, s.frame, s.center_w, s.width_w, s.invert, fx, fy,
               stored.shape, self._default_window)

        def render() -> DisplayLayer:
            pipe = src.pipeline(s.frame)
            shown = self._reduced(stored, fx, fy)
            disp = pipe.render(shown, self._window_for(pipe), invert=s.invert)
            if shown is stored and (fx < 1.0 or fy < 1.0):
                disp = _area_resize(disp, fx, fy)
            return DisplayLayer(key, disp, stored.shape[1] / disp.shape[1], stored.shape[0] / disp.shape[0])

        return self.cache.get("display", key, render)

    def screen_layer(self) -> tuple[int, int, np.ndarray] | None:
        """``(x, y, image)``: the display layer resampled (bilinear) to the screen, at whole-pixel position
        ``(x, y)`` of the view, so a view copies it without scaling (a painter's filtered scaling costs 1.7 ms
        of a W/L frame for a 512^2 CT magnified 1.9x, 3 ms for a 1k x 1k image minified; this 0.3-1 ms).

        Minified or slightly magnified axis-aligned views get the whole image at its on-screen size (the
        display layer is already area-averaged to within a quarter octave of it). Magnified, rotated or
        mirrored views get only the part of the view the image covers, warped with the view's matrix
        (``cv2.warpAffine``, pixel centres mapped as the painter maps them; black outside the image, as the
        view's background). None when nothing is decoded or the image is entirely outside the view."""
        layer = self.display_layer()
        if layer is None:
            return None
        m = self.matrix() @ np.diag([layer.scale_x, layer.scale_y, 1.0])  # layer pixel -> view pixel
        h, w = layer.image.shape[:2]
        if abs(m[0, 1]) < 1e-9 and abs(m[1, 0]) < 1e-9 and 0 < m[0, 0] <= 1.25 and 0 < m[1, 1] <= 1.25:
            x0, y0 = round(m[0, 2]), round(m[1, 2])
            tw, th = round(m[0, 2] + w * m[0, 0]) - x0, round(m[1, 2] + h * m[1, 1]) - y0
            if tw <= 0 or th <= 0:
                return None
            img = self.cache.get("screen", (layer.key, tw, th), lambda: layer.image if (tw, th) == (w, h) else
                                 cv2.resize(layer.image, (tw, th), interpolation=cv2.INTER_LINEAR))
            return x0, y0, img
        corners = m[:2] @ np.array([[0, w, 0, w], [0, 0, h, h], [1, 1, 1, 1]], float)
        vw, vh = self.view_size
        x0, y0 = max(0, math.floor(corners[0].min())), max(0, math.floor(corners[1].min()))
        x1, y1 = min(int(vw), math.ceil(corners[0].max())), min(int(vh), math.ceil(corners[1].max()))
        if x1 <= x0 or y1 <= y0:
            return None
        # cv2 samples at integer pixel centres, the painter at half-integers: shift by half a pixel each side
        warp = np.array([[1, 0, -x0 - 0.5], [0, 1, -y0 - 0.5], [0, 0, 1]]) @ m @ np.array(
            [[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1]])
        key = (layer.key, x0, y0, x1, y1, tuple(np.round(warp[:2].ravel(), 9)))
        img = self.cache.get("screen", key, lambda: cv2.warpAffine(
            layer.image, warp[:2], (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
            borderValue=0))
        return x0, y0, img

    def values(self) -> tuple[np.ndarray | None, str]:
        """Modality values of the shown frame (float32) and their unit (cached per frame).

        The unit is the pipeline's :attr:`~medviewer.imaging.DisplayPipeline.units` label (``"HU"`` when the
        header reader decides Hounsfield Units: Rescale Type HU, or a CT without one; ``""`` when unspecified
        or for colour images), so a CT whose Rescale Type is ``US`` is not labelled HU."""
        if self.source is None:
            return None, ""
        stored = self.source.cached(self.state.frame)
        if stored is None:
            return None, ""
        k = self.state.frame
        pipe = self.source.pipeline(k)
        unit = pipe.units.label if stored.ndim == 2 else ""  # decided by the header reader (Rescale Type, else CT)
        vals = self.cache.get("values", (self._generation, k, stored.shape), lambda: (
            stored.astype(np.float32) if stored.ndim == 3 else pipe.modality_values(stored)))
        return vals, unit

    def overlay_layer(self, regions: bool = True) -> np.ndarray | None:
        """The AI overlay of the shown frame as RGBA at the view's geometry (cached), or None.

        Exactly :func:`medviewer.workstation.overlay.ai_overlay_layer` with the view's size and matrix:
        what the viewport draws and what an export at this geometry contains. ``regions=False`` leaves
        the region outlines out (the viewport's overlays switched off)."""
        ai = self.ai
        if ai is None or ai.frame_uid != self.frame_uid():
            return None
        from medviewer.workstation.overlay import ai_overlay_layer, overlay_key

        m = self.matrix()
        key = (overlay_key(ai, regions), self.view_size, tuple(np.round(m[:2].ravel(), 9)))
        # the value keeps the prediction alive, so its id() in the key cannot be reused while cached
        return self.cache.get("overlay", key, lambda: (ai.prediction, ai_overlay_layer(
            ai, self.view_size, m, regions=regions, cache=self.cache)))[1]
