"""Reading and display pipeline speed, each beside a plain baseline measured in the same run.

    python benchmarks/bench_display.py [--ct ../shared/data/ct-pancreas-cbct-seg-001] [--repeats 40]

Prints:

1. loading the 134-slice CT series:
   - time to the first displayable slice: ours = scan headers (pixels not read), order by position,
     decode + render the first slice; baseline = ``[pydicom.dcmread(f).pixel_array for f in files]``,
     which must finish before it knows which slice comes first;
   - whole series: ours = scan + decode every slice into one preallocated volume; baseline = the loop;
   - peak Python/NumPy memory of each (tracemalloc);
2. W/L render per frame (a new window every frame, as while dragging) at 512^2 (CT slice) and on the
   2k CR chest (RG1_UNCR.dcm, 1841x1955, MONOCHROME1): ours (LUT over the stored values) vs a naive
   float64 NumPy implementation (rescale, window, clip, scale, round, invert).

Ratios > 1 mean ours is faster / smaller.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medviewer.imaging import DisplayPipeline, Window  # noqa: E402
from medviewer.io import read_instance, scan  # noqa: E402


def _seconds(fn: Callable[[], object]) -> float:
    gc.collect()
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _peak_bytes(fn: Callable[[], object]) -> int:
    """Peak Python + NumPy allocation of one call (tracemalloc; timed separately, it slows Python)."""
    gc.collect()
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def _baseline_loop(files: list[Path]) -> list[np.ndarray]:
    import pydicom

    return [pydicom.dcmread(f).pixel_array for f in files]


def _ours_first(folder: Path) -> np.ndarray:
    series = scan(folder).series[0]
    first = series.instances[0]
    return DisplayPipeline.from_instance(first).render(first.stored_pixels())


def _ours_whole(folder: Path) -> np.ndarray:
    series = scan(folder).series[0]
    head = series.instances[0]
    first = head.stored_pixels()
    volume = np.empty((len(series.instances),) + first.shape, first.dtype)
    volume[0] = first
    for k, inst in enumerate(series.instances[1:], start=1):
        volume[k] = inst.stored_pixels()
    return volume


def naive_window_float64(stored: np.ndarray, slope: float, intercept: float, window: Window,
                         invert: bool) -> np.ndarray:
    """The textbook way: float64 modality values, LINEAR window (PS3.3 C.11.2.1.2), scale, round."""
    values = stored.astype(np.float64) * slope + intercept
    c, w = window.center - 0.5, window.width - 1.0
    y = np.clip((values - c) / w + 0.5, 0.0, 1.0)
    out = np.round(y * 255.0).astype(np.uint8)
    return 255 - out if invert else out


def _per_frame(fn: Callable[[int], object], repeats: int) -> float:
    fn(0)  # warm-up
    times = []
    for k in range(repeats):
        t0 = time.perf_counter()
        fn(k + 1)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_load(folder: Path, repeats: int = 3) -> None:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".dcm")
    print(f"1. Loading the CT series ({len(files)} files in {folder.name})")
    # run each once untimed so both read from a warm file cache
    assert len(_baseline_loop(files)) == len(files)
    assert _ours_whole(folder).shape[0] == len(files) and _ours_first(folder).dtype == np.uint8
    runs: dict[str, list[float]] = {"base": [], "first": [], "whole": []}
    for _ in range(repeats):  # interleaved, best of `repeats`: the machine is shared
        runs["base"].append(_seconds(lambda: _baseline_loop(files)))
        runs["first"].append(_seconds(lambda: _ours_first(folder)))
        runs["whole"].append(_seconds(lambda: _ours_whole(folder)))
    t_base, t_first, t_whole = (min(runs[k]) for k in ("base", "first", "whole"))
    m_base = _peak_bytes(lambda: _baseline_loop(files))
    m_first = _peak_bytes(lambda: _ours_first(folder))
    m_whole = _peak_bytes(lambda: _ours_whole(folder))
    row = "   {:<38} {:>10} {:>10} {:>8}"
    print(f"   best of {repeats} interleaved runs; memory = peak traced Python/NumPy allocations")
    print(row.format("", "ours", "baseline", "ratio"))
    print(row.format("time to first displayable slice (s)", f"{t_first:.3f}", f"{t_base:.3f}",
                     f"{t_base / t_first:.1f}x"))
    print(row.format("whole series (s)", f"{t_whole:.3f}", f"{t_base:.3f}", f"{t_base / t_whole:.2f}x"))
    print(row.format("peak memory, first slice (MiB)", f"{m_first / 2**20:.1f}", f"{m_base / 2**20:.1f}",
                     f"{m_base / m_first:.1f}x"))
    print(row.format("peak memory, whole series (MiB)", f"{m_whole / 2**20:.1f}", f"{m_base / 2**20:.1f}",
                     f"{m_base / m_whole:.2f}x"))


def bench_render(name: str, path: Path, repeats: int) -> None:
    inst = read_instance(path)
    pipe = DisplayPipeline.from_instance(inst)
    stored = inst.stored_pixels()
    ds = inst.dataset
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    base = pipe.default_window(stored)
    invert = pipe.inverse

    def window(k: int) -> Window:  # a different window on every frame, as while dragging
        return Window(base.center + (k % 17) * 3.0, max(base.width * (1 + (k % 11) * 0.01), 2.0))

    ours = _per_frame(lambda k: pipe.render(stored, window(k)), repeats)
    naive = _per_frame(lambda k: naive_window_float64(stored, slope, intercept, window(k), invert), repeats)
    # same pixels: the two implementations agree (to rounding) on the last window
    a = pipe.render(stored, window(repeats))
    b = naive_window_float64(stored, slope, intercept, window(repeats), invert)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    size = f"{stored.shape[1]}x{stored.shape[0]}"
    print(f"   {name:<24} {size:>10} {ours * 1e3:>9.2f} {naive * 1e3:>10.2f} {naive / ours:>7.1f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ct", type=Path, default=REPO.parent / "shared" / "data" / "ct-pancreas-cbct-seg-001")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args(argv)
    if args.ct.is_dir():
        bench_load(args.ct)
    else:
        print(f"1. skipped: CT series not found at {args.ct}")
    print("2. W/L render per frame (median ms, new window each frame)")
    print(f"   {'image':<24} {'size':>10} {'ours':>9} {'naive f64':>10} {'ratio':>8}")
    from pydicom.data import get_testdata_file

    ct_files = sorted(args.ct.glob("*.dcm")) if args.ct.is_dir() else []
    if ct_files:
        bench_render("CT slice (int16 HU)", ct_files[len(ct_files) // 2], args.repeats)
    cr = get_testdata_file("RG1_UNCR.dcm", download=False)
    if cr:
        bench_render("CR chest MONOCHROME1", Path(cr), max(10, args.repeats // 2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
