"""The reading workstation's main window: a view of the Qt-free workstation models.

The window receives a :class:`~medviewer.workstation.workspace.Workspace` -- the Qt-free root model: the
:class:`~medviewer.workstation.session.ReadingSession` (opened studies, frame sources, measurements, AI
results), the :class:`~medviewer.workstation.ai.AiController` (model choice, inference, policies), the audit
trail, the SR reports, the viewport models, the layout and the active viewport -- and lays out the browser,
the viewports, the AI panel and the status bar as views of it; :class:`~medviewer.gui.ai_view.AiView` shows the AI side, :mod:`medviewer.gui.menus` the
menus, :class:`~medviewer.gui.loading.SeriesLoader` the opening of studies (scan and decoding in Qt
worker tasks; a folder's first file is shown while the other headers are read). Nothing long runs on the
GUI thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QSize, Qt, QThreadPool, Signal
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QGridLayout,
    QLabel,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QWidget,
)

from medviewer.gui.ai_panel import AiPanel, scrollable
from medviewer.gui.ai_view import AiView
from medviewer.gui.browser import SeriesBrowser
from medviewer.gui.dialogs import ExportDialog, ModelCardDialog, ShortcutsDialog, TagBrowser, show_error
from medviewer.gui.linking import install_linking
from medviewer.gui.loading import SeriesLoader
from medviewer.gui.menus import MenuBar, build_menus, update_presets_menu
from medviewer.gui.settings import Settings
from medviewer.gui.viewport import Viewport
from medviewer.gui.workers import Task, warm_imports
from medviewer.workstation.keybindings import Command
from medviewer.workstation.measure import Shape
from medviewer.workstation.session import PredictionEntry
from medviewer.workstation.workspace import Workspace

__all__ = ["MainWindow"]


class MainWindow(QMainWindow):
    """MedViewer's main window.

    Parameters
    ----------
    settings
        Persistent settings (tests pass one backed by a temporary INI file).
    provider
        Execution provider for this session (overrides the saved setting), or None.
    interactive
        False for ``--screenshot`` runs: errors go to stderr instead of modal dialogs.
    workspace
        The root model to show; default a new :class:`Workspace` with ``provider`` (or the saved one).

    Attributes
    ----------
    workspace
        The :class:`Workspace` shown.
    reading, ai, audit, sr_reports
        Its reading session, AI controller, audit trail and SR reports (the same objects).
    menu_bar
        The :class:`~medviewer.gui.menus.MenuBar` (``actions``, ``menus``, ``auto_run`` ... are its fields).
    """

    predictionShown = Signal(object)  # Prediction, after the panel updated
    firstImageShown = Signal()
    busyChanged = Signal(bool)
    auditFailed = Signal(str)  # noqa: N815 - one line, from the audit trail's thread

    def __init__(self, settings: Settings | None = None, provider: str | None = None,
                 interactive: bool = True, workspace: Workspace | None = None) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.interactive = interactive
        self.setWindowTitle("MedViewer")
        self.resize(1600, 1000)
        self.setAcceptDrops(True)
        self.io_pool = QThreadPool(self)
        self.io_pool.setMaxThreadCount(2)
        self._tasks: set[Task] = set()
        if workspace is None:
            workspace = Workspace(provider or self.settings.provider)
        elif provider:
            workspace.ai.set_provider(provider)
        self.workspace = workspace
        self.reading, self.ai, self.sr_reports = workspace.reading, workspace.ai, workspace.sr_reports
        # audit trail: study opened, AI run (observed), results exported / sent (called); UIDs only, off-thread
        self.audit = workspace.audit
        self.auditFailed.connect(self.set_status)
        workspace.audit_failed.connect(self.auditFailed.emit)  # queued onto the GUI thread by Qt
        workspace.active_changed.connect(self._on_active_index)
        self.loader = SeriesLoader(self)
        self.force_auto_run = False  # --demo: run on open for this session without changing the setting
        self.errors: list[str] = []
        self._build_viewports()
        self._build_docks()
        self._build_status()
        self.ai_view = AiView(self, self.ai)
        self.menu_bar: MenuBar = build_menus(self)
        self.linker = install_linking(self, workspace.linker)  # View > Link viewports (medviewer.gui.linking)
        self._restore_settings()
        self.set_layout(self.settings.layout)
        self.set_active(self.viewports[0])
        self.ai_dock.raise_()  # in front of the SR tab, also when a saved window state put that in front
        self.ai.prepare(warm_imports)  # on the model thread, before the model scan; worker tasks wait for it
        self.load_models()

    # ==== construction =================================================================================
    def _build_viewports(self) -> None:
        self.viewports: list[Viewport] = []
        central = QWidget()
        central.setStyleSheet("background: #000;")
        self.grid = QGridLayout(central)
        self.grid.setContentsMargins(1, 1, 1, 1)
        self.grid.setSpacing(2)
        for i, model in enumerate(self.workspace.viewports):
            vp = Viewport(model=model)
            vp.measurements = self.reading.measurements  # measurements belong to the image, not the viewport
            vp.activated.connect(self.set_active)
            vp.frameChanged.connect(lambda k, v=vp: self._on_frame_changed(v))
            vp.cursorInfo.connect(lambda text: self.readout.setText(text))
            vp.wantFrame.connect(lambda k, v=vp: self.loader.want_frame(v, k))
            vp.seriesDropped.connect(lambda v, key: self.load_series(key, v))
            vp.filesDropped.connect(self.open_paths)
            self.viewports.append(vp)
            self.grid.addWidget(vp, i // 2, i % 2)
        self.setCentralWidget(central)
        self.active = self.viewports[0]

    def _dock(self, title: str, name: str, widget: QWidget, area: Any) -> QDockWidget:
        d = QDockWidget(title, self)
        d.setObjectName(name)
        d.setWidget(widget)
        d.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetClosable)
        self.addDockWidget(area, d)
        return d

    def _build_docks(self) -> None:
        self.browser = SeriesBrowser()
        self.browser.seriesActivated.connect(lambda key: self.load_series(key, self.active))
        self.browser.presentationStateActivated.connect(self._choose_presentation_state)
        self.browser_dock = self._dock("Studies", "studies", self.browser, Qt.LeftDockWidgetArea)
        self.panel = AiPanel()
        self.panel.cardRequested.connect(self.show_model_card)
        self.ai_dock = self._dock("AI", "ai", scrollable(self.panel), Qt.RightDockWidgetArea)
        self.resizeDocks([self.browser_dock, self.ai_dock], [230, 340], Qt.Horizontal)
        from medviewer.gui.sr_view import SrPanel
        self.sr_panel = SrPanel()  # the workspace's AI reports (TID 1500 SR) found among the opened files
        self.sr_panel.findingActivated.connect(self.show_sr_finding)
        self.sr_dock = self._dock("AI reports (SR)", "sr", self.sr_panel, Qt.RightDockWidgetArea)
        self.tabifyDockWidget(self.ai_dock, self.sr_dock)  # a tab behind the AI panel, which keeps its height

    def _build_status(self) -> None:
        sb = self.statusBar()
        self.status_msg = QLabel("Ready")
        self.readout = QLabel("")
        self.readout.setMinimumWidth(380)
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(180)
        self.progress.setVisible(False)
        self.provider_label = QLabel("")
        sb.addWidget(self.status_msg, 1)
        for w in (self.readout, self.progress, self.provider_label):
            sb.addPermanentWidget(w)

    def _restore_settings(self) -> None:
        s = self.settings  # read them all first: setting one saves the panel's others
        opacity, cmap, heat_on, auto = s.heatmap_opacity, s.colormap, s.heatmap_on, s.auto_run
        self.panel.opacity.setValue(int(round(opacity * 100)))
        self.panel.set_colormap(cmap)
        self.panel.set_heatmap_on(heat_on)
        self.panel.auto_run.setChecked(auto)
        self.auto_run_action.setChecked(auto)
        self.provider_label.setText(f"Provider: {self.provider}")

    # ==== helpers =====================================================================================
    def start(self, task: Task, pool: QThreadPool | None = None) -> Task:
        """Run ``task`` on a pool, keeping it alive until it finishes."""
        self._tasks.add(task)
        task.signals.finished.connect(lambda t=task: self._task_done(t))
        (pool or self.io_pool).start(task)
        self.busyChanged.emit(True)
        return task

    def _task_done(self, task: Task) -> None:
        self._tasks.discard(task)
        if not self._tasks:
            self.busyChanged.emit(False)

    def is_idle(self) -> bool:
        """True when no background task (scan, decoding, inference, model scan) runs and the models are listed."""
        return not self._tasks and self.models_ready and not self.ai.pending() and self.ai_view.settled()

    def error(self, title: str, reason: str) -> None:
        """Report an error: a dialog with a one-line reason (stderr in non-interactive runs)."""
        line = (reason or "unknown error").strip().splitlines()[0]
        self.errors.append(line)
        self.status_msg.setText(f"{title}: {line}")
        if self.interactive:
            show_error(self, title, line)
        else:
            import sys

            print(f"medviewer: {title}: {line}", file=sys.stderr)

    def set_status(self, text: str) -> None:
        """Show ``text`` in the status bar."""
        self.status_msg.setText(text)

    # ==== the AI, through the controller and its view ================================================
    provider = property(lambda self: self.ai.provider, doc="The execution provider in use (auto, cuda or cpu).")
    package = property(lambda self: self.ai.package, doc="The selected model package, or None.")
    packages = property(lambda self: self.ai.packages, doc="The model packages found.")
    models_ready = property(lambda self: self.ai_view.models_ready, doc="True once the model list is shown.")
    # the menu bar's parts, by the names the views and tests use
    menus = property(lambda self: self.menu_bar.menus, doc="Top-level menus by name.")
    actions = property(lambda self: self.menu_bar.actions, doc="Command -> QAction.")
    preset_actions = property(lambda self: self.menu_bar.preset_actions, doc="The number-key preset actions.")
    auto_run_action = property(lambda self: self.menu_bar.auto_run, doc="AI > Run automatically on open.")
    provider_actions = property(lambda self: self.menu_bar.providers, doc="Provider name -> QAction.")

    def prediction_for(self, vp: Viewport) -> PredictionEntry | None:
        """The selected model's result for the image ``vp`` shows, or None."""
        return self.ai_view.entry_for(vp)

    def load_models(self, select: str | None = None) -> None:
        """Find model packages in a worker; ``select`` = name or path to select (e.g. ``--model``)."""
        self.ai_view.load_models(select)

    def run_ai(self, vp: Viewport | None = None) -> None:
        """Run the selected model on a viewport's image (default: the active one) in a worker thread."""
        self.ai_view.run(vp)

    def cancel_ai(self) -> None:
        """Cancel the running inference (its result is dropped)."""
        self.ai_view.cancel()

    def cancel(self) -> None:
        """Esc: cancel the running inference, else the measurement being drawn."""
        if not self.ai_view.cancel():
            self.active.cancel_drawing()

    def show_anyway(self) -> None:
        """Show the active image's withheld out-of-scope findings, labelled as such."""
        self.ai_view.show_anyway()

    def zoom_to_region(self, i: int) -> None:
        """Centre and zoom the active viewport on flagged region ``i``."""
        self.ai_view.zoom_to_region(i)

    def set_provider(self, name: str) -> None:
        """Run later inferences on ``name`` (auto, cuda, cpu) and save it."""
        self.ai.set_provider(name)
        self.settings.provider = name
        self.provider_label.setText(f"Provider: {name}")
        if name in self.provider_actions:
            self.provider_actions[name].setChecked(True)

    def show_model_card(self) -> None:
        if self.package is None:
            self.set_status("No model selected")
            return
        self._card_dialog = ModelCardDialog(self.package, self)
        self._card_dialog.show()

    def import_model_dialog(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Import model package (folder with model.onnx + model.json)",
                                             self.settings.last_folder)
        if d:
            self.import_model_from(d)

    def import_model_from(self, path: str) -> None:
        """Validate and install a model package in a worker; a refused package gives a dialog with the reason."""
        self.ai_view.import_model_from(path)

    # ==== opening =====================================================================================
    def open_files_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Open images", self.settings.last_folder,
                                                "Images (*.dcm *.DCM *.dicom *.png *.jpg *.jpeg *);;All files (*)")
        if files:
            self.open_paths(files)

    def open_folder_dialog(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Open folder", self.settings.last_folder)
        if d:
            self.open_paths([d])

    def show_pacs_dialog(self) -> None:
        """The PACS dialog (query, retrieve off the GUI thread); a retrieved study opens in the browser."""
        from medviewer.gui.pacs_dialog import PacsDialog
        from medviewer.gui.worklist_view import show_worklist
        self._pacs_dialog = PacsDialog(self)
        self._pacs_dialog.studyRetrieved.connect(lambda folder: self.open_paths([str(folder)]))
        self._pacs_dialog.triageRequested.connect(lambda *a: show_worklist(self).triage_pacs(*a))
        self._pacs_dialog.show()

    def open_paths(self, paths: list[str]) -> None:
        """Scan files/folders in a worker, add their studies and show the first new series (see :class:`SeriesLoader`);
        AI reports (TID 1500 SR) among them are listed in the SR dock and drawn on their images; the newest
        presentation state (GSPS) of a shown series is applied (:mod:`medviewer.gui.presentation`)."""
        from medviewer.gui.presentation import find_and_apply

        self.loader.open_paths(paths)
        self._find_sr_reports(list(paths))
        find_and_apply(self, list(paths))

    def _choose_presentation_state(self, path: str) -> None:
        """A saved reading state chosen in the browser: apply it (:func:`medviewer.gui.presentation.choose_state`)."""
        from medviewer.gui.presentation import choose_state

        choose_state(self, path)

    def _find_sr_reports(self, paths: list[str]) -> None:
        from medviewer.gui.workers import FnTask
        from medviewer.workstation.sr_reports import find_sr_reports

        task = FnTask(lambda t: find_sr_reports(paths, cancel=lambda: t.cancelled), "SR reports")
        task.signals.result.connect(self._on_sr_reports)
        self.start(task)

    def _on_sr_reports(self, reports: list) -> None:
        new = self.sr_reports.add(reports)
        if new:
            self.sr_panel.add_reports(new)
            self.set_status(f"{len(new)} AI report{'s' * (len(new) != 1)} (DICOM SR) found")
            self.ai_view.update_layers()

    def show_sr_finding(self, sop_instance_uid: str, frame: int) -> None:
        """Show the image a report's finding refers to (frame from 0) in the active viewport."""
        for key, src in self.reading.sources.items():
            for k, (inst, f) in enumerate(src.frames):
                if str(getattr(inst, "sop_instance_uid", "")) == sop_instance_uid and f == max(frame, 0):
                    if self.active.source_key != key:
                        self.load_series(key, self.active)
                    self.active.set_frame(k)
                    self.ai_view.update_layers()
                    return
        self.set_status("The image this finding refers to is not open")

    def load_series(self, key: str, vp: Viewport | None = None) -> None:
        """Show series ``key`` in ``vp`` (default: the active viewport) from its first image; prefetch its frames."""
        self.loader.load_series(key, vp)

    # ==== viewports ===================================================================================
    def set_layout(self, name: str) -> None:
        """Show ``name`` ("1x1", "1x2" or "2x2") viewports and save it; "mpr": the active series as axial,
        coronal and sagittal planes (:func:`medviewer.gui.mpr_view.show_mpr`, not saved)."""
        from medviewer.gui.mpr_view import hide_mpr, show_mpr

        if name == "mpr":
            show_mpr(self)
            return
        hide_mpr(self)
        shown = self.workspace.set_layout(name)  # moves the active viewport into the grid when hidden
        for i, vp in enumerate(self.viewports):
            vp.setVisible(i in shown)
        self.settings.layout = self.workspace.layout
        act = self.actions.get({"1x2": Command.LAYOUT_1X2, "2x2": Command.LAYOUT_2X2}.get(self.workspace.layout,
                                                                                         Command.LAYOUT_1X1))
        if act is not None:
            act.setChecked(True)
        if not self.active.isVisibleTo(self):
            self.set_active(self.viewports[0])

    def layout_name(self) -> str:
        return self.workspace.layout

    def set_active(self, vp: Viewport) -> None:
        """Make ``vp`` the active viewport (keys, presets, the AI panel follow it)."""
        if vp is self.active and vp.active:
            return
        if not self.workspace.set_active(self.viewports.index(vp)):  # already the workspace's: show it
            self._show_active(vp)

    def _on_active_index(self, index: int) -> None:
        """The workspace's active viewport changed (here or by the model): the widgets follow."""
        vp = self.viewports[index]
        if vp is not self.active or not vp.active:
            self._show_active(vp)

    def _show_active(self, vp: Viewport) -> None:
        for v in self.viewports:
            v.active = v is vp
            v.update()
        self.active = vp
        vp.setFocus()
        self.active_changed()

    def active_changed(self) -> None:
        """The active viewport or its series changed: presets menu, AI panel, status line, title follow."""
        update_presets_menu(self.menu_bar, self.workspace)
        self.ai_view.active_changed()
        inst = self.active.current_instance()
        if inst is None:
            self.setWindowTitle("MedViewer")
            return
        from medviewer.workstation.text_overlays import format_person_name

        bits = [format_person_name(getattr(inst, "patient_name", "")), str(getattr(inst, "study_description", "") or ""),
                Path(str(inst.path)).name]
        self.setWindowTitle("MedViewer — " + " — ".join(b for b in bits if b))

    def next_viewport(self) -> None:
        visible = [v for v in self.viewports if v.isVisibleTo(self)]
        if visible:
            i = visible.index(self.active) if self.active in visible else -1
            self.set_active(visible[(i + 1) % len(visible)])

    def set_tool(self, tool: Shape | None) -> None:
        for vp in self.viewports:
            vp.set_tool(tool)
        self.set_status("Tool: " + ("window/level" if tool is None else tool.value))

    def toggle_cine(self) -> None:
        playing = self.active.toggle_cine()
        self.set_status(f"Cine {'playing at ' + str(self.active.cine_fps) + ' fps' if playing else 'stopped'}")

    def cine_fps(self, delta: int) -> None:
        """Change the active viewport's cine speed by ``delta`` frames per second."""
        self.active.set_cine_fps(self.active.cine_fps + delta)
        self.set_status(f"Cine {self.active.cine_fps} fps")

    def toggle_overlays(self) -> None:
        on = not self.active.show_overlays
        for vp in self.viewports:
            vp.show_overlays = on
            vp.update()

    def presets(self) -> list[Any]:
        """Window presets of the active image's modality (:meth:`Workspace.presets`)."""
        return self.workspace.presets()

    def apply_preset(self, n: int) -> None:
        ps = self.presets()
        if 0 <= n < len(ps) and self.active.state.width_w is not None:
            self.active.apply_preset(ps[n])
            self.set_status(f"Preset {n + 1}: {ps[n].name} (W {ps[n].width:g} L {ps[n].center:g})")

    def _on_frame_changed(self, vp: Viewport) -> None:
        if vp is self.active:
            self.ai_view.sync()
            if vp.has_image():
                self.ai_view.maybe_auto_run()

    def show_tags(self) -> None:
        inst = self.active.current_instance()
        if inst is None:
            self.set_status("No image")
            return
        self._tags_dialog = TagBrowser(getattr(inst, "dataset", None), Path(str(inst.path)).name, self)
        self._tags_dialog.show()

    def export_dialog(self) -> None:
        if self.active.source is None:
            self.set_status("Nothing to export")
            return
        dlg = ExportDialog(self)
        if dlg.exec() != ExportDialog.Accepted:
            return
        path, _ = QFileDialog.getSaveFileName(self, "Export PNG", str(Path(self.settings.last_folder) / "viewport.png"),
                                              "PNG (*.png)")
        if path:
            self.export_png(path, dlg.overlays.isChecked(), dlg.patient.isChecked())

    def export_png(self, path: str, overlays: bool = True, patient: bool = False) -> bool:
        """Save the active viewport as PNG; returns success (errors reported)."""
        img = self.active.render_image(overlays=overlays, patient=patient and overlays)
        if not img.save(str(path), "PNG"):
            self.error("Export failed", f"{path}: could not write the PNG (check the folder and permissions)")
            return False
        self.set_status(f"Exported {path}")
        inst = self.active.current_instance()
        self.audit.exported("png", [getattr(inst, "sop_instance_uid", "")], deidentified=False,
                            detail={"overlays": bool(overlays), "patient_text": bool(patient and overlays)})
        return True

    def export_results_dialog(self) -> None:
        """AI > Export results as DICOM…: the active image's result as SR + SC into a folder (optionally
        de-identified), written off the GUI thread."""
        self._show_results_dialog(False)

    def save_results_to_pacs(self) -> None:
        """AI > Save results to PACS…: the active image's result as SR + SC stored on a saved node (optionally
        de-identified), off the GUI thread, cancellable; a failure is one dialog."""
        self._show_results_dialog(True)

    def _show_results_dialog(self, to_pacs: bool) -> None:
        from medviewer.gui.results_dialog import ResultsDialog

        if self.prediction_for(self.active) is None:
            self.set_status("No AI result for this image: run the model first")
            return
        self._results_dialog = ResultsDialog(self, to_pacs)
        self._results_dialog.show()

    # ==== misc ========================================================================================
    def show_shortcuts(self) -> None:
        self._shortcuts_dialog = ShortcutsDialog(self)
        self._shortcuts_dialog.show()

    def show_about(self) -> None:
        from medviewer import __version__

        QMessageBox.about(self, "About MedViewer",
                          f"<b>MedViewer {__version__}</b><br>DICOM reading workstation with explainable AI.<br>"
                          "Research software — not a medical device; AI results are decision support only.")

    def dragEnterEvent(self, e: Any) -> None:  # noqa: N802
        if e.mimeData().hasUrls():
            e.acceptProposedAction()

    def dropEvent(self, e: Any) -> None:  # noqa: N802
        self.open_paths([u.toLocalFile() for u in e.mimeData().urls() if u.isLocalFile()])

    def sizeHint(self) -> QSize:  # noqa: N802
        return QSize(1600, 1000)

    def shutdown(self, timeout_ms: int = 3000) -> None:
        """Cancel background work and wait for it (window closing)."""
        for t in list(self._tasks):
            t.cancel()
        self.workspace.ai.shutdown(timeout_ms / 1000)
        self.io_pool.waitForDone(timeout_ms)
        self.workspace.audit.shutdown()
        self.settings.sync()

    def closeEvent(self, e: Any) -> None:  # noqa: N802
        from medviewer.gui.presentation import ask_to_save_unsaved

        if not ask_to_save_unsaved(self):  # unsaved measurements: save, discard, or stay open
            e.ignore()
            return
        for vp in self.viewports:
            vp.stop_cine()
        self.shutdown()
        super().closeEvent(e)
