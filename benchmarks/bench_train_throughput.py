"""Training throughput (images/s): images decoded once into memory (cached) vs read from disk per item (streamed).

Measured side by side on the same machine, the same images, the same network and augmentation:

* ``data``: the DataLoader alone (read -> display image -> fit -> augment -> normalise -> batch), the ceiling a
  data path puts on training;
* ``train``: full training steps (forward, BCE with per-finding pos_weight, backward, Adam), what
  ``medviewer-train fit --task multilabel --loader memory|stream`` runs.

The cached path pays its decoding once, before the first epoch (reported separately as ``decode``); the
streamed path pays it in every epoch but needs no memory for the decoded set (ChestX-ray14 at 224 px:
112,120 x 224 x 224 bytes = 5.6 GB). ``--workers`` DataLoader processes decode in parallel.

Usage::

    python benchmarks/bench_train_throughput.py                         # NIH 64 px, input 64, compact-small
    python benchmarks/bench_train_throughput.py --data ../shared/data/kermany-cxr-224/train --limit 1000 \\
        --input-size 224 --model compact --workers 2
    python benchmarks/bench_train_throughput.py --device cuda --model densenet121 --input-size 224 --batch 16

Prints one line per measurement (the median of ``--rounds`` interleaved repetitions) and the ratio
streamed / cached.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.data import Augment, load_fitted  # noqa: E402
from training.engine import FitConfig  # noqa: E402
from training.models import build_model  # noqa: E402
from training.multilabel_data import TargetDataset, pos_weights, read_multilabel_csv  # noqa: E402

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "nih-cxr14-64" / "labels.csv"


def _loader(ds: TargetDataset, batch: int, workers: int) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))


def data_rate(ds: TargetDataset, batch: int, workers: int, images: int) -> float:
    """Images per second through the DataLoader alone (after one warm-up batch)."""
    it = iter(_loader(ds, batch, workers))
    next(it)
    n, t0 = 0, time.perf_counter()
    while n < images:
        try:
            x, _ = next(it)
        except StopIteration:
            it = iter(_loader(ds, batch, workers))
            continue
        n += len(x)
    return n / (time.perf_counter() - t0)


def train_rate(ds: TargetDataset, model_name: str, k: int, batch: int, workers: int, steps: int,
               device: torch.device, pw: np.ndarray) -> float:
    """Images per second of full training steps (after two warm-up steps); AMP on CUDA."""
    torch.manual_seed(0)
    model = build_model(model_name, num_classes=k).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    crit = torch.nn.BCEWithLogitsLoss(pos_weight=torch.as_tensor(pw, device=device))
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    loader = _loader(ds, batch, workers)
    it = iter(loader)
    done, n, t0 = 0, 0, 0.0
    while done < steps + 2:
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        if done == 2:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0, n = time.perf_counter(), 0
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
            out = model(x)
        loss = crit(out.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        done += 1
        n += len(x) if done > 2 else 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def _index(source: str, limit: int | None):
    """A multi-label table, or a class folder (``ROOT/[split/]CLASS/*``: one 0/1 target per class but the first)."""
    from training.multilabel_data import MultilabelIndex

    if Path(source).is_file():
        index = read_multilabel_csv(source)
    else:
        from training.data import discover

        folder = discover(source)
        y = np.stack([(folder.labels == c).astype(np.uint8) for c in range(1, len(folder.classes))], axis=1)
        index = MultilabelIndex([s.path for s in folder.samples], y, [s.patient_id for s in folder.samples],
                                folder.classes[1:])
    if limit and limit < len(index):
        index = index.take(np.random.default_rng(0).permutation(len(index))[:limit])
    return index


def _median_of(rounds: int, fn) -> float:
    return float(np.median([fn() for _ in range(rounds)]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DEFAULT),
                    help="multi-label table or class folder (default: ../shared/data/nih-cxr14-64/labels.csv)")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--model", default="compact-small")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--images", type=int, default=600, help="images drawn per data-only measurement")
    ap.add_argument("--steps", type=int, default=15, help="timed training steps per measurement")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--limit", type=int, default=None, help="use N random images of the data")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the median is printed (3)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args()
    if not Path(args.data).exists():
        print(f"bench_train_throughput: {args.data} not found (../shared/data is absent)", file=sys.stderr)
        return 1
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    index = _index(args.data, args.limit)
    cfg = FitConfig(input_size=args.input_size)
    spec, inp = cfg.preprocessing(), cfg.input_spec()
    y = index.targets.astype(np.float32)
    t0 = time.perf_counter()
    images = load_fitted(index.paths, spec, inp, workers=2, progress=False)
    decode = len(index) / (time.perf_counter() - t0)
    cached = TargetDataset(y, spec, inp, images=images, augment=Augment())
    streamed = TargetDataset(y, spec, inp, paths=list(index.paths), augment=Augment())
    dev = args.device if device.type == "cpu" else torch.cuda.get_device_name(device)
    print(f"{len(index)} images from {args.data}; input {args.input_size}; {args.model}; batch {args.batch}; "
          f"{args.workers} workers; {dev}, {torch.get_num_threads()} torch threads")
    print(f"decode once (cached path, 2 threads): {decode:.0f} images/s; {images.nbytes / 2**20:.1f} MiB held")
    d_c = _median_of(args.rounds, lambda: data_rate(cached, args.batch, args.workers, args.images))
    d_s = _median_of(args.rounds, lambda: data_rate(streamed, args.batch, args.workers, args.images))
    print(f"data only:  cached {d_c:8.0f} images/s   streamed {d_s:8.0f} images/s   streamed/cached {d_s / d_c:.2f}")
    pw = pos_weights(y)
    t_c, t_s = [], []
    for _ in range(args.rounds):  # interleaved: a load change on a shared machine hits both paths alike
        t_c.append(train_rate(cached, args.model, y.shape[1], args.batch, args.workers, args.steps, device, pw))
        t_s.append(train_rate(streamed, args.model, y.shape[1], args.batch, args.workers, args.steps, device, pw))
    t_c, t_s = float(np.median(t_c)), float(np.median(t_s))
    print(f"training:   cached {t_c:8.1f} images/s   streamed {t_s:8.1f} images/s   streamed/cached {t_s / t_c:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
