"""Inference benchmark: ONNX Runtime vs PyTorch eager on the same CAM network, and ``medviewer infer``
over a folder vs a naive per-image loop. Ours and the baseline are measured side by side in one run.

Run: ``python benchmarks/bench_inference.py [--arch resnet18|densenet121] [--images 32] [--rounds 2]``

1. The network: a MONAI ResNet-18 (default) or DenseNet121 (2-D, 1 channel, 224x224, 2 classes) whose features feed global average
   pooling and one linear layer, returning logits and the in-graph class activation maps (Zhou et al.
   2016) -- what ``training`` exports. Exported with ``torch.onnx.export(dynamo=True,
   external_data=False)`` and a dynamic batch axis.
2. Network only: images/s for batch 1 and 16, torch eager (``torch.inference_mode``) vs ONNX Runtime CPU
   (and CUDA when a GPU with a working CUDA provider is present), both with the same thread count.
3. End to end over a folder (Kermany chest radiographs from ../shared/data when present, else synthetic
   PNGs): ``medviewer infer`` (scan, decoding overlapped in a thread pool, batched ORT, CAMs mapped to
   the original grid, regions, results.json/.csv) vs a naive loop (read, render, ``Session.predict`` one
   image at a time, same session).

torch is imported here only (a benchmark, not part of ``medviewer``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _cam_net(arch: str, num_classes: int = 2):
    import torch
    from torch import nn

    if arch == "densenet121":
        from monai.networks.nets import DenseNet121

        features = DenseNet121(spatial_dims=2, in_channels=1, out_channels=num_classes).features
        width = 1024
    elif arch == "resnet18":
        from monai.networks.nets import ResNet

        net = ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=2, n_input_channels=1,
                     num_classes=num_classes)
        features = nn.Sequential(net.conv1, net.bn1, net.act, net.maxpool, net.layer1, net.layer2, net.layer3,
                                 net.layer4)
        width = 512
    else:
        raise SystemExit(f"unknown --arch {arch}")

    class CamNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = features
            self.act = nn.ReLU()
            self.classifier = nn.Linear(width, num_classes)

        def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.act(self.features(image))
            logits = self.classifier(f.mean(dim=(2, 3)))
            cam = torch.einsum("kf,nfhw->nkhw", self.classifier.weight, f) + self.classifier.bias[None, :, None, None]
            return logits, cam

    torch.manual_seed(0)
    return CamNet().eval()


def _export(model, path: Path, size: int) -> None:
    import contextlib
    import io
    import logging
    import warnings

    import torch

    x = torch.zeros(2, 1, size, size)
    batch = torch.export.Dim("batch", min=1, max=1024)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), input_names=["image"], output_names=["logits", "cam"],
                          dynamic_shapes={"image": {0: batch}}, dynamo=True, external_data=False, opset_version=18,
                          verbose=False)


def _rate(fn, batch: int, seconds: float) -> float:
    """Images per second of ``fn()`` (one call = ``batch`` images): 1 warm-up, then repeat >= seconds."""
    fn()
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds and n >= 3:
            return n * batch / dt


def _package(onnx_path: Path, out: Path, arch: str, size: int) -> Path:
    from medviewer.inference.card import (
        InputSpec,
        ModelCard,
        OperatingPoint,
        Preprocessing,
        Provenance,
        save_card,
        sha256_file,
    )

    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(onnx_path, out / "model.onnx")
    card = ModelCard(
        name="bench-" + arch, version="0.0.0", description="untrained benchmark network", intended_use="benchmark",
        limitations="random weights", task="multiclass", labels=["NORMAL", "PNEUMONIA"], negative_label="NORMAL",
        input=InputSpec(height=size, width=size), preprocessing=Preprocessing(),
        operating_points=[OperatingPoint(label="PNEUMONIA", threshold=0.5, criterion="fixed", split="none",
                                         sensitivity=0.0, specificity=0.0)],
        training=Provenance(dataset="none", citation="-", data_licence="-", split="-", epochs=0, seed=0,
                            command="benchmarks/bench_inference.py"),
        license="Apache-2.0", onnx_opset=18, sha256=sha256_file(out / "model.onnx"))
    save_card(card, out)
    return out


def _folder(tmp: Path, n: int) -> tuple[Path, str]:
    kermany = (REPO / ".." / "shared" / "data" / "kermany-cxr-224" / "train").resolve()
    d = tmp / "images"
    d.mkdir()
    if kermany.is_dir():
        files = sorted((kermany / "NORMAL").glob("*.jpeg"))[: n // 2] + sorted((kermany / "PNEUMONIA").glob("*.jpeg"))[
            : n - n // 2]
        for f in files:
            os.symlink(f, d / f.name)
        return d, f"{len(files)} Kermany chest radiographs (224x224 JPEG)"
    import cv2

    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(d / f"img{i:03d}.png"), rng.integers(0, 255, (512, 512), np.uint8))
    return d, f"{n} synthetic 512x512 PNGs (../shared/data absent)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet18", choices=["densenet121", "resnet18"])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=32, help="images in the end-to-end folder")
    ap.add_argument("--seconds", type=float, default=2.0, help="minimum timing per measurement")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the best is reported")
    args = ap.parse_args()

    import onnxruntime as ort
    import torch

    from medviewer.inference.package import ModelPackage
    from medviewer.inference.session import CUDA, Session

    threads = torch.get_num_threads()
    print(f"# bench_inference  {platform.platform()}  python {platform.python_version()}  "
          f"torch {torch.__version__}  onnxruntime {ort.__version__}  cpus {os.cpu_count()}  torch threads {threads}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-inference-"))
    try:
        model = _cam_net(args.arch)
        t0 = time.perf_counter()
        _export(model, tmp / "model.onnx", args.size)
        print(f"network: {args.arch} + GAP + linear, in-graph CAM; input 1x{args.size}x{args.size}; "
              f"dynamo export {time.perf_counter() - t0:.1f} s, {(tmp / 'model.onnx').stat().st_size / 1e6:.1f} MB")
        pkg = ModelPackage.load(_package(tmp / "model.onnx", tmp / "pkg", args.arch, args.size))
        cpu = Session(pkg, "cpu")
        rng = np.random.default_rng(0)

        # parity first: the two runtimes must agree, or the speed comparison is meaningless
        x4 = rng.standard_normal((4, 1, args.size, args.size)).astype(np.float32)
        with torch.inference_mode():
            tl, tc = (t.numpy() for t in model(torch.from_numpy(x4)))
        ol, oc = cpu.run(x4)
        print(f"parity ORT vs torch: max |logits diff| {np.abs(tl - ol).max():.2e}, max |cam diff| "
              f"{np.abs(tc - oc).max():.2e}")

        print(f"\n## network only (images/s, best of {args.rounds} interleaved rounds, higher is better)")
        print(f"{'batch':>5} {'torch eager':>12} {'ORT CPU':>10} {'ratio ORT/torch':>16}")
        for b in (1, 16):
            x = rng.standard_normal((b, 1, args.size, args.size)).astype(np.float32)
            xt = torch.from_numpy(x)

            def torch_fn(xt=xt):
                with torch.inference_mode():
                    model(xt)

            r_torch = r_ort = 0.0
            for _ in range(args.rounds):  # interleaved, so load from other processes hits both alike
                r_torch = max(r_torch, _rate(torch_fn, b, args.seconds))
                r_ort = max(r_ort, _rate(lambda x=x: cpu.run(x), b, args.seconds))
            print(f"{b:>5} {r_torch:>12.1f} {r_ort:>10.1f} {r_ort / r_torch:>15.2f}x")

        cuda = Session(pkg, "cuda")
        if cuda.provider == CUDA:
            for b in (1, 16):
                x = rng.standard_normal((b, 1, args.size, args.size)).astype(np.float32)
                r = _rate(lambda x=x: cuda.run(x), b, args.seconds)
                print(f"ORT CUDA batch {b}: {r:.1f} images/s, latency {1000 * b / r:.2f} ms per call")
        else:
            print(f"ORT CUDA: not measured ({cuda.fallback_warning})")

        folder, what = _folder(tmp, args.images)
        print(f"\n## end to end over a folder: {what}")
        from medviewer.cli import main as cli
        from medviewer.imaging import display_image
        from medviewer.io import read_instance

        files = sorted(folder.iterdir())

        def naive() -> None:
            for f in files:
                inst = read_instance(f)
                cpu.predict([display_image(inst)], [inst.pixel_spacing])

        def infer(extra: list[str]) -> None:
            rc = cli(["infer", str(folder), "--model", str(pkg.path), "--out", str(tmp / "out"), "--provider", "cpu",
                      "--batch", "16", "--quiet", *extra])
            assert rc == 0, rc

        import contextlib
        import io

        def timed(fn) -> float:
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                fn()
            return len(files) / (time.perf_counter() - t0)

        naive()  # warm caches (file system, session)
        variants = {"naive loop (read, render, predict 1 by 1)": naive,
                    "medviewer infer --batch 16": lambda: infer([]),
                    "medviewer infer --batch 16 --overlays": lambda: infer(["--overlays"])}
        rates = dict.fromkeys(variants, 0.0)
        for _ in range(args.rounds):
            for label, fn in variants.items():
                rates[label] = max(rates[label], timed(fn))
        base = rates["naive loop (read, render, predict 1 by 1)"]
        print(f"(images/s, best of {args.rounds} interleaved rounds)")
        for label, r in rates.items():
            print(f"{label:<44} {r:>8.1f} images/s   {r / base:.2f}x vs naive")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
