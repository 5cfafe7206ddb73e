"""Start the workstation: ``medviewer [PATH...] [--model] [--provider] [--demo] [--screenshot FILE]``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from medviewer.gui.main_window import MainWindow
from medviewer.gui.settings import APPLICATION, ORGANISATION, Settings
from medviewer.gui.theme import apply_theme

__all__ = ["run_app", "demo_path", "demo_paths", "demo_problem", "create_app", "ScreenshotWhenIdle"]

DEMO_FILE = "RG1_UNCR.dcm"
#: the paediatric demo study (Kermany et al. 2018, CC BY 4.0), built by ``python -m training.demo_data``
PAEDIATRIC_DEMO = "paediatric-cxr-pneumonia.dcm"


def demo_path() -> Path | None:
    """The demo chest radiograph (RG1_UNCR.dcm, CR, MONOCHROME1, from pydicom-data), or None."""
    try:
        from pydicom.data import get_testdata_file

        p = get_testdata_file(DEMO_FILE, download=False)
    except Exception:
        return None
    return Path(p) if p else None


def demo_paths() -> list[Path]:
    """The two demo studies, left to right: a paediatric chest CR with pneumonia (within the default model's
    intended use) and the adult chest CR ``RG1_UNCR.dcm`` (outside it). Missing files are left out."""
    from medviewer.resources import demo_dir

    out = [demo_dir() / PAEDIATRIC_DEMO]
    out = [p for p in out if p.is_file()]
    rg1 = demo_path()
    return out + ([rg1] if rg1 is not None else [])


def demo_problem(win: MainWindow) -> str | None:
    """Why the demo window does not show what it promises (a model, a result for every shown image), or None."""
    if win.package is None:
        return "no model is available for the demo"
    shown = [v for v in win.viewports if v.isVisible() and v.source is not None]
    if len(shown) < 2:
        return f"the demo shows {len(shown)} of its 2 studies"
    missing = [v for v in shown if win.prediction_for(v) is None]
    if missing:
        return f"{len(missing)} of the demo images have no AI result"
    return None


_QT_NOISE = ("This plugin does not support propagateSizeHints()",)


def _qt_messages(mode: Any, context: Any, message: str) -> None:
    """Qt's message handler: drop the offscreen plugin's harmless propagateSizeHints() line, keep the rest."""
    if message in _QT_NOISE:
        return
    print(message, file=sys.stderr)


def create_app(argv: list[str] | None = None) -> QApplication:
    """The QApplication (existing or new) with the dark theme."""
    app = QApplication.instance()
    if app is None:
        from PySide6.QtCore import qInstallMessageHandler

        qInstallMessageHandler(_qt_messages)
        app = QApplication(argv or [sys.argv[0]])
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    app.setDesktopFileName("medviewer")
    from medviewer.resources import icon_path

    icon = icon_path()
    if icon.is_file():
        from PySide6.QtGui import QIcon

        app.setWindowIcon(QIcon(str(icon)))
    apply_theme(app)
    return app


class ScreenshotWhenIdle:
    """Polls the window; once loading and inference are done (and stay done), saves a grab and quits.

    Exit code 0 on success, 1 if the PNG could not be written, 2 on timeout, 3 when ``check`` says what is
    shown is not what was promised (the demo), 4 when the window reported an error (a file that could not be
    opened or decoded): a non-interactive run never waits for a click and never calls a failure a success.
    """

    def __init__(self, window: MainWindow, path: str, timeout_s: float = 180.0, settle_ms: int = 400,
                 started: float | None = None, check: Any = None) -> None:
        self.window, self.path, self.timeout_s, self.settle_ms = window, path, timeout_s, settle_ms
        self.check = check  # window -> None, or why what is shown is not what was promised (exit 3)
        self.t0 = started or time.perf_counter()
        self.idle_polls = 0
        self.code: int | None = None
        self.timer = QTimer()
        self.timer.timeout.connect(self._poll)
        self.timer.start(100)

    def _ready(self) -> bool:
        w = self.window
        if not w.is_idle():
            return False
        shown = [v for v in w.viewports if v.isVisible() and v.source is not None]
        # an error (a file that cannot be opened or decoded) ends the wait: nothing more will arrive
        return (all(v.has_image() for v in shown) or bool(w.errors)) and not w.ai.busy

    def _poll(self) -> None:
        if self._ready():
            self.idle_polls += 1
        else:
            self.idle_polls = 0
        timed_out = time.perf_counter() - self.t0 > self.timeout_s
        if self.idle_polls * 100 >= self.settle_ms or timed_out:
            self.timer.stop()
            QApplication.processEvents()
            img = self.window.grab()
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            ok = img.save(str(self.path), "PNG")
            if not ok:
                print(f"medviewer: error: could not write the screenshot {self.path}", file=sys.stderr)
            elif timed_out:
                print(f"medviewer: warning: saved {self.path} after the {self.timeout_s:.0f} s timeout", file=sys.stderr)
            else:
                print(f"medviewer: screenshot saved to {self.path} ({time.perf_counter() - self.t0:.1f} s)")
            self.code = 2 if timed_out else (0 if ok else 1)
            problem = self.check(self.window) if self.check is not None and ok else None
            if ok and not timed_out and self.window.errors and self.code == 0:
                print(f"medviewer: error: the window shows an error: {self.window.errors[0]}", file=sys.stderr)
                self.code = 4
            if problem:
                print(f"medviewer: error: the demo cannot show what it promises: {problem}", file=sys.stderr)
                self.code = 3
            QApplication.instance().exit(self.code)


def _model_problem(model: str) -> str | None:
    """Why ``--model`` `model` (a name or package path) cannot be loaded, in one line, or None."""
    from medviewer.errors import MedViewerError, error_line
    from medviewer.inference import resolve_model

    try:
        resolve_model(model)
    except MedViewerError as exc:
        return error_line(exc)
    return None


def _refuse_requested_model(win: MainWindow, reason: str) -> None:
    """``--model`` named a model that cannot be loaded: the window says so (a dialog; in a ``--screenshot`` run
    the status bar and stderr, exit 4) and runs no model -- not the default one in its place, which would
    look like what was asked for. The reader can still pick a model in the AI panel."""
    win.force_auto_run = False
    auto = win.panel.auto_run
    was_on = auto.isChecked()
    auto.blockSignals(True)  # for this start only: the saved setting is not touched
    auto.setChecked(False)
    auto.blockSignals(False)

    def once_models_listed() -> None:
        if not win.models_ready:
            QTimer.singleShot(50, once_models_listed)
            return
        win.ai.select(None)
        combo = win.panel.model_combo  # empty, not showing a model that is not selected
        combo.blockSignals(True)
        combo.setCurrentIndex(-1)
        combo.blockSignals(False)
        auto.blockSignals(True)
        auto.setChecked(was_on)
        auto.blockSignals(False)
        win.error("Model not loaded", f"--model: {reason}")

    QTimer.singleShot(0, once_models_listed)


def run_app(args: argparse.Namespace) -> int:
    """Run the workstation with ``args`` from :func:`medviewer.cli.gui_parser`; returns the exit code."""
    t0 = time.perf_counter()
    screenshot = getattr(args, "screenshot", None)
    headless = (sys.platform.startswith("linux") and not os.environ.get("DISPLAY")
                and not os.environ.get("WAYLAND_DISPLAY") and not os.environ.get("QT_QPA_PLATFORM"))
    if headless and screenshot:
        os.environ["QT_QPA_PLATFORM"] = "offscreen"
    elif headless:
        print("medviewer: error: no display (DISPLAY and WAYLAND_DISPLAY are unset): run it in a desktop "
              "session, under xvfb-run, or headless with --screenshot FILE", file=sys.stderr)
        return 1
    app = create_app()
    settings = Settings()
    from medviewer.workstation.workspace import Workspace

    workspace = Workspace(getattr(args, "provider", None) or settings.provider)  # the root model the window shows
    win = MainWindow(settings, interactive=not screenshot, workspace=workspace)
    paths = [str(p) for p in (getattr(args, "paths", None) or [])]
    demo = bool(getattr(args, "demo", False))
    if demo:
        found = demo_paths()
        if len(found) < 2:
            print(f"medviewer: error: the demo studies are not available ({PAEDIATRIC_DEMO} in the package's "
                  f"resources/demo, {DEMO_FILE} from pydicom-data)", file=sys.stderr)
            return 1
        paths[:0] = [str(p) for p in found]
        win.set_layout("1x2")
        win.panel.set_heatmap_on(True)
        win.force_auto_run = True  # the paediatric film (left) stays active; each viewport says its own verdict
    model = getattr(args, "model", None)
    model_error = _model_problem(model) if model else None
    if model_error:
        _refuse_requested_model(win, model_error)
    elif model:
        win.load_models(model)
    layout = getattr(args, "layout", None)
    if layout and layout != "mpr":
        win.set_layout(layout)
    win.show()
    if paths:
        win.open_paths(paths)
    if layout == "mpr":  # waits for the scan, then builds the volume of the first series
        win.set_layout("mpr")
    shooter = ScreenshotWhenIdle(win, screenshot, started=t0, check=demo_problem if demo else None) if screenshot else None
    code = app.exec()
    win.shutdown()
    if shooter is not None and shooter.code is not None:
        return shooter.code
    return int(code or 0)
