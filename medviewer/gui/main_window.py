"""The reading workstation's main window: browser, viewports, AI panel, menus and background work.

The window wires widgets to the Qt-free APIs: :func:`medviewer.io.scan` (in a worker),
:class:`~medviewer.gui.series.FrameSource` + :class:`~medviewer.gui.workers.PrefetchTask` (decoding),
:func:`medviewer.imaging.display_image` and :class:`medviewer.inference.Session` (inference in a
worker). Nothing long runs on the GUI thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
from PySide6.QtCore import QSize, Qt, QThreadPool, Signal
from PySide6.QtGui import QAction, QActionGroup, QKeySequence
from PySide6.QtWidgets import (
    QDockWidget,
    QFileDialog,
    QGridLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QProgressBar,
    QWidget,
)

from medviewer.export.overlay import overlay_label
from medviewer.gui.ai_panel import AiPanel, scrollable
from medviewer.gui.browser import SeriesBrowser, series_key
from medviewer.gui.dialogs import ExportDialog, ModelCardDialog, ShortcutsDialog, TagBrowser, show_error
from medviewer.gui.keybindings import KEYS, PRESET_KEYS, Command
from medviewer.gui.measure import Shape
from medviewer.gui.series import FrameSource
from medviewer.gui.settings import LAYOUTS, Settings
from medviewer.gui.viewport import AiOverlay, Viewport
from medviewer.gui.workers import FnTask, PrefetchTask, Task
from medviewer.workstation.intended_use import (
    IntendedUsePolicy,
    findings_withheld,
    should_auto_run,
)
from medviewer.workstation.intended_use import show_anyway as override_intended_use

__all__ = ["MainWindow"]

#: modalities on which "Run on open" runs the model by itself (projection radiographs and plain
#: images); on others (CT, MR, ...) a reader can still press Run, with a note in the panel

_TOOLS = {Command.TOOL_WINDOW: None, Command.TOOL_DISTANCE: Shape.DISTANCE, Command.TOOL_RECT: Shape.RECT,
          Command.TOOL_ELLIPSE: Shape.ELLIPSE}


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
    """

    predictionShown = Signal(object)  # Prediction, after the panel updated
    firstImageShown = Signal()
    busyChanged = Signal(bool)

    def __init__(self, settings: Settings | None = None, provider: str | None = None,
                 interactive: bool = True) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.provider = provider or self.settings.provider
        self.interactive = interactive
        self.setWindowTitle("MedViewer")
        self.resize(1600, 1000)
        self.setAcceptDrops(True)
        self.io_pool = QThreadPool(self)
        self.io_pool.setMaxThreadCount(2)
        self.ai_pool = QThreadPool(self)
        self.ai_pool.setMaxThreadCount(1)
        self._tasks: set[Task] = set()
        self.sources: dict[str, FrameSource] = {}
        self.prefetchers: dict[str, PrefetchTask] = {}
        self.predictions: dict[tuple[str, int], tuple[Any, str]] = {}
        self.packages: list[Any] = []
        self.package: Any = None
        self._sessions: dict[tuple[str, str], Any] = {}
        self._session_lock = threading.Lock()
        self._infer_task: Task | None = None
        self._infer_uid: tuple[str, int] | None = None
        self._first_image_pending = False
        self._auto_uids: set[tuple[str, int]] = set()
        self._reported: set[str] = set()
        self._panel_state: tuple = ()
        self._pending_thumbs: list[str] = []
        self.force_auto_run = False  # --demo: run on open for this session without changing the setting
        self.models_ready = False
        self.errors: list[str] = []
        self.last_session_info: tuple[str, str | None] = ("", None)  # provider, fallback/notice
        self.t_open: float | None = None
        self.t_first_image: float | None = None

        self._build_viewports()
        self._build_docks()
        self._build_status()
        self._build_menus()
        self._restore_settings()
        self.set_layout(self.settings.layout)
        self.set_active(self.viewports[0])
        self.load_models()

    # ==== construction =================================================================================
    def _build_viewports(self) -> None:
        self.viewports: list[Viewport] = []
        central = QWidget()
        central.setStyleSheet("background: #000;")
        self.grid = QGridLayout(central)
        self.grid.setContentsMargins(1, 1, 1, 1)
        self.grid.setSpacing(2)
        for i in range(4):
            vp = Viewport()
            vp.activated.connect(self.set_active)
            vp.frameChanged.connect(lambda k, v=vp: self._on_frame_changed(v, k))
            vp.windowChanged.connect(lambda c, w, v=vp: self._on_window_changed(v))
            vp.cursorInfo.connect(self._on_cursor)
            vp.wantFrame.connect(lambda k, v=vp: self._want_frame(v, k))
            vp.seriesDropped.connect(lambda v, key: self.load_series(key, v))
            vp.filesDropped.connect(self.open_paths)
            self.viewports.append(vp)
            self.grid.addWidget(vp, i // 2, i % 2)
        self.setCentralWidget(central)
        self.active = self.viewports[0]

    def _build_docks(self) -> None:
        self.browser = SeriesBrowser()
        self.browser.seriesActivated.connect(lambda key: self.load_series(key, self.active))
        d = QDockWidget("Studies", self)
        d.setObjectName("studies")
        d.setWidget(self.browser)
        d.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetClosable)
        self.addDockWidget(Qt.LeftDockWidgetArea, d)
        self.browser_dock = d
        self.panel = AiPanel()
        self.panel.runRequested.connect(self.run_ai)
        self.panel.showAnywayRequested.connect(self.show_anyway)
        self.panel.cancelRequested.connect(self.cancel_ai)
        self.panel.modelChanged.connect(self._on_model_selected)
        self.panel.cardRequested.connect(self.show_model_card)
        self.panel.heatmapChanged.connect(self._on_heatmap_changed)
        self.panel.regionClicked.connect(self.zoom_to_region)
        self.panel.autoRunChanged.connect(self._on_auto_run)
        d = QDockWidget("AI", self)
        d.setObjectName("ai")
        d.setWidget(scrollable(self.panel))
        d.setFeatures(QDockWidget.DockWidgetMovable | QDockWidget.DockWidgetClosable)
        self.addDockWidget(Qt.RightDockWidgetArea, d)
        self.ai_dock = d
        self.resizeDocks([self.browser_dock, self.ai_dock], [230, 340], Qt.Horizontal)

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
        sb.addPermanentWidget(self.readout)
        sb.addPermanentWidget(self.progress)
        sb.addPermanentWidget(self.provider_label)

    def _build_menus(self) -> None:
        mb = self.menuBar()
        self.menus: dict[str, QMenu] = {name: mb.addMenu(f"&{name}") for name in ("File", "View", "Tools", "AI", "Help")}
        self.actions: dict[Command, QAction] = {}
        handlers: dict[Command, Callable[[], Any]] = {
            Command.OPEN_FILES: self.open_files_dialog,
            Command.OPEN_FOLDER: self.open_folder_dialog,
            Command.EXPORT_PNG: self.export_dialog,
            Command.QUIT: self.close,
            Command.NEXT_IMAGE: lambda: self.active.step(1),
            Command.PREV_IMAGE: lambda: self.active.step(-1),
            Command.NEXT_IMAGE_ALT: lambda: self.active.step(1),
            Command.PREV_IMAGE_ALT: lambda: self.active.step(-1),
            Command.PAGE_DOWN: lambda: self.active.step(10),
            Command.PAGE_UP: lambda: self.active.step(-10),
            Command.FIRST_IMAGE: lambda: self.active.set_frame(0),
            Command.LAST_IMAGE: lambda: self.active.set_frame(self.active.state.n_frames - 1),
            Command.DEFAULT_WINDOW: lambda: self.active.default_window(),
            Command.INVERT: lambda: self.active.toggle_invert(),
            Command.RESET: lambda: self.active.reset(),
            Command.FIT: lambda: self.active.fit(),
            Command.ACTUAL_SIZE: lambda: self.active.actual_size(),
            Command.ROTATE_CW: lambda: self.active.rotate(90),
            Command.ROTATE_CCW: lambda: self.active.rotate(-90),
            Command.FLIP_H: lambda: self.active.flip(True),
            Command.FLIP_V: lambda: self.active.flip(False),
            Command.CINE: self.toggle_cine,
            Command.CINE_FASTER: lambda: self._cine_fps(+5),
            Command.CINE_SLOWER: lambda: self._cine_fps(-5),
            Command.TOGGLE_OVERLAYS: self.toggle_overlays,
            Command.LAYOUT_1X1: lambda: self.set_layout("1x1"),
            Command.LAYOUT_1X2: lambda: self.set_layout("1x2"),
            Command.LAYOUT_2X2: lambda: self.set_layout("2x2"),
            Command.NEXT_VIEWPORT: self.next_viewport,
            Command.FULLSCREEN: lambda: self.showNormal() if self.isFullScreen() else self.showFullScreen(),
            Command.DELETE_MEASUREMENTS: lambda: self.active.delete_measurements(),
            Command.TAGS: self.show_tags,
            Command.RUN_AI: self.run_ai,
            Command.CANCEL: self.cancel,
            Command.HEATMAP: lambda: self.panel.set_heatmap_on(not self.panel.heatmap_on()),
            Command.NEXT_CAM_LABEL: self.panel.next_cam_label,
            Command.MODEL_CARD: self.show_model_card,
            Command.SHORTCUTS: self.show_shortcuts,
        }
        tool_group = QActionGroup(self)
        layout_group = QActionGroup(self)
        file_menu = self.menus["File"]
        for b in KEYS:
            menu = self.menus[b.menu]
            act = QAction(b.text, self)
            act.setShortcut(QKeySequence(b.key))
            act.setShortcutContext(Qt.WindowShortcut)
            if b.command in _TOOLS:
                act.setCheckable(True)
                tool_group.addAction(act)
                act.triggered.connect(lambda _=False, t=_TOOLS[b.command]: self.set_tool(t))
            else:
                if b.command.name.startswith("LAYOUT_"):
                    act.setCheckable(True)
                    layout_group.addAction(act)
                fn = handlers[b.command]
                act.triggered.connect(lambda _=False, f=fn: f())
            if b.command in (Command.NEXT_IMAGE_ALT, Command.PREV_IMAGE_ALT):
                self.addAction(act)  # active but not listed twice in the menu
            else:
                menu.addAction(act)
            self.actions[b.command] = act
            if b.command == Command.OPEN_FOLDER:
                self.recent_menu = file_menu.addMenu("Open recent")
                file_menu.addAction("Query / retrieve from PACS…").triggered.connect(self.show_pacs_dialog)
            if b.command in (Command.EXPORT_PNG, Command.LAST_IMAGE, Command.FLIP_V, Command.FULLSCREEN):
                menu.addSeparator()
        self.actions[Command.TOOL_WINDOW].setChecked(True)
        # presets: number keys, menu rebuilt for the active image's modality
        self.presets_menu = self.menus["View"].addMenu("Window presets")
        self.preset_actions: list[QAction] = []
        for i, key in enumerate(PRESET_KEYS):
            act = QAction(f"Preset {i + 1}", self)
            act.setShortcut(QKeySequence(key))
            act.triggered.connect(lambda _=False, n=i: self.apply_preset(n))
            self.addAction(act)
            self.preset_actions.append(act)
        # AI extras
        ai = self.menus["AI"]
        ai.addSeparator()
        self.auto_run_action = QAction("Run automatically on open", self)
        self.auto_run_action.setCheckable(True)
        self.auto_run_action.toggled.connect(self.panel.auto_run.setChecked)
        ai.addAction(self.auto_run_action)
        prov = ai.addMenu("Execution provider")
        group = QActionGroup(self)
        self.provider_actions: dict[str, QAction] = {}
        for name, text in (("auto", "Automatic (CUDA if available, else CPU)"), ("cuda", "CUDA (GPU)"), ("cpu", "CPU")):
            act = QAction(text, self)
            act.setCheckable(True)
            act.setChecked(name == self.provider)
            act.triggered.connect(lambda _=False, n=name: self.set_provider(n))
            group.addAction(act)
            prov.addAction(act)
            self.provider_actions[name] = act
        ai.addSeparator()
        act = QAction("Import model…", self)
        act.triggered.connect(self.import_model_dialog)
        ai.addAction(act)
        act = QAction("Rescan models", self)
        act.triggered.connect(self.load_models)
        ai.addAction(act)
        about = QAction("About MedViewer", self)
        about.triggered.connect(self.show_about)
        self.menus["Help"].addAction(about)
        self._update_recent_menu()

    def _restore_settings(self) -> None:
        s = self.settings
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
        """True when no background task runs and the model list has been loaded."""
        return not self._tasks and self.models_ready

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
        self.status_msg.setText(text)

    # ==== opening =====================================================================================
    def open_files_dialog(self) -> None:
        files, _ = QFileDialog.getOpenFileNames(self, "Open images", self.settings.last_folder,
                                                "Images (*.dcm *.DCM *.dicom *.png *.jpg *.jpeg *);;All files (*)")
        if files:
            self.open_paths(files)

    def show_pacs_dialog(self) -> None:
        """The PACS dialog (query, retrieve off the GUI thread); a retrieved study opens in the browser."""
        from medviewer.gui.pacs_dialog import PacsDialog

        dlg = PacsDialog(self)
        dlg.studyRetrieved.connect(lambda folder: self.open_paths([str(folder)]))
        self._pacs_dialog = dlg
        dlg.show()

    def open_folder_dialog(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Open folder", self.settings.last_folder)
        if d:
            self.open_paths([d])

    def open_paths(self, paths: list[str]) -> None:
        """Scan files/folders in a worker, add their studies and show the first new series."""
        paths = [str(p) for p in paths if str(p)]
        if not paths:
            return
        first = Path(paths[0])
        self.settings.last_folder = str(first if first.is_dir() else first.parent)
        self.set_status(f"Reading {', '.join(Path(p).name for p in paths[:3])}{'…' if len(paths) > 3 else ''}")
        self.progress.setRange(0, 0)
        self.progress.setVisible(True)
        self.t_open = time.perf_counter()
        self.t_first_image = None

        def work(task: Task) -> Any:
            from medviewer.io import scan

            def progress(*a: Any) -> None:
                task.check()
                if len(a) >= 2 and isinstance(a[0], int) and isinstance(a[1], int):
                    task.emit("progress", a[0], a[1])

            return scan(paths, progress=progress)

        task = FnTask(work, "scan")
        task.signals.progress.connect(self._on_scan_progress)
        task.signals.result.connect(lambda res, ps=paths: self._on_scanned(res, ps))
        task.signals.failed.connect(self._on_scan_failed)
        self.start(task)

    def _on_scan_progress(self, done: int, total: int) -> None:
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"scan {done}/{total}")

    def _on_scan_failed(self, reason: str) -> None:
        self.progress.setVisible(False)
        self.error("Could not open", reason)

    def _on_scanned(self, result: Any, paths: list[str]) -> None:
        self.progress.setVisible(False)
        studies = list(getattr(result, "studies", []) or [])
        skipped = list(getattr(result, "skipped", []) or [])
        if not studies:
            reason = f"{skipped[0].path}: {skipped[0].reason}" if skipped else "no DICOM, PNG or JPEG image found"
            self.error("Could not open", reason)
            return
        for p in paths:
            self.settings.add_recent(p)
        self._update_recent_menu()
        new_keys = []
        for st in studies:
            for se in st.series:
                key = series_key(se)
                if key not in self.sources:
                    self.sources[key] = FrameSource(list(se.instances), se)
                    new_keys.append(key)
        self.browser.add_studies(studies)
        self._pending_thumbs += new_keys  # started once the first image is on screen
        msg = f"Opened {sum(len(s.series) for s in studies)} series"
        if skipped:
            msg += f"; skipped {len(skipped)} file(s), e.g. {Path(str(skipped[0].path)).name}: {skipped[0].reason}"
        self.set_status(msg)
        keys = new_keys or [series_key(studies[0].series[0])]
        # first series into the active viewport, further ones into the other visible empty viewports
        visible = [v for v in self.viewports if v.isVisibleTo(self)]
        targets = [self.active] + [v for v in visible if v is not self.active and v.source is None]
        for vp, key in zip(targets, keys, strict=False):
            self.load_series(key, vp)
        self.browser.select(keys[0])
        if not self._first_image_pending:
            self._start_pending_thumbnails()

    def _start_pending_thumbnails(self) -> None:
        keys, self._pending_thumbs = self._pending_thumbs, []
        for key in keys:
            self._start_thumbnail(key)

    def _update_recent_menu(self) -> None:
        self.recent_menu.clear()
        for p in self.settings.recent:
            act = self.recent_menu.addAction(p)
            act.triggered.connect(lambda _=False, path=p: self.open_paths([path]))
        if not self.settings.recent:
            self.recent_menu.addAction("(none)").setEnabled(False)
        else:
            self.recent_menu.addSeparator()
            clear = self.recent_menu.addAction("Clear list")
            clear.triggered.connect(lambda: (self.settings.clear_recent(), self._update_recent_menu()))

    def _start_thumbnail(self, key: str) -> None:
        src = self.sources[key]

        def work(task: Task) -> Any:
            k = len(src) // 2
            stored = src.decode(k)
            pipe = src.pipeline(k)
            img = pipe.render(stored, pipe.default_window(stored))
            h, w = img.shape[:2]
            s = 72 / max(h, w)
            return key, cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)

        task = FnTask(work, "thumbnail")
        task.signals.result.connect(lambda r: self.browser.set_thumbnail(*r))
        self.start(task)

    def load_series(self, key: str, vp: Viewport | None = None) -> None:
        """Show series ``key`` in ``vp`` (default: the active viewport) and prefetch its frames."""
        src = self.sources.get(key)
        if src is None:
            return
        vp = vp or self.active
        self.set_active(vp)
        start = 0  # the first image in display order, as PACS viewers do
        self._first_image_pending = True
        vp.set_source(src, key, frame=start)
        pf = self.prefetchers.get(key)
        if pf is None or pf.done.is_set():
            pf = PrefetchTask(src, start)
            pf.signals.item.connect(lambda k, key=key: self._on_frame_decoded(key, k))
            pf.signals.progress.connect(lambda d, n, key=key: self._on_prefetch_progress(key, d, n))
            pf.signals.frameFailed.connect(lambda k, reason, key=key: self._on_frame_failed(key, k, reason))
            self.prefetchers[key] = pf
            self.start(pf)
        else:
            pf.want(start)
        if src.cached(vp.state.frame) is not None:
            vp.on_frame_decoded(vp.state.frame)
            self._after_image_shown(vp)
        self._update_presets_menu()
        self._sync_panel()
        self._update_title()

    def _update_title(self) -> None:
        inst = self.active.current_instance()
        if inst is None:
            self.setWindowTitle("MedViewer")
            return
        from medviewer.gui.overlays import format_person_name

        bits = [format_person_name(getattr(inst, "patient_name", "")), str(getattr(inst, "study_description", "") or ""),
                Path(str(inst.path)).name]
        self.setWindowTitle("MedViewer — " + " — ".join(b for b in bits if b))

    def _want_frame(self, vp: Viewport, k: int) -> None:
        pf = self.prefetchers.get(vp.source_key)
        if pf is not None and not pf.done.is_set():
            pf.want(k)
        elif vp.source is not None and pf is not None and k in pf.errors:
            vp.message = f"Image {k + 1} could not be decoded: {pf.errors[k]}"
            vp.update()

    def _on_frame_decoded(self, key: str, k: int) -> None:
        for vp in self.viewports:
            if vp.source_key == key and vp.state.frame == k and not vp.has_image():
                vp.on_frame_decoded(k)
                self._after_image_shown(vp)

    def _on_frame_failed(self, key: str, k: int, reason: str) -> None:
        shown = [vp for vp in self.viewports if vp.source_key == key and vp.state.frame == k]
        for vp in shown:
            vp.message = f"Image {k + 1} could not be decoded"
            vp.update()
        if shown and key not in self._reported:
            self._reported.add(key)
            self.error("Could not decode image", reason)
        else:
            self.set_status(f"Image {k + 1}: {reason}")

    def _after_image_shown(self, vp: Viewport) -> None:
        if self._first_image_pending and vp.has_image():
            self._first_image_pending = False
            if self.t_open is not None and self.t_first_image is None:
                self.t_first_image = time.perf_counter() - self.t_open
            self.firstImageShown.emit()
            self._start_pending_thumbnails()
        if vp is self.active:
            self._sync_panel()
        self._maybe_auto_run()

    def _on_prefetch_progress(self, key: str, done: int, total: int) -> None:
        if key != self.active.source_key:
            return
        self.progress.setVisible(done < total)
        self.progress.setRange(0, total)
        self.progress.setValue(done)
        self.progress.setFormat(f"loaded {done}/{total}")

    # ==== viewports ===================================================================================
    def set_layout(self, name: str) -> None:
        rows, cols = LAYOUTS.get(name, (1, 1))
        for i, vp in enumerate(self.viewports):
            r, c = i // 2, i % 2
            vp.setVisible(r < rows and c < cols)
        self.settings.layout = name if name in LAYOUTS else "1x1"
        act = self.actions.get({"1x1": Command.LAYOUT_1X1, "1x2": Command.LAYOUT_1X2,
                                "2x2": Command.LAYOUT_2X2}.get(name, Command.LAYOUT_1X1))
        if act is not None:
            act.setChecked(True)
        if not self.active.isVisibleTo(self):
            self.set_active(self.viewports[0])

    def layout_name(self) -> str:
        return self.settings.layout

    def set_active(self, vp: Viewport) -> None:
        if vp is self.active and vp.active:
            return
        for v in self.viewports:
            v.active = v is vp
            v.update()
        self.active = vp
        vp.setFocus()
        self._update_presets_menu()
        self._sync_panel()
        self._update_title()

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

    def _cine_fps(self, delta: int) -> None:
        self.active.set_cine_fps(self.active.cine_fps + delta)
        self.set_status(f"Cine {self.active.cine_fps} fps")

    def toggle_overlays(self) -> None:
        on = not self.active.show_overlays
        for vp in self.viewports:
            vp.show_overlays = on
            vp.update()

    def presets(self) -> list[Any]:
        """Window presets of the active image's modality."""
        inst = self.active.current_instance()
        if inst is None:
            return []
        from medviewer.imaging import presets_for

        return list(presets_for(str(getattr(inst, "modality", "") or "")))

    def apply_preset(self, n: int) -> None:
        ps = self.presets()
        if 0 <= n < len(ps) and self.active.state.width_w is not None:
            self.active.apply_preset(ps[n])
            self.set_status(f"Preset {n + 1}: {ps[n].name} (W {ps[n].width:g} L {ps[n].center:g})")

    def _update_presets_menu(self) -> None:
        if not hasattr(self, "presets_menu"):
            return
        self.presets_menu.clear()
        ps = self.presets()
        for i, act in enumerate(self.preset_actions):
            if i < len(ps):
                act.setText(f"{ps[i].name}  (W {ps[i].width:g} / L {ps[i].center:g})")
                self.presets_menu.addAction(act)
        if not ps:
            self.presets_menu.addAction("(no presets for this image)").setEnabled(False)

    def _on_frame_changed(self, vp: Viewport, k: int) -> None:
        if vp is self.active:
            self._sync_panel()
            if vp.has_image():
                self._maybe_auto_run()

    def _on_window_changed(self, vp: Viewport) -> None:
        pass

    def _on_cursor(self, text: str) -> None:
        self.readout.setText(text)

    def show_tags(self) -> None:
        inst = self.active.current_instance()
        if inst is None:
            self.set_status("No image")
            return
        dlg = TagBrowser(getattr(inst, "dataset", None), Path(str(inst.path)).name, self)
        dlg.show()
        self._tags_dialog = dlg

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
        return True

    # ==== models & inference =========================================================================
    def load_models(self, select: str | None = None) -> None:
        """Find model packages in a worker; ``select`` = name or path to select (e.g. ``--model``)."""
        self.models_ready = False
        self._models_gen = getattr(self, "_models_gen", 0) + 1
        gen = self._models_gen
        wanted = select

        def work(task: Task) -> Any:
            from medviewer.inference import find_models, resolve_model

            pkgs = list(find_models())
            chosen = None
            err = None
            if wanted:
                try:
                    chosen = resolve_model(wanted)
                except Exception as exc:  # reported, the app goes on with the others
                    err = str(exc)
                if chosen is not None and all(str(p.path) != str(chosen.path) for p in pkgs):
                    pkgs.insert(0, chosen)
            return pkgs, chosen, err

        task = FnTask(work, "models")
        # only the latest scan counts (e.g. start-up scan and a --model scan racing)
        task.signals.result.connect(lambda r: self._on_models(r) if gen == self._models_gen else None)
        task.signals.failed.connect(lambda r: self._on_models(([], None, r)) if gen == self._models_gen else None)
        self.start(task)

    def _on_models(self, res: tuple) -> None:
        pkgs, chosen, err = res
        self.packages = pkgs
        current = str(chosen.path) if chosen is not None else ""
        if not current:
            saved = self.settings.model
            match = [p for p in pkgs if str(p.path) == saved or p.card.name == saved]
            from medviewer.inference import DEFAULT_MODEL_NAME

            default = [p for p in pkgs if p.card.name == DEFAULT_MODEL_NAME]
            pick = (match or default or pkgs or [None])[0]
            current = str(pick.path) if pick is not None else ""
        self.panel.set_models(pkgs, current)
        self._select_package(current)
        self.models_ready = True
        if err:
            self.error("Model not loaded", err)
        self._maybe_auto_run()

    def _on_model_selected(self, path: str) -> None:
        self._select_package(path)
        if path:
            self.settings.model = path

    def _select_package(self, path: str) -> None:
        self.package = next((p for p in self.packages if str(p.path) == path), None)
        self.panel.set_card(self.package.card if self.package is not None else None)
        self._sync_panel()

    def set_provider(self, name: str) -> None:
        self.provider = name
        self.settings.provider = name
        self.provider_label.setText(f"Provider: {name}")
        if name in self.provider_actions:
            self.provider_actions[name].setChecked(True)

    def _on_auto_run(self, on: bool) -> None:
        self.settings.auto_run = on
        if self.auto_run_action.isChecked() != on:
            self.auto_run_action.setChecked(on)
        if on:
            self._maybe_auto_run()

    def _maybe_auto_run(self) -> None:
        """Run on open: the first visible viewport (the active one first) whose image has no result yet and
        to which the model applies by its header (:func:`~medviewer.workstation.intended_use.should_auto_run`,
        the card's intended use); one inference at a time, the next starts when it finishes."""
        if (not (self.panel.auto_run.isChecked() or self.force_auto_run) or self.package is None
                or self._infer_task is not None):
            return
        visible = [self.active] + [v for v in self.viewports if v is not self.active and v.isVisibleTo(self)]
        for vp in visible:
            uid = vp.frame_uid()
            if uid is None or not vp.has_image() or uid in self.predictions or uid in self._auto_uids:
                continue
            self._auto_uids.add(uid)
            ok, reason = should_auto_run(self.package.card, vp.current_instance())
            if not ok:
                self.set_status(f"Run on open skipped: {reason} (press Run AI to run anyway)")
                continue
            self.run_ai(vp)
            return

    def _session(self, pkg: Any, provider: str) -> Any:
        """The cached Session for (package, provider) — created in the worker thread."""
        from medviewer.inference import Session

        key = (str(pkg.onnx_path), provider)
        with self._session_lock:
            s = self._sessions.get(key)
        if s is None:
            s = Session(pkg, provider)
            with self._session_lock:
                self._sessions[key] = s
        return s

    def run_ai(self, vp: Viewport | None = None) -> None:
        """Run the selected model on a viewport's image (default: the active one) in a worker thread; the
        intended-use policy of the model card is applied to the result (as ``medviewer infer`` does)."""
        vp = vp if isinstance(vp, Viewport) else self.active
        uid = vp.frame_uid()
        if self.package is None:
            self.set_status("No model available (AI > Import model…)")
            return
        if uid is None or vp.source is None:
            self.set_status("Open an image first")
            return
        if self._infer_task is not None:
            self._infer_task.cancel()
        src, k = vp.source, uid[1]
        inst, frame = src.frames[k]
        spacing = vp.spacing()
        pkg, provider = self.package, self.provider

        def work(task: Task) -> Any:
            from medviewer.imaging import display_image

            session = self._session(pkg, provider)
            task.check()
            img = display_image(inst, frame=frame, stored=src.decode(k))  # the viewer's decoded frame
            task.check()
            pred = session.predict([img], [spacing])[0]
            IntendedUsePolicy(pkg.card).apply(inst, pred, img)
            note = (session.fallback_warning, True) if session.fallback_warning else (session.notice, False)
            return uid, pred, session.provider, note, pkg

        task = FnTask(work, "inference")
        task.signals.result.connect(lambda r, t=task: None if t.cancelled else self._on_prediction(r))
        task.signals.failed.connect(lambda r, t=task: None if t.cancelled else self._on_inference_failed(r))
        task.signals.finished.connect(lambda t=task: self._on_inference_finished(t))
        self._infer_task = task
        self._infer_uid = uid
        self.panel.set_busy(True, f"Running {pkg.card.name} on image {uid[1] + 1}…")
        self.start(task, self.ai_pool)

    def cancel_ai(self) -> None:
        if self._infer_task is not None:
            self._infer_task.cancel()
            self._infer_task = None
            self.panel.set_busy(False, "Inference cancelled")
            self.set_status("Inference cancelled")

    def cancel(self) -> None:
        """Esc: cancel the running inference, else the measurement being drawn."""
        if self._infer_task is not None:
            self.cancel_ai()
        else:
            self.active._drawing = None
            self.active.update()

    def _on_inference_finished(self, task: Task) -> None:
        if self._infer_task is task:
            self._infer_task = None
            self.panel.set_busy(False)
            self.panel.prediction = None  # re-render the active image's result (its status line too)
            self._sync_panel()
            self._maybe_auto_run()  # the next visible image waiting for run on open

    def _on_inference_failed(self, reason: str) -> None:
        self.panel.set_busy(False, "Inference failed")
        self.error("Inference failed", reason)

    def _on_prediction(self, res: tuple) -> None:
        uid, pred, provider, warning, pkg = res
        self.predictions[uid] = (pred, provider, warning, pkg)
        self.last_session_info = (provider, warning[0])
        short = provider.removesuffix("ExecutionProvider")
        self.provider_label.setText(f"AI: {short} · {pred.seconds * 1000:.0f} ms")
        scope = (pred.applicability or {}).get("status")
        if scope == "out_of_scope":
            self.set_status(f"{pkg.card.name}: outside intended use: " + "; ".join(pred.applicability["reasons"]))
        else:
            self.set_status(f"{pkg.card.name}: " + (f"flagged {', '.join(pred.flagged)}" if pred.flagged
                                                     else "no finding at the operating point"))
        self._sync_panel()
        self.predictionShown.emit(pred)

    def _sync_panel(self) -> None:
        """Show the active image's prediction (if any) in the panel and its overlay in the viewport."""
        if not hasattr(self, "panel"):
            return
        vp = self.active
        uid = vp.frame_uid()
        entry = self.predictions.get(uid) if uid is not None else None
        if entry is None:
            state = ("none", uid, id(self.package), self.models_ready)
            if self._infer_task is None and self._panel_state != state:
                self._panel_state = state
                if self.package is None:
                    self.panel.clear_result(self.panel.status.text() if not self.packages else "No model selected")
                    if not self.packages and self.models_ready:
                        self.panel.set_models([], None)
                else:
                    self.panel.clear_result("No result for this image — Run AI (Ctrl+R)" if uid else "No image")
                self.panel.set_warning(None)
            for v in self.viewports:
                if v.ai is not None and v.ai.frame_uid != v.frame_uid():
                    v.set_ai(None)
            return
        pred, provider, warning, pkg = entry
        self._panel_state = ("pred", uid)
        if self.panel.prediction is not pred:
            self.panel.show_prediction(pred, pkg.card, provider, f"image {uid[1] + 1}")
            self.panel.set_warning(*warning)
        self._on_heatmap_changed()

    def _on_heatmap_changed(self) -> None:
        s = self.settings
        s.heatmap_opacity = self.panel.opacity_value()
        s.colormap = self.panel.colormap()
        s.heatmap_on = self.panel.heatmap_on()
        for vp in self.viewports:
            uid = vp.frame_uid()
            entry = self.predictions.get(uid) if uid is not None else None
            if entry is None:
                continue
            pred = entry[0]
            silent = findings_withheld(pred.applicability)  # out of scope: no heat map, no regions
            label = (self.panel.cam_label_index() if vp is self.active
                     else pred.labels.index(overlay_label(pred, negative_label=entry[3].card.negative_label)))
            vp.set_ai(AiOverlay(uid, pred, list(pred.labels), list(pred.flagged),
                                self.panel.heatmap_on() and not silent, self.panel.opacity_value(),
                                self.panel.colormap(), label, self.panel.regions_check.isChecked() and not silent))

    def show_anyway(self) -> None:
        """The reader's override for the active image's out-of-scope result: show the withheld findings,
        heat map and regions, labelled as such on the image, in the panel and in exports."""
        uid = self.active.frame_uid()
        entry = self.predictions.get(uid) if uid is not None else None
        if entry is None:
            return
        if not override_intended_use(entry[0]):
            return
        self.panel.prediction = None  # re-render
        self._sync_panel()
        self.set_status("Shown anyway: the image is outside the model's intended use")

    def zoom_to_region(self, i: int) -> None:
        """Centre and zoom the active viewport on flagged region ``i`` of its prediction."""
        uid = self.active.frame_uid()
        entry = self.predictions.get(uid) if uid is not None else None
        if entry is None or not (0 <= i < len(entry[0].regions)):
            return
        r = entry[0].regions[i]
        self.active.centre_on(tuple(float(v) for v in r.bbox))
        self.set_status(f"Region {i + 1}: {r.label}, peak {r.peak:.2f}")

    def show_model_card(self) -> None:
        if self.package is None:
            self.set_status("No model selected")
            return
        dlg = ModelCardDialog(self.package, self)
        self._card_dialog = dlg
        dlg.show()

    def import_model_dialog(self) -> None:
        d = QFileDialog.getExistingDirectory(self, "Import model package (folder with model.onnx + model.json)",
                                             self.settings.last_folder)
        if d:
            self.import_model_from(d)

    def import_model_from(self, path: str) -> None:
        """Validate and install a model package in a worker; a refused package gives a dialog with the reason."""

        def work(task: Task) -> Any:
            from medviewer.inference import import_model

            return import_model(path)

        task = FnTask(work, "import")
        task.signals.result.connect(lambda pkg: (self.set_status(f"Imported {pkg.card.name} {pkg.card.version}"),
                                                 self.load_models(str(pkg.path))))
        task.signals.failed.connect(lambda r: self.error("Model refused", r))
        self.start(task)

    # ==== misc ========================================================================================
    def show_shortcuts(self) -> None:
        dlg = ShortcutsDialog(self)
        self._shortcuts_dialog = dlg
        dlg.show()

    def show_about(self) -> None:
        from PySide6.QtWidgets import QMessageBox

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
        """Cancel background work and wait for the pools (window closing)."""
        for t in list(self._tasks):
            t.cancel()
        self.io_pool.waitForDone(timeout_ms)
        self.ai_pool.waitForDone(timeout_ms)
        self.settings.sync()

    def closeEvent(self, e: Any) -> None:  # noqa: N802
        for vp in self.viewports:
            vp._cine.stop()
        self.shutdown()
        super().closeEvent(e)

