"""Linked viewports: scroll, zoom/pan and window/level follow each other, toggled per viewport.

The comparison every radiologist makes with a prior: two (or four) viewports scroll through their series
together, zoom and pan together, and share a window. Each :class:`~medviewer.workstation.viewport.ViewportModel`
says what of it is linked (:attr:`~medviewer.workstation.viewport.ViewportModel.links`, a subset of
``{"scroll", "zoom", "window"}``); a change in one viewport is applied to every other viewport that links
the same property. Qt-free: a :class:`ViewportLinker` connects the models' ``psygnal`` events.

* **Scroll** by slice position when both series share a Frame of Reference UID (0020,0052) and their
  slices are parallel: the target shows its slice nearest to the source slice's position, Image Position
  (Patient) (0020,0032) projected on the target's slice normal, the cross product of the row and column
  directions of Image Orientation (Patient) (0020,0037) (PS3.3 C.7.6.2.1.1). Otherwise by index: the
  target moves by as many frames as the source did (the offset between them when linked is kept,
  clamped at the ends). Different frames of reference are never compared by position: their coordinates
  are unrelated.
* **Zoom/pan**: the target's zoom is multiplied by the source's zoom factor and its centre moves by the
  same fraction of the image size.
* **Window/level**: the target takes the source's window centre and width (and preset name), when it has
  a grey-scale window.

Feedback loops are cut by a re-entrancy guard: changes made while propagating are not propagated again.

Example
-------
>>> from medviewer.workstation.viewport import ViewportModel
>>> a, b = ViewportModel(), ViewportModel()
>>> linker = ViewportLinker([a, b])
>>> for m in (a, b):
...     m.set_linked("window", True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from medviewer.workstation.viewport import ViewportModel

__all__ = ["ViewportLinker", "slice_normal", "slice_positions", "corresponding_frame"]

#: |cos| of the angle between two slice normals above which slices count as parallel (about 8 degrees)
PARALLEL_COS = 0.99


def slice_normal(instance: Any) -> np.ndarray | None:
    """Unit normal of an image's plane from Image Orientation (Patient), or None when unknown/degenerate."""
    iop = getattr(instance, "image_orientation_patient", None)
    if iop is None or len(iop) != 6:
        return None
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    n = np.cross(row, col)
    norm = float(np.linalg.norm(n))
    if not np.isfinite(norm) or norm < 1e-6:
        return None
    return n / norm


def _geometry(model: ViewportModel) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(Frame of Reference UID, slice normal, Image Position (Patient) per frame) of a model's source, or
    None when the frames cannot be placed (no frame of reference, orientation or position, or all frames at
    one position, e.g. a multi-frame image whose positions are per frame)."""
    src = model.source
    if src is None or len(src) == 0:
        return None
    first = src.instance(0)
    for_uid = str(getattr(first, "frame_of_reference_uid", "") or "")
    normal = slice_normal(first)
    if not for_uid or normal is None:
        return None
    positions = []
    for k in range(len(src)):
        ipp = getattr(src.instance(k), "image_position_patient", None)
        if ipp is None or len(ipp) != 3:
            return None
        positions.append([float(v) for v in ipp])
    pos = np.asarray(positions, float)
    if not np.all(np.isfinite(pos)) or (len(pos) > 1 and np.ptp(pos @ normal) == 0.0):
        return None
    return for_uid, normal, pos


def slice_positions(model: ViewportModel) -> np.ndarray | None:
    """Each frame's position along its slice normal in mm (Image Position (Patient) . normal), or None."""
    g = _geometry(model)
    return None if g is None else g[2] @ g[1]


def corresponding_frame(source: ViewportModel, k: int, target: ViewportModel) -> int | None:
    """The target frame nearest to the position of the source's frame ``k``, when the two series share a
    Frame of Reference UID and have parallel slices; None otherwise (then link by index)."""
    gs, gt = _geometry(source), _geometry(target)
    if gs is None or gt is None or gs[0] != gt[0] or abs(float(gs[1] @ gt[1])) < PARALLEL_COS:
        return None
    where = float(gs[2][int(k)] @ gt[1])
    return int(np.argmin(np.abs(gt[2] @ gt[1] - where)))


class ViewportLinker:
    """Propagates scroll, zoom/pan and window/level between linked viewport models.

    Parameters
    ----------
    models
        The viewports' models; more can be :meth:`add` ed. Which properties each links is its own
        :attr:`~medviewer.workstation.viewport.ViewportModel.links` (:meth:`~ViewportModel.set_linked`).
    """

    def __init__(self, models: Iterable[ViewportModel] = ()) -> None:
        self.models: list[ViewportModel] = []
        self._busy = False
        self._last_frame: dict[int, int] = {}
        self._last_view: dict[int, tuple] = {}
        self._handlers: dict[int, list[tuple[Any, Callable[..., None]]]] = {}
        for m in models:
            self.add(m)

    # -- membership ----------------------------------------------------------------------------------
    def add(self, model: ViewportModel) -> None:
        """Observe ``model`` (its own :attr:`links` say what it shares)."""
        if any(m is model for m in self.models):
            return
        self.models.append(model)
        self._remember(model)
        handlers: list[tuple[Any, Callable[..., None]]] = [
            (model.frame_changed, lambda k, m=model: self._on_frame(m, k)),
            (model.window_changed, lambda c, w, m=model: self._on_window(m, c, w)),
            (model.view_changed, lambda m=model: self._on_view(m)),
            (model.source_changed, lambda m=model: self._remember(m)),
            (model.links_changed, lambda m=model: self._remember(m)),
        ]
        for sig, fn in handlers:
            sig.connect(fn)
        self._handlers[id(model)] = handlers

    def remove(self, model: ViewportModel) -> None:
        """Stop observing ``model``."""
        for sig, fn in self._handlers.pop(id(model), []):
            sig.disconnect(fn)
        self.models = [m for m in self.models if m is not model]
        for d in (self._last_frame, self._last_view):
            d.pop(id(model), None)

    def link_all(self, what: Iterable[str] = ViewportModel.LINKABLE, on: bool = True) -> None:
        """Link (or unlink) ``what`` in every model."""
        for m in self.models:
            for w in what:
                m.set_linked(w, on)

    def targets(self, source: ViewportModel, what: str) -> list[ViewportModel]:
        """The other models that link ``what`` with ``source`` (empty when ``source`` does not)."""
        if what not in source.links:
            return []
        return [m for m in self.models if m is not source and what in m.links and m.source is not None]

    # -- propagation ---------------------------------------------------------------------------------
    @staticmethod
    def _view_of(m: ViewportModel) -> tuple:
        s = m.state
        return (s.zoom, tuple(s.center), m.view_size, (s.image_w, s.image_h))

    def _remember(self, m: ViewportModel) -> None:
        self._last_frame[id(m)] = m.state.frame
        self._last_view[id(m)] = self._view_of(m)

    def _guarded(self, fn: Callable[[], None]) -> None:
        if self._busy:
            return
        self._busy = True
        try:
            fn()
        finally:
            self._busy = False
            for m in self.models:  # what the propagation changed is the new reference
                self._remember(m)

    def _on_frame(self, source: ViewportModel, k: int) -> None:
        previous = self._last_frame.get(id(source), k)
        self._last_frame[id(source)] = k
        if self._busy:
            return
        targets = self.targets(source, "scroll")
        if not targets:
            return

        def apply() -> None:
            for t in targets:
                j = corresponding_frame(source, k, t)
                t.set_frame(j if j is not None else t.state.frame + (k - previous))

        self._guarded(apply)

    def _on_window(self, source: ViewportModel, center: float | None, width: float | None) -> None:
        if self._busy or center is None or width is None:
            return
        targets = self.targets(source, "window")

        def apply() -> None:
            for t in targets:
                if t.state.width_w is not None:  # colour images have no window
                    t.set_window(center, width, source.state.preset)

        if targets:
            self._guarded(apply)

    def _on_view(self, source: ViewportModel) -> None:
        before = self._last_view.get(id(source))
        now = self._view_of(source)
        self._last_view[id(source)] = now
        if self._busy or before is None:
            return
        targets = self.targets(source, "zoom")
        # a resized view or a frame of another size refits itself: that is not the reader zooming
        if not targets or before[2:] != now[2:] or before[0] <= 0:
            return
        factor = now[0] / before[0]
        (bx, by), (nx, ny), (iw, ih) = before[1], now[1], now[3]
        fx, fy = (nx - bx) / max(iw, 1), (ny - by) / max(ih, 1)
        if factor == 1.0 and fx == 0.0 and fy == 0.0:
            return

        def apply() -> None:
            for t in targets:
                s = t.state
                t.set_zoom_center(s.zoom * factor, (s.center[0] + fx * s.image_w, s.center[1] + fy * s.image_h))

        self._guarded(apply)
