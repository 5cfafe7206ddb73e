"""The reading workstation's root model (Qt-free): everything one main window shows, in one object.

A :class:`Workspace` holds the reading session (opened studies, frame sources, measurements, AI results),
the AI controller (model choice, inference, intended-use policy), the audit trail, the AI reports (DICOM
SR) found among the opened files, the viewport models with their linker, the grid layout and the active
viewport. The main window (:class:`medviewer.gui.main_window.MainWindow`) receives one and is a view of
it; tests and scripts drive the same object without a window (the napari way: a ``ViewerModel`` and its
Qt view).

Example
-------
>>> ws = Workspace(provider="cpu")
>>> ws.set_layout("1x2")
[0, 1]
>>> ws.set_active(1)
True
>>> ws.active_viewport is ws.viewports[1]
True
>>> ws.shutdown()
"""

from __future__ import annotations

from typing import Any

from psygnal import Signal

from medviewer.workstation.ai import AiController
from medviewer.workstation.audit_trail import AuditTrail
from medviewer.workstation.linking import ViewportLinker
from medviewer.workstation.session import ReadingSession
from medviewer.workstation.sr_reports import SrReports
from medviewer.workstation.viewport import ViewportModel

__all__ = ["Workspace", "LAYOUTS", "MAX_VIEWPORTS"]

#: the viewport grids: name -> (rows, columns)
LAYOUTS: dict[str, tuple[int, int]] = {"1x1": (1, 1), "1x2": (1, 2), "2x2": (2, 2)}
#: viewports of the largest grid (2 x 2), laid out row by row
MAX_VIEWPORTS = 4


class Workspace:
    """The root model of a reading: session, AI controller, audit trail, SR reports, viewports, layout.

    Parameters
    ----------
    provider
        ONNX Runtime execution provider for the AI controller: ``"auto"``, ``"cuda"`` or ``"cpu"``.
    ignore_intended_use
        Passed to :class:`~medviewer.workstation.ai.AiController` (findings are never withheld).

    Attributes
    ----------
    reading
        The :class:`~medviewer.workstation.session.ReadingSession`.
    ai
        The :class:`~medviewer.workstation.ai.AiController` running the models on ``reading``.
    audit
        The :class:`~medviewer.workstation.audit_trail.AuditTrail` (PS3.15 A.5 events, UIDs only); a
        record it cannot write is reported once through :attr:`audit_failed`.
    sr_reports
        The :class:`~medviewer.workstation.sr_reports.SrReports` of the opened studies.
    viewports
        :data:`MAX_VIEWPORTS` :class:`~medviewer.workstation.viewport.ViewportModel` s, row by row.
    linker
        The :class:`~medviewer.workstation.linking.ViewportLinker` of the viewports.
    layout
        The grid shown, a key of :data:`LAYOUTS`.
    active_index
        Index into :attr:`viewports` of the active viewport (keys, presets and the AI panel follow it).

    Events (``psygnal``): ``layout_changed(name)``, ``active_changed(index)``, ``audit_failed(line)`` (from
    the audit trail's worker thread: a GUI connects it to a queued signal).
    """

    layout_changed = Signal(str)
    active_changed = Signal(int)
    audit_failed = Signal(str)

    def __init__(self, provider: str = "auto", *, ignore_intended_use: bool = False) -> None:
        self.reading = ReadingSession()
        self.ai = AiController(self.reading, provider, ignore_intended_use=ignore_intended_use)
        self.audit = AuditTrail(self.reading, self.ai, on_error=self.audit_failed.emit)
        self.sr_reports = SrReports()
        self.viewports: list[ViewportModel] = [ViewportModel() for _ in range(MAX_VIEWPORTS)]
        self.linker = ViewportLinker(self.viewports)
        self.layout = "1x1"
        self.active_index = 0

    # ------------------------------------------------------------------ layout and active viewport
    @property
    def active_viewport(self) -> ViewportModel:
        """The active viewport's model."""
        return self.viewports[self.active_index]

    def visible(self, layout: str | None = None) -> list[int]:
        """Indices of the viewports the grid ``layout`` (default: the current one) shows, row by row."""
        rows, cols = LAYOUTS.get(layout or self.layout, (1, 1))
        return [i for i in range(len(self.viewports)) if i // 2 < rows and i % 2 < cols]

    def set_layout(self, name: str) -> list[int]:
        """Show the grid ``name`` (an unknown name: ``"1x1"``); the active viewport moves to the first one when
        the grid hides it. Returns the visible indices. A stale saved name falls back to one viewport
        rather than failing: layouts come from menus and saved settings."""
        name = name if name in LAYOUTS else "1x1"
        changed = name != self.layout
        self.layout = name
        shown = self.visible()
        if self.active_index not in shown:
            self.set_active(shown[0])
        if changed:
            self.layout_changed.emit(name)
        return shown

    def set_active(self, index: int) -> bool:
        """Make viewport ``index`` active; returns whether it changed.

        Raises
        ------
        IndexError
            ``index`` is not a viewport.
        """
        if not 0 <= index < len(self.viewports):
            raise IndexError(f"viewport {index} does not exist (0..{len(self.viewports) - 1})")
        if index == self.active_index:
            return False
        self.active_index = index
        self.active_changed.emit(index)
        return True

    def next_viewport(self) -> int:
        """Activate the next visible viewport (wrapping around); returns its index."""
        shown = self.visible()
        i = shown.index(self.active_index) if self.active_index in shown else -1
        self.set_active(shown[(i + 1) % len(shown)])
        return self.active_index

    def index_of(self, model: ViewportModel) -> int:
        """The index of a viewport model of this workspace.

        Raises
        ------
        ValueError
            ``model`` is not one of :attr:`viewports`.
        """
        for i, m in enumerate(self.viewports):
            if m is model:
                return i
        raise ValueError("not a viewport of this workspace")

    # ------------------------------------------------------------------ what the active image offers
    def presets(self) -> list[Any]:
        """Window presets (:func:`medviewer.imaging.presets_for`) of the active image's modality; [] without one."""
        inst = self.active_viewport.current_instance()
        if inst is None:
            return []
        from medviewer.imaging import presets_for

        return list(presets_for(str(getattr(inst, "modality", "") or "")))

    # ------------------------------------------------------------------ lifetime
    def shutdown(self, timeout: float = 3.0) -> None:
        """Cancel the AI run and wait up to ``timeout`` seconds for it; flush the audit trail (closing)."""
        self.ai.shutdown(timeout)
        self.audit.shutdown()
