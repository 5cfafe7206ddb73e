"""Start the workstation: ``medviewer [PATH...] [--model] [--provider] [--demo] [--screenshot FILE]``."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from medviewer.gui.main_window import MainWindow
from medviewer.gui.settings import APPLICATION, ORGANISATION, Settings
from medviewer.gui.theme import apply_theme

__all__ = ["run_app", "demo_path", "create_app", "ScreenshotWhenIdle"]

DEMO_FILE = "RG1_UNCR.dcm"
ICON = Path(__file__).resolve().parents[2] / "resources" / "icons" / "medviewer.svg"


def demo_path() -> Path | None:
    """The demo chest radiograph (RG1_UNCR.dcm, CR, MONOCHROME1, from pydicom-data), or None."""
    try:
        from pydicom.data import get_testdata_file

        p = get_testdata_file(DEMO_FILE, download=False)
    except Exception:
        return None
    return Path(p) if p else None


def create_app(argv: list[str] | None = None) -> QApplication:
    """The QApplication (existing or new) with the dark theme."""
    app = QApplication.instance()
    if app is None:
        app = QApplication(argv or [sys.argv[0]])
    app.setOrganizationName(ORGANISATION)
    app.setApplicationName(APPLICATION)
    app.setDesktopFileName("medviewer")
    icon = ICON
    if icon.is_file():
        from PySide6.QtGui import QIcon

        app.setWindowIcon(QIcon(str(icon)))
    apply_theme(app)
    return app


class ScreenshotWhenIdle:
    """Polls the window; once loading and inference are done (and stay done), saves a grab and quits.

    Exit code 0 on success, 1 if the PNG could not be written, 2 on timeout.
    """

    def __init__(self, window: MainWindow, path: str, timeout_s: float = 180.0, settle_ms: int = 400,
                 started: float | None = None) -> None:
        self.window, self.path, self.timeout_s, self.settle_ms = window, path, timeout_s, settle_ms
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
        return all(v.has_image() for v in shown) and w._infer_task is None

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
            QApplication.instance().exit(self.code)


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
    win = MainWindow(settings, provider=getattr(args, "provider", None), interactive=not screenshot)
    paths = [str(p) for p in (getattr(args, "paths", None) or [])]
    if getattr(args, "demo", False):
        p = demo_path()
        if p is None:
            print(f"medviewer: error: the demo image {DEMO_FILE} is not available (install pydicom-data)",
                  file=sys.stderr)
            return 1
        paths.insert(0, str(p))
        win.set_layout("1x1")
        win.panel.set_heatmap_on(True)
        win.force_auto_run = True
    model = getattr(args, "model", None)
    if model:
        win.load_models(model)
    win.show()
    if paths:
        win.open_paths(paths)
    shooter = ScreenshotWhenIdle(win, screenshot, started=t0) if screenshot else None
    code = app.exec()
    win.shutdown()
    if shooter is not None and shooter.code is not None:
        return shooter.code
    return int(code or 0)
