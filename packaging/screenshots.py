"""Regenerate the documentation screenshots (run under Xvfb or with QT_QPA_PLATFORM=offscreen).

    DISPLAY=:99 python packaging/screenshots.py docs/screenshots [--ct ../shared/data/ct-pancreas-cbct-seg-001]

Writes ``ct_lung_measure.png`` (CT in 1x2: lung preset with a distance, abdomen preset with an ellipse
ROI in HU) and ``model_card.png`` (the default model's card, when a model is installed). The demo
screenshot comes from the app itself: ``medviewer --demo --screenshot docs/screenshots/demo.png``.
Settings go to a temporary INI file, so the user's settings are untouched.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _wait(app, cond, timeout: float = 60.0) -> bool:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout:
            return False
    for _ in range(20):
        app.processEvents()
    return True


def _soft_tissue_spot(vp, size: int = 36) -> tuple[tuple[float, float], tuple[float, float]]:
    """Corners of the most uniform enhanced soft-tissue square (40..150 HU), preferring the image's left
    third (the patient's right: liver), so the ROI in the screenshot measures one organ."""

    hu, _ = vp._values()
    h, w = hu.shape
    best, where = None, (w / 2, h / 2)
    for y in range(h // 4, 3 * h // 4 - size, 4):
        for x in range(w // 4, 3 * w // 4 - size, 4):
            patch = hu[y : y + size, x : x + size]
            m = float(patch.mean())
            if 40 <= m <= 150 and patch.min() > -50:
                score = float(patch.std()) + abs(x + size / 2 - 0.33 * w) * 0.05  # liver: image left
                if best is None or score < best:
                    best, where = score, (x, y)
    x, y = where
    return (float(x), float(y)), (float(x + size), float(y + size))


def _right_lung_width(vp) -> tuple[tuple[float, float], tuple[float, float]]:
    """End points of the widest air run (< -400 HU) inside the body on the image's left half (the
    patient's right lung): pleura to mediastinum."""
    hu, _ = vp._values()
    h, w = hu.shape
    best = (0, 0, 0, h // 2)
    for y in range(h // 3, 2 * h // 3, 4):
        row = hu[y, : w // 2] < -400
        x = 0
        while x < len(row):  # runs of air; the first run from the edge is outside the body
            if row[x]:
                x0 = x
                while x < len(row) and row[x]:
                    x += 1
                if x0 > 0 and x - x0 > best[0]:
                    best = (x - x0, x0, x, y)
            x += 1
    _, x0, x1, y = best
    return (float(x0), y + 0.5), (float(x1), y + 0.5)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("outdir", type=Path)
    ap.add_argument("--ct", type=Path, default=REPO.parent / "shared" / "data" / "ct-pancreas-cbct-seg-001")
    ap.add_argument("--slice", type=int, default=None, help="CT image number to show (1-based)")
    args = ap.parse_args(argv)
    from PySide6.QtCore import QSettings

    from medviewer.gui.app import create_app
    from medviewer.gui.main_window import MainWindow
    from medviewer.gui.measure import Measurement, Shape
    from medviewer.gui.settings import Settings

    app = create_app()
    args.outdir.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp()
    settings = Settings(QSettings(str(Path(tmp) / "s.ini"), QSettings.IniFormat))
    settings.auto_run = False
    win = MainWindow(settings, provider="cpu", interactive=False)
    win.resize(1600, 1000)
    win.show()
    _wait(app, lambda: win.models_ready)
    if args.ct.is_dir():
        win.set_layout("1x2")
        win.open_paths([str(args.ct)])
        _wait(app, lambda: win.active.has_image() and not win._tasks, 120)
        left, right = win.viewports[0], win.viewports[1]
        win.load_series(left.source_key, right)
        frame = (args.slice - 1) if args.slice else 18  # lung level
        left.set_frame(frame)
        right.set_frame(min(frame + 22, len(right.source) - 1))  # upper abdomen: liver
        _wait(app, lambda: left.has_image() and right.has_image())
        names = [p.name.lower() for p in win.presets()]
        win.set_active(left)
        win.apply_preset(next((i for i, n in enumerate(names) if "lung" in n), 0))
        win.set_active(right)
        win.apply_preset(next((i for i, n in enumerate(names) if "abd" in n or "soft" in n), 0))
        _wait(app, lambda: left.has_image() and right.has_image())
        left.add_measurement(Measurement(Shape.DISTANCE, *_right_lung_width(left)))
        right.add_measurement(Measurement(Shape.ELLIPSE, *_soft_tissue_spot(right)))
        win.set_active(left)
        left._readout(left.width() * 0.4, left.height() * 0.45)
        _wait(app, lambda: True)
        out = args.outdir / "ct_lung_measure.png"
        win.grab().save(str(out))
        print(f"wrote {out}")
    else:
        print(f"CT series not found at {args.ct}: skipped", file=sys.stderr)
    if win.package is not None:
        win.show_model_card()
        dlg = win._card_dialog
        dlg.resize(820, 900)
        _wait(app, lambda: dlg.isVisible())
        out = args.outdir / "model_card.png"
        dlg.grab().save(str(out))
        print(f"wrote {out}")
    else:
        print("no model installed: model card screenshot skipped", file=sys.stderr)
    win.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
