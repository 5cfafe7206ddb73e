"""Benchmark: batches per second from the in-memory cache of fitted uint8 images vs. decoding every epoch.

The training engine decodes each image once (``training.data.load_fitted``) and augments the cached uint8
copy; the naive alternative re-reads and re-fits the file for every sample of every epoch. Both produce
identical network inputs; this prints the throughput of each and their ratio, measured side by side.

Usage::

    python benchmarks/bench_training.py [--data ../shared/data/kermany-cxr-224] [--n 256] [--size 224]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from medviewer.imaging.preprocess import fit_to_input, normalise
from medviewer.inference.card import InputSpec, Preprocessing
from training.data import Augment, ImageDataset, discover, load_fitted, read_display_u8


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "kermany-cxr-224"))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    index = discover(args.data)
    paths = [s.path for s in index.samples][:: max(1, len(index) // args.n)][: args.n]
    spec, inp = Preprocessing(), InputSpec(height=args.size, width=args.size)
    aug = Augment()

    t = time.perf_counter()
    cache = load_fitted(paths, spec, inp, progress=False)
    ds = ImageDataset(cache, np.zeros(len(cache), np.int64), spec, aug)
    for e in range(args.epochs):
        ds.set_epoch(e)
        for i in range(len(ds)):
            ds[i]
    cached = time.perf_counter() - t

    t = time.perf_counter()
    for e in range(args.epochs):
        for i, p in enumerate(paths):
            fitted = fit_to_input(read_display_u8(p), spec, inp)[0]
            normalise(aug(fitted, np.random.default_rng((0, e, i))), spec)
    naive = time.perf_counter() - t

    n = len(paths) * args.epochs
    print(f"{n} samples ({len(paths)} images x {args.epochs} epochs, {args.size} px)")
    print(f"cached (decode once):     {n / cached:8.1f} samples/s")
    print(f"naive (decode each time): {n / naive:8.1f} samples/s")
    print(f"ratio cached/naive: {naive / cached:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
