"""Workstation responsiveness, each measure beside a straightforward baseline run in the same process.

    python benchmarks/bench_gui.py [--ct ../shared/data/ct-pancreas-cbct-seg-001] [--repeats 60]

Prints:

1. launch -> main window shown (a fresh ``python`` process: imports, QApplication, window exposed);
2. opening the 134-slice CT -> first slice on screen (the folder's first file is shown while the other
   headers are read; the ordered series then replaces it on the same image), vs. the naive way (read
   every file fully with pydicom, sort by position, then render), i.e. what a viewer without background
   loading makes the reader wait for, and vs. the core alone (``bench_display.py``'s first displayable
   slice: scan every header, order, decode + render the first slice), each the median of ``--opens``
   runs interleaved in one process, a fresh window each time;
3. scroll: ms per frame (step + synchronous repaint) at 512^2 once prefetched, vs. decoding each
   frame on the GUI thread when it is shown (header + pixels + pipeline, then the same repaint);
4. W/L drag: ms per frame (window change + synchronous repaint of the viewport with its overlays) at
   512^2 (CT) and on the 2k CR (RG1_UNCR.dcm, 1841x1955), vs. the same viewport with a naive image
   step (float window at full resolution, Grayscale8 image smooth-scaled by Qt to its on-screen size).

Runs offscreen unless a DISPLAY is set. Ratios > 1 mean ours is faster.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

CHILD = r"""
import time, sys
t0 = time.perf_counter()
from PySide6.QtCore import QSettings
from PySide6.QtTest import QTest
from medviewer.gui.app import create_app
from medviewer.gui.main_window import MainWindow
from medviewer.gui.settings import Settings
app = create_app()
w = MainWindow(Settings(QSettings(sys.argv[1], QSettings.IniFormat)))
w.show()
QTest.qWaitForWindowExposed(w)
app.processEvents()
print(f"SHOWN {time.perf_counter() - t0:.4f}", flush=True)
w.shutdown()
"""


def _ms(xs: list[float]) -> str:
    return f"{statistics.median(xs) * 1000:7.2f} ms (median of {len(xs)}, p90 {np.percentile(xs, 90) * 1000:.2f})"


def bench_launch(tmp: Path, repeats: int = 3) -> None:
    walls, inner = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "launch.ini")], capture_output=True,
                             text=True, cwd=REPO, timeout=120)
        wall = time.perf_counter() - t0
        line = next((x for x in out.stdout.splitlines() if x.startswith("SHOWN")), None)
        if line is None:
            print("launch: failed:", out.stderr.strip().splitlines()[-1:] or out.returncode)
            return
        walls.append(wall)
        inner.append(float(line.split()[1]))
    print(f"launch -> window shown: process {statistics.median(walls):.2f} s "
          f"(imports + window {statistics.median(inner):.2f} s), median of {repeats}")


def _wait(app, cond, timeout: float = 120.0) -> None:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("benchmark step timed out")


def naive_open(ct: Path) -> float:
    """Baseline: read every slice fully, sort by position, window the first one."""
    import pydicom

    t0 = time.perf_counter()
    dss = [pydicom.dcmread(p) for p in sorted(ct.glob("*.dcm"))]
    dss.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    d = dss[len(dss) // 2]
    hu = d.pixel_array.astype(np.float32) * float(d.RescaleSlope) + float(d.RescaleIntercept)
    np.clip((hu - (40 - 200)) / 400 * 255, 0, 255).astype(np.uint8)
    return time.perf_counter() - t0


def core_first(ct: Path) -> float:
    """The core alone (as ``bench_display.py``): scan the headers, order, decode + render the first slice."""
    from medviewer.imaging import DisplayPipeline
    from medviewer.io import scan

    t0 = time.perf_counter()
    first = scan(ct).series[0].instances[0]
    DisplayPipeline.from_instance(first).render(first.stored_pixels())
    return time.perf_counter() - t0


def bench_open(app, ct: Path, settings, opens: int) -> None:
    """Open the CT in a fresh window ``opens`` times; the naive read and the core interleaved with it."""
    from medviewer.gui.main_window import MainWindow

    first, ordered, everything, naive, core = [], [], [], [], []
    for _ in range(opens):
        naive.append(naive_open(ct))
        core.append(core_first(ct))
        win = MainWindow(settings, interactive=False)
        win.resize(1600, 1000)
        win.show()
        _wait(app, lambda w=win: w.models_ready and w.is_idle())
        vp = win.active
        t0 = time.perf_counter()
        win.open_paths([str(ct)])
        _wait(app, vp.has_image)
        first.append(time.perf_counter() - t0)
        _wait(app, lambda w=win: not w.loader.scanning)
        ordered.append(time.perf_counter() - t0)
        _wait(app, lambda v=vp: v.source is not None and v.source.n_cached() == len(v.source) > 1)
        everything.append(time.perf_counter() - t0)
        _wait(app, win.is_idle)
        win.shutdown()
        win.close()
        win.deleteLater()
        app.processEvents()
    med = statistics.median
    print(f"open 134-slice CT -> first slice shown: {med(first):.3f} s (series ordered {med(ordered):.2f} s, "
          f"all prefetched {med(everything):.2f} s); naive full read: {med(naive):.3f} s; ratio "
          f"{med(naive) / med(first):.1f}x; core first slice {med(core):.3f} s, ours / core "
          f"{med(first) / med(core):.2f}x (median of {opens})")


def naive_screen_image(vp):
    """Baseline image step, swapped into the same viewport: modality values as float, window in float at full
    resolution, a Grayscale8 QImage scaled to its on-screen size by Qt's smooth scaling (no LUT, no
    minification, no model cache) -- what drawing with a scaling painter costs. ``(x, y, QImage)``."""
    from PySide6.QtCore import Qt

    from medviewer.gui.viewport import numpy_to_qimage

    stored = vp.source.cached(vp.state.frame)
    values = vp.source.pipeline(vp.state.frame).modality_values(stored)
    c, w = vp.state.center_w, vp.state.width_w
    u8 = np.clip((values - (c - w / 2)) / w * 255.0, 0, 255).astype(np.uint8)
    m = vp.model.matrix()
    x0, y0 = round(m[0, 2]), round(m[1, 2])
    tw, th = round(m[0, 2] + u8.shape[1] * m[0, 0]) - x0, round(m[1, 2] + u8.shape[0] * m[1, 1]) - y0
    return x0, y0, numpy_to_qimage(u8).scaled(tw, th, Qt.IgnoreAspectRatio, Qt.SmoothTransformation)


def bench_viewer(ct: Path | None, repeats: int, opens: int = 5) -> None:
    import tempfile

    from PySide6.QtCore import QSettings

    from medviewer.gui.app import create_app, demo_path
    from medviewer.gui.main_window import MainWindow
    from medviewer.gui.settings import Settings

    app = create_app()
    tmp = Path(tempfile.mkdtemp())
    settings = Settings(QSettings(str(tmp / "b.ini"), QSettings.IniFormat))
    settings.auto_run = False
    win = MainWindow(settings, interactive=False)
    win.resize(1600, 1000)
    win.show()
    _wait(app, lambda: win.models_ready)
    vp = win.active

    def wl_frames(n: int) -> list[float]:
        ts = []
        for i in range(n):
            t0 = time.perf_counter()
            vp.state.drag_window(3 if i % 2 else -3, 2 if i % 2 else -2, max(vp.state.width_w or 1, 1) / 500)
            vp._refresh()
            vp.repaint()
            ts.append(time.perf_counter() - t0)
        return ts

    def naive_wl(n: int) -> list[float]:
        vp._screen_image = lambda: naive_screen_image(vp)  # same widget, same overlays, naive image step
        try:
            return wl_frames(n)
        finally:
            del vp._screen_image

    if ct is not None and ct.is_dir():
        bench_open(app, ct, settings, opens)
        win.open_paths([str(ct)])
        _wait(app, lambda: not win.loader.scanning and vp.source.n_cached() == len(vp.source))
        _wait(app, win.is_idle)
        vp.set_frame(0)
        ts = []
        for _ in range(min(repeats, len(vp.source) - 1)):
            t0 = time.perf_counter()
            vp.step(1)
            vp.repaint()
            ts.append(time.perf_counter() - t0)
        base = []
        from medviewer.imaging import DisplayPipeline

        for k in range(min(repeats, len(vp.source))):  # same frames, decoded on the GUI thread
            t0 = time.perf_counter()
            inst = vp.source.instance(k)
            stored = inst.stored_pixels(0)
            pipe = DisplayPipeline.from_instance(inst)
            pipe.render(stored)
            vp.model.cache.clear()  # and the viewport re-renders (empty render cache) and repaints as in a real step
            vp.repaint()
            base.append(time.perf_counter() - t0)
        print(f"scroll 512^2 (prefetched):      {_ms(ts)};  decode on demand {_ms(base)}; "
              f"ratio {statistics.median(base) / statistics.median(ts):.1f}x")
        ours, naive = wl_frames(repeats), naive_wl(repeats)
        print(f"W/L drag 512^2 CT:              {_ms(ours)};  naive {_ms(naive)}; "
              f"ratio {statistics.median(naive) / statistics.median(ours):.1f}x")
    else:
        print(f"CT series not found ({ct}): CT measures skipped")
    cr = demo_path()
    if cr is not None:
        win.open_paths([str(cr)])
        _wait(app, lambda: vp.has_image() and "RG1" in str(vp.current_instance().path))
        ours, naive = wl_frames(repeats), naive_wl(max(10, repeats // 3))
        inst = vp.current_instance()
        print(f"W/L drag {inst.columns}x{inst.rows} CR:        {_ms(ours)};  naive {_ms(naive)}; "
              f"ratio {statistics.median(naive) / statistics.median(ours):.1f}x")
    win.shutdown()


def main(argv: list[str] | None = None) -> int:
    import tempfile

    ap = argparse.ArgumentParser(description="MedViewer GUI benchmark")
    ap.add_argument("--ct", type=Path, default=REPO.parent / "shared" / "data" / "ct-pancreas-cbct-seg-001")
    ap.add_argument("--repeats", type=int, default=60)
    ap.add_argument("--opens", type=int, default=5, help="times the CT is opened (fresh window each time)")
    ap.add_argument("--skip-launch", action="store_true")
    args = ap.parse_args(argv)
    print(f"platform: {os.environ.get('QT_QPA_PLATFORM') or 'xcb (DISPLAY=' + os.environ.get('DISPLAY', '') + ')'}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)")
    if not args.skip_launch:
        bench_launch(Path(tempfile.mkdtemp()))
    bench_viewer(args.ct, args.repeats, args.opens)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
