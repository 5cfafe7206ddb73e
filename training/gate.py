"""The applicability gate: a small classifier that says what an image is before a model may speak about it.

A model trained on paediatric frontal chest films has no business scoring an adult chest film, a knee or a
CT slice, yet its softmax happily does. Headers help when present; PNG/JPEG files, research data and
de-identified DICOM often carry no age, view or body part. The gate decides from the pixels alone. It is
trained with real out-of-scope images -- outlier exposure (Hendrycks, Mazeika & Dietterich 2019, "Deep
Anomaly Detection with Outlier Exposure", ICLR) -- as a four-way classifier over
:data:`training.gate_data.GATE_CLASSES` (paediatric chest / adult chest / other radiograph / not a
radiograph), and ships inside the model package as a second ONNX file (``gate.onnx``, named and hashed in
the card; see :class:`medviewer.inference.card.GateSpec`).

Shortcuts are designed out rather than hoped away: the gate sees every image at 64 x 64 px (the NIH films'
native size; the Hannover films are ten times larger), every class gets the same augmentation (random
resized crops, rotation, flips, exposure, blur, sharpening, down-sampling to 24-64 px and back, noise,
CLAHE, black borders), and each class is sampled equally per epoch, each source equally within its class.

Usage (``python -m training.gate``)::

    python -m training.gate train --data ../shared/data --out runs/gate            # the shipped gate
    python -m training.gate loso --data ../shared/data --out runs/gate-loso        # leave-one-source-out
    python -m training.gate package --out resources/models/pneumonia-cxr --version 2.1.0   # into the package

``train`` writes ``gate.onnx``, ``gate.pt`` and ``report.json`` (threshold, validation per source, shortcut
checks); ``loso`` trains once per held-out source and reports each held-out source's detection rate;
``revalidate --version V --previous-epochs N`` puts a new ``loso`` run into a package's card and README.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data import Augment, discover, kermany_patient_id, split_by_patient
from training.evaluation import shifted_copies
from training.gate_data import CACHE, GATE_CLASSES, SourceImages, load_sources

__all__ = ["GATE_SIZE", "GateNet", "TrainConfig", "train_gate", "gate_probabilities", "choose_threshold",
           "export_gate_onnx", "bootstrap_rate", "main"]

#: the gate's input side, px
GATE_SIZE = 64
MEAN, STD = 0.5, 0.25


class GateNet(nn.Module):
    """Four conv stages (16-32-64-128 channels, two 3x3 conv + BN + ReLU each, max-pool between), global
    average pooling, dropout, linear: ``(N, 1, 64, 64)`` float32 normalised -> logits ``(N, K)``. 0.29 M
    parameters."""

    def __init__(self, num_classes: int = len(GATE_CLASSES), width: int = 16) -> None:
        super().__init__()
        chans = [1, width, 2 * width, 4 * width, 8 * width]
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(chans[i + 1]),
                       nn.ReLU(inplace=True), nn.Conv2d(chans[i + 1], chans[i + 1], 3, padding=1, bias=False),
                       nn.BatchNorm2d(chans[i + 1]), nn.ReLU(inplace=True)]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).mean(dim=(2, 3))
        return self.classifier(self.dropout(f))


def to_input(images_u8: np.ndarray) -> np.ndarray:
    """uint8 ``(N, S, S)`` squeezes -> float32 ``(N, 1, 64, 64)`` network input: area resize, ``/255``,
    ``(x - 0.5) / 0.25`` -- the card's :class:`~medviewer.spec.Preprocessing` of the gate."""
    out = np.empty((len(images_u8), 1, GATE_SIZE, GATE_SIZE), np.float32)
    for i, im in enumerate(images_u8):
        small = im if im.shape == (GATE_SIZE, GATE_SIZE) else cv2.resize(
            im, (GATE_SIZE, GATE_SIZE), interpolation=cv2.INTER_AREA)
        out[i, 0] = (small.astype(np.float32) / 255.0 - MEAN) / STD
    return out


_AUG = Augment.strong(hflip=True)


def augment(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same augmentation for every class (uint8 ``(CACHE, CACHE)`` -> same): :meth:`Augment.strong`
    with flips, then down-sampling to 24-64 px and back (p 0.35) and a black border (p 0.15)."""
    x = _AUG(img, rng)
    if rng.random() < 0.35:
        s = int(rng.integers(24, 65))
        x = cv2.resize(cv2.resize(x, (s, s), interpolation=cv2.INTER_AREA), (CACHE, CACHE),
                       interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.15:
        b = int(rng.integers(4, CACHE // 6))
        side = rng.integers(0, 4)
        x = x.copy()
        if side == 0:
            x[:b] = 0
        elif side == 1:
            x[-b:] = 0
        elif side == 2:
            x[:, :b] = 0
        else:
            x[:, -b:] = 0
    return x


@dataclass
class TrainConfig:
    """Hyper-parameters of one gate run (the defaults are the shipped gate's)."""

    epochs: int = 14
    samples_per_epoch: int = 6000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    seed: int = 0
    threads: int = 2


def _pool(sources: dict[str, SourceImages], part: str, use: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images, classes and per-image sampling weights of ``part`` of the sources in ``use``: each class gets
    the same total weight, each source the same share of its class."""
    imgs, cls, src = [], [], []
    for name in use:
        s = sources[name]
        idx = s.where(part)
        if len(idx) == 0:
            continue
        imgs.append(s.images[idx])
        cls += [s.gate_class] * len(idx)
        src += [name] * len(idx)
    images = np.concatenate(imgs)
    classes = np.asarray(cls, np.int64)
    srcs = np.asarray(src)
    w = np.zeros(len(classes), np.float64)
    for c in np.unique(classes):
        in_c = classes == c
        names = np.unique(srcs[in_c])
        for n in names:
            m = in_c & (srcs == n)
            w[m] = 1.0 / (len(names) * m.sum())
    return images, classes, w / w.sum()


def train_gate(sources: dict[str, SourceImages], use: list[str], cfg: TrainConfig, log=print) -> GateNet:
    """Train a :class:`GateNet` on the ``"train"`` part of the sources named in ``use``."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    images, classes, weights = _pool(sources, "train", use)
    model = GateNet()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * (cfg.samples_per_epoch // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps, pct_start=0.15)
    step = 0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        draw = rng.choice(len(images), size=cfg.samples_per_epoch, p=weights)
        total, correct, loss_sum = 0, 0, 0.0
        for b in range(cfg.samples_per_epoch // cfg.batch_size):
            idx = draw[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x = torch.from_numpy(to_input(np.stack([augment(images[i], rng) for i in idx])))
            y = torch.from_numpy(classes[idx])
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            total += len(idx)
        log(f"  epoch {epoch + 1}/{cfg.epochs}: loss {loss_sum / total:.3f}, train accuracy {correct / total:.3f} "
            f"({time.perf_counter() - t0:.0f} s)")
    return model.eval()


@torch.no_grad()
def gate_probabilities(model: GateNet, images_u8: np.ndarray, batch: int = 256) -> np.ndarray:
    """Softmax probabilities float64 ``(N, K)`` of uint8 ``(N, S, S)`` squeezes."""
    model.eval()
    out = []
    for i in range(0, len(images_u8), batch):
        out.append(torch.softmax(model(torch.from_numpy(to_input(images_u8[i:i + batch]))), 1).double().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(GATE_CLASSES)))


def choose_threshold(p_clean: np.ndarray, p_shifted: np.ndarray, clean_target: float = 0.005,
                     shifted_target: float = 0.01) -> float:
    """The in-scope threshold on P(paediatric chest): the largest value that rejects at most
    ``clean_target`` of the clean and ``shifted_target`` of the shifted calibration films."""
    return float(min(np.quantile(p_clean, clean_target), np.quantile(p_shifted, shifted_target)))


def bootstrap_rate(hits: np.ndarray, groups: list[str] | np.ndarray, n_boot: int = 2000, seed: int = 0
                   ) -> tuple[float, float, float]:
    """A rate with its 95 % percentile-bootstrap interval, resampling groups (patients): ``(rate, lo, hi)``."""
    hits = np.asarray(hits, np.float64)
    groups = np.asarray(groups)
    uniq, inv = np.unique(groups, return_inverse=True)
    sums = np.bincount(inv, weights=hits, minlength=len(uniq))
    counts = np.bincount(inv, minlength=len(uniq)).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniq), (n_boot, len(uniq)))
    rates = sums[draws].sum(1) / np.maximum(counts[draws].sum(1), 1)
    return float(hits.mean()), float(np.percentile(rates, 2.5)), float(np.percentile(rates, 97.5))


class _GateWithSoftmax(nn.Module):
    def __init__(self, model: GateNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(image)
        return logits, torch.softmax(logits, dim=1)


def export_gate_onnx(model: GateNet, path: str | Path, opset: int = 18) -> Path:
    """Write the gate as one self-contained ONNX file: input ``image`` float32 ``(N, 1, 64, 64)``, outputs
    ``logits`` and ``probabilities`` ``(N, K)``, dynamic batch."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapper = _GateWithSoftmax(model.cpu().eval()).eval()
    dummy = torch.zeros(2, 1, GATE_SIZE, GATE_SIZE)
    batch = torch.export.Dim("batch", min=1, max=1024)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (dummy,), str(path), input_names=["image"], output_names=["logits", "probabilities"],
                          dynamic_shapes={"image": {0: batch}}, dynamo=True, external_data=False,
                          opset_version=opset, verbose=False, optimize=True)
    for extra in path.parent.glob(path.name + ".data"):
        extra.unlink()
    return path


# -------------------------------------------------------------------------------------- evaluation
def _degrade(images: np.ndarray, px: int) -> np.ndarray:
    return np.stack([cv2.resize(cv2.resize(im, (px, px), interpolation=cv2.INTER_AREA), im.shape[::-1],
                                interpolation=cv2.INTER_LINEAR) for im in images])


def _crop_like_knees(images: np.ndarray, frac: float = 0.45, seed: int = 0) -> np.ndarray:
    """A square crop of ``frac`` of the side around a random point of the central half, squeezed back --
    framing like the knee set (a joint-centred crop)."""
    rng = np.random.default_rng(seed)
    out = []
    for im in images:
        s = int(im.shape[0] * frac)
        y, x = (rng.uniform(0.25, 0.75, 2) * im.shape[0] - s / 2).clip(0, im.shape[0] - s).astype(int)
        out.append(cv2.resize(im[y:y + s, x:x + s], im.shape[::-1], interpolation=cv2.INTER_AREA))
    return np.stack(out)


def _rate_row(name: str, p: np.ndarray, thr: float, groups, in_scope_expected: bool) -> dict:
    """One row: the share called out of scope (or, for in-distribution sets, falsely rejected)."""
    out_of_scope = p[:, 0] < thr
    hits = ~out_of_scope if in_scope_expected else out_of_scope
    rate, lo, hi = bootstrap_rate(hits.astype(float), groups)
    top = np.bincount(p.argmax(1), minlength=len(GATE_CLASSES)) / max(len(p), 1)
    return {"set": name, "n": int(len(p)), "patients": int(len(set(groups))),
            "measure": "in scope" if in_scope_expected else "out of scope",
            "rate": rate, "ci95": [lo, hi], "top_class": {c: float(v) for c, v in zip(GATE_CLASSES, top, strict=True)}}


def evaluate(model: GateNet, sources: dict[str, SourceImages], thr: float, parts: dict[str, str],
             shortcut_checks: bool = True) -> list[dict]:
    """Rows for each ``source -> part`` of ``parts`` (out-of-scope rate; for kermany the in-scope rate of its
    validation patients, clean and acquisition-shifted), plus the shortcut checks."""
    rows = []
    for name, part in parts.items():
        s = sources[name]
        idx = s.where(part) if part != "all" else np.arange(len(s.images))
        imgs, groups = s.images[idx], [s.patients[i] for i in idx]
        if name == "kermany":
            rows.append(_rate_row(f"paediatric validation ({part})", gate_probabilities(model, imgs), thr, groups, True))
            for sev in (1.0, 1.3):
                sh = np.stack(shifted_copies(list(imgs), copies=3, seed=0, severity=sev))
                rows.append(_rate_row(f"paediatric validation, 3 shifted copies (severity {sev})",
                                      gate_probabilities(model, sh), thr, [g for g in groups for _ in range(3)], True))
            if shortcut_checks:
                for px in (64, 32):
                    rows.append(_rate_row(f"paediatric validation degraded to {px} px and back",
                                          gate_probabilities(model, _degrade(imgs, px)), thr, groups, True))
                rows.append(_rate_row("paediatric validation cropped like the knees (45 % crop)",
                                      gate_probabilities(model, _crop_like_knees(imgs)), thr, groups, False))
        else:
            rows.append(_rate_row(f"{name} ({part})", gate_probabilities(model, imgs), thr, groups, False))
            if shortcut_checks and name == "hannover":
                rows.append(_rate_row(f"{name} ({part}) degraded to 64 px and back",
                                      gate_probabilities(model, _degrade(imgs, 64)), thr, groups, False))
    return rows


def _calibrate(model: GateNet, sources: dict[str, SourceImages]) -> tuple[float, dict]:
    cal = sources["kermany"].images[sources["kermany"].where("cal")]
    p_clean = gate_probabilities(model, cal)[:, 0]
    p_shift = gate_probabilities(model, np.stack(shifted_copies(list(cal), copies=3, seed=1, severity=1.3)))[:, 0]
    thr = choose_threshold(p_clean, p_shift)
    return thr, {"n_clean": int(len(cal)), "n_shifted": int(len(p_shift)),
                 "clean_false_rejection": float((p_clean < thr).mean()),
                 "shifted_false_rejection": float((p_shift < thr).mean())}


ALL = ["kermany", "hannover", "nih", "knee", "drr", "ct", "pydicom", "synthetic"]
VAL_PARTS = {"kermany": "val", "hannover": "val", "nih": "val", "knee": "val", "pydicom": "val", "synthetic": "val"}


def _fmt_rows(rows: list[dict]) -> str:
    lines = [f"{'set':<66} {'n':>5} {'pat.':>5}  {'measure':<13} {'rate':>6}  95 % CI (patients)"]
    for r in rows:
        lines.append(f"{r['set']:<66} {r['n']:>5} {r['patients']:>5}  {r['measure']:<13} {100 * r['rate']:5.1f}%  "
                     f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f}%")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    sources = load_sources(Path(args.data), Path(args.cache))
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = train_gate(sources, [s for s in ALL if s in sources], cfg)
    seconds = time.perf_counter() - t0
    thr, cal = _calibrate(model, sources)
    rows = evaluate(model, sources, thr, {k: v for k, v in VAL_PARTS.items() if k in sources})
    print(_fmt_rows(rows))
    torch.save(model.state_dict(), out / "gate.pt")
    export_gate_onnx(model, out / "gate.onnx")
    report = {"threshold": thr, "calibration": cal, "rows": rows, "train_seconds": seconds,
              "config": cfg.__dict__, "classes": GATE_CLASSES,
              "counts": {k: {p: int(len(v.where(p))) for p in ("train", "cal", "val")} for k, v in sources.items()}}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"threshold {thr:.4f} ({cal}); {seconds:.0f} s; wrote {out}")
    return 0


#: leave-one-source-out runs: (name, sources left out of training, held-out sets evaluated in full)
LOSO = [("adult chest: train on NIH only, test on Hannover", ["hannover"], {"hannover": "all"}),
        ("adult chest: train on Hannover only, test on NIH", ["nih"], {"nih": "all"}),
        ("other radiograph: no knees in training, test on knees", ["knee"], {"knee": "all"}),
        ("not a radiograph: no pydicom files in training, test on them", ["pydicom"], {"pydicom": "all"})]


def cmd_loso(args: argparse.Namespace) -> int:
    sources = load_sources(Path(args.data), Path(args.cache))
    cfg = TrainConfig(epochs=args.epochs, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for title, left_out, held in LOSO[: args.runs]:
        print(f"== {title}")
        model = train_gate(sources, [s for s in ALL if s in sources and s not in left_out], cfg)
        thr, cal = _calibrate(model, sources)
        rows = evaluate(model, sources, thr, {"kermany": "val", **held}, shortcut_checks=False)
        print(_fmt_rows(rows))
        runs.append({"run": title, "left_out": left_out, "epochs": cfg.epochs, "threshold": thr, "calibration": cal,
                     "rows": rows})
        (out / "loso.json").write_text(json.dumps(runs, indent=1))
    return 0


GATE_PHRASES = {"paediatric_chest": "a paediatric frontal chest film", "adult_chest": "an adult chest film",
                "other_radiograph": "a radiograph of another body part", "not_radiograph": "not a radiograph"}


def _validation_entries(report: dict, loso: list[dict]) -> list[dict]:
    out = []
    for r in report["rows"]:
        out.append({"protocol": "held-out patients of the sources trained on", "set": r["set"], "n": r["n"],
                    "patients": r["patients"], "measure": r["measure"], "rate": round(r["rate"], 4),
                    "ci_lo": round(r["ci95"][0], 4), "ci_hi": round(r["ci95"][1], 4)})
    for run in loso:
        for r in run["rows"]:
            if r["set"].startswith("paediatric"):
                name = f"{r['set']} [{run['run']}]"
            else:
                name = f"{r['set'].split(' (')[0]} [{run['run']}]"
            out.append({"protocol": "leave-one-source-out", "set": name, "n": r["n"], "patients": r["patients"],
                        "measure": r["measure"], "rate": round(r["rate"], 4), "ci_lo": round(r["ci95"][0], 4),
                        "ci_hi": round(r["ci95"][1], 4)})
    return out


LOSO_HEADING = "Leave-one-source-out (the gate retrained without the source, then tested on all of it)"


def _loso_table(loso: list[dict]) -> list[str]:
    """The README's leave-one-source-out table (its heading line first), one row per run and evaluated set."""
    epochs = sorted({int(run["epochs"]) for run in loso if "epochs" in run})
    how = f", {'/'.join(map(str, epochs))} epochs as the shipped gate" if epochs else ""
    lines = [f"{LOSO_HEADING}{how}:", "",
             "| run | held-out set | n | patients | measure | rate | 95 % CI |", "|---|---|---:|---:|---|---:|---|"]
    for run in loso:
        for r in run["rows"]:
            lines.append(f"| {run['run']} | {r['set']} | {r['n']} | {r['patients']} | {r['measure']} | "
                         f"{100 * r['rate']:.1f} % | {100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f} % |")
    return lines


def _readme_section(gate, report: dict, loso: list[dict]) -> str:
    lines = ["## Applicability gate (pixels): what the image is", "",
             f"- `{gate.file}` {gate.version}: a 0.29 M-parameter CNN at 64 x 64 px classifying "
             + ", ".join(gate.classes) + "; trained with real out-of-scope images (outlier exposure, Hendrycks et al. "
             "2019): " + gate.training,
             f"- Rule: out of scope when any present tag contradicts the card, OR P({gate.in_scope_class}) < "
             f"{gate.threshold:.3f}, OR the Mahalanobis score exceeds its threshold. The reason names what the image "
             "looks like, e.g. \"looks like an adult chest film (0.97)\".",
             f"- Threshold: {gate.calibration}", "",
             "| set (gate alone, patient-level split) | n | patients | measure | rate | 95 % CI |", "|---|---:|---:|---|---:|---|"]
    for r in report["rows"]:
        lines.append(f"| {r['set']} | {r['n']} | {r['patients']} | {r['measure']} | {100 * r['rate']:.1f} % | "
                     f"{100 * r['ci95'][0]:.1f}-{100 * r['ci95'][1]:.1f} % |")
    if loso:
        lines += ["", *_loso_table(loso)]
    lines += ["", "Not tested, for want of data: real lateral chest films, hands, arms, paediatric films from other "
              "hospitals or ages outside 1-5 years. The held-out NIH films are 64 px and the knee images crops: the gate "
              "sees every image at 64 px, and the shortcut rows above (paediatric films degraded to 64 and 32 px, "
              "Hannover films degraded to 64 px) show it does not key on resolution.", ""]
    return "\n".join(lines)


def _recalibrated_ood(package_dir: Path, card, data: Path, quantile: float):
    """The Mahalanobis threshold moved to the ``quantile`` of the gate's calibration films' acquisition-shifted
    copies (severity 1.3; patients held out of the gate, never of the validation split), through the app's
    path. With the gate recognising what an image is, the Mahalanobis score is the backstop for what nobody
    thought of, and must not reject the shifted films the test split is like. Returns the new ``OODSpec``."""
    from medviewer.inference import ModelPackage
    from medviewer.inference.session import Session
    from training.data import read_display_u8

    kidx = discover(data / "kermany-cxr-224" / "train", kermany_patient_id)
    parts = split_by_patient(kidx, 0.15, 0.0, 0)
    train = kidx.take(parts["train"])
    cal = train.take(split_by_patient(train, 0.10, 0.0, 1)["val"])
    val = kidx.take(parts["val"])
    sess = Session(ModelPackage.load(package_dir), "cpu")

    def scores(images: list[np.ndarray]) -> np.ndarray:
        out = []
        for i in range(0, len(images), 32):
            out += [p.ood_score for p in sess.predict(images[i:i + 32], regions="none")]
        return np.asarray(out, np.float64)

    def grey(paths) -> list[np.ndarray]:
        return [im if im.ndim == 2 else im[..., 0] for im in (read_display_u8(s.path) for s in paths)]

    cal_imgs, val_imgs = grey(cal.samples), grey(val.samples)
    thr = float(np.quantile(scores(shifted_copies(cal_imgs, copies=3, seed=1, severity=1.3)), quantile))
    v = scores(val_imgs)
    vs = scores(shifted_copies(val_imgs, copies=3, seed=5, severity=1.3))
    ood = card.ood
    return ood.model_copy(update={
        "threshold": thr, "target_false_rejection": round(1 - quantile, 6), "validation_false_rejection": float(np.mean(v > thr)),
        "shifted_false_rejection": float(np.mean(vs > thr)),
        "calibration": (f"threshold = the {100 * quantile:.1f} % quantile of the scores of 3 acquisition-shifted copies "
                        f"(severity 1.3) of the {len(cal_imgs)} gate-calibration films (10 % of the training patients); "
                        f"the previous threshold {ood.threshold:.3f} rejected {100 * float(np.mean(vs > ood.threshold)):.1f} % "
                        "of the shifted validation films (telling what an image is is now the applicability gate's "
                        "job); statistics fitted on "
                        f"{ood.n_fit} training images")})


def _copy_package(src: Path, out: Path) -> None:
    """``out`` becomes a copy of the package ``src`` (replaced when it exists; nothing when it is ``src``)."""
    import shutil

    if out.resolve() != src.resolve():
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(src, out)


def cmd_package(args: argparse.Namespace) -> int:
    """Add the trained gate to a copy of an existing package: schema 3, new version, history kept."""
    import shutil

    from medviewer.inference.card import GateSpec, HistoryEntry, load_card
    from medviewer.spec import InputSpec, Preprocessing
    from training.export import finalize_files

    src, gate_dir, out = Path(args.package), Path(args.gate), Path(args.out)
    prev = load_card(src)
    report = json.loads((gate_dir / "report.json").read_text())
    loso_file = Path(args.loso) / "loso.json" if args.loso else None
    loso = json.loads(loso_file.read_text()) if loso_file and loso_file.is_file() else []
    _copy_package(src, out)
    shutil.copy2(gate_dir / "gate.onnx", out / "gate.onnx")
    cal = report["calibration"]
    counts = report["counts"]
    trained = ", ".join(f"{k} {v['train']}" for k, v in counts.items() if v["train"])
    gate = GateSpec(
        file="gate.onnx", version=args.gate_version,
        input=InputSpec(name="image", channels=1, height=GATE_SIZE, width=GATE_SIZE),
        preprocessing=Preprocessing(source="display_u8", resize="squeeze", interpolation="area", scale=1 / 255,
                                    mean=[MEAN], std=[STD]),
        output="probabilities", classes=list(GATE_CLASSES), in_scope_class=GATE_CLASSES[0],
        phrases={c: GATE_PHRASES[c] for c in GATE_CLASSES}, threshold=float(report["threshold"]),
        calibration=(f"the largest P(paediatric_chest) that rejects <= 0.5 % of {cal['n_clean']} calibration films "
                     f"(10 % of the training patients, held out of the gate's training) and <= 1 % of their "
                     f"{cal['n_shifted']} acquisition-shifted copies (severity 1.3); there: "
                     f"{100 * cal['clean_false_rejection']:.1f} % / {100 * cal['shifted_false_rejection']:.1f} %"),
        training=(f"training images per source: {trained}; each class sampled equally, each source equally within its "
                  f"class; {report['config']['epochs']} epochs, {report['train_seconds'] / 60:.0f} min on 2 CPU cores; "
                  "python -m training.gate train --data ../shared/data --out runs/gate"),
        validation=_validation_entries(report, loso))
    history = [HistoryEntry(version=prev.version, created=prev.created,
                            changes="no applicability gate: pixels judged by the Mahalanobis score alone "
                                    f"(threshold {prev.ood.threshold:.4f})" if prev.ood else "no applicability gate",
                            metrics=prev.metrics)] + list(prev.history)
    limitations = prev.limitations + (
        " Outside its intended use the app stays silent: the applicability gate recognises adult chest films, other "
        "radiographs and non-radiographs from pixels alone, but it has not been tested on real lateral chest films, "
        "hands or arms.")
    card = prev.model_copy(update={"schema_version": 3, "version": args.version, "gate": gate, "history": history,
                                   "limitations": limitations})
    if args.ood_quantile is not None and card.ood is not None:
        card = card.model_copy(update={"ood": _recalibrated_ood(src, card, Path(args.data), args.ood_quantile)})
    readme = (out / "README.md").read_text(encoding="utf-8")
    if card.ood is not None and prev.ood is not None and card.ood.threshold != prev.ood.threshold:
        lines = readme.split("\n")
        for i, line in enumerate(lines):
            if line.startswith("- Threshold ") and f"{prev.ood.threshold:.3f}" in line:
                lines[i] = f"- Threshold {card.ood.threshold:.3f}: {card.ood.calibration}."
            elif line.startswith("- False rejections: ") and "shifted validation" in line:
                lines[i] = (f"- False rejections (this score alone): {100 * card.ood.validation_false_rejection:.1f} % of "
                            f"validation images, {100 * (card.ood.shifted_false_rejection or 0):.1f} % of their "
                            "shifted copies (severity 1.3).")
        readme = "\n".join(lines)
    readme = readme.replace(f"# {prev.name} {prev.version}", f"# {prev.name} {args.version}", 1)
    marker = "## History"
    section = _readme_section(gate, report, loso)
    readme = readme.replace(marker, section + "\n" + marker, 1) if marker in readme else readme + "\n" + section
    readme = readme.replace(marker + "\n", marker + "\n\n- " + prev.version + ": " + history[0].changes + "\n", 1)
    (out / "README.md").write_text(readme, encoding="utf-8")
    card = finalize_files(out, card)
    print(f"wrote {out}: {card.name} {card.version} (schema 3) with {gate.file} (threshold {gate.threshold:.4f})")
    return 0


def cmd_revalidate(args: argparse.Namespace) -> int:
    """Replace a package's leave-one-source-out evidence (the card's gate validation entries and the README's
    table) with a new ``loso`` run: new version, the previous one in the history, every file re-hashed. The
    graphs and thresholds are not touched; the change is what the card says about transfer."""
    from medviewer.inference.card import HistoryEntry, load_card
    from training.export import finalize_files

    src, out = Path(args.package), Path(args.out)
    prev = load_card(src)
    if prev.gate is None:
        raise SystemExit(f"{src}: the card has no applicability gate")
    loso = json.loads((Path(args.loso) / "loso.json").read_text())
    _copy_package(src, out)
    old_loso = [v for v in prev.gate.validation if v.get("protocol") == "leave-one-source-out"]
    held = [v for v in old_loso if not str(v["set"]).startswith("paediatric")]
    summary = ", ".join(f"{str(v['set']).split(' [')[0]} {100 * float(v['rate']):.1f} %" for v in held)
    kept = [v for v in prev.gate.validation if v.get("protocol") != "leave-one-source-out"]
    gate = prev.gate.model_copy(update={"validation": kept + _validation_entries({"rows": []}, loso)})
    history = [HistoryEntry(version=prev.version, created=prev.created,
                            changes=f"same graphs and thresholds; leave-one-source-out estimated with "
                                    f"{args.previous_epochs}-epoch gates ({summary or 'none'})",
                            metrics=prev.metrics)] + list(prev.history)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    card = prev.model_copy(update={"version": args.version, "created": created, "gate": gate, "history": history})
    readme = (out / "README.md").read_text(encoding="utf-8").split("\n")
    start = next(i for i, line in enumerate(readme) if line.startswith(LOSO_HEADING))
    stop = next(i for i in range(start + 2, len(readme)) if not readme[i].startswith("|"))
    readme[start:stop] = _loso_table(loso)
    text = "\n".join(readme).replace(f"# {prev.name} {prev.version}", f"# {prev.name} {args.version}", 1)
    text = text.replace("## History\n", f"## History\n\n- {prev.version}: {history[0].changes}", 1)
    (out / "README.md").write_text(text, encoding="utf-8")
    card = finalize_files(out, card)
    print(f"wrote {out}: {card.name} {card.version} with the leave-one-source-out runs of {args.loso}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m training.gate train|loso|package|revalidate``; see the module docstring."""
    parser = argparse.ArgumentParser(prog="python -m training.gate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("train", cmd_train), ("loso", cmd_loso)):
        p = sub.add_parser(name)
        p.add_argument("--data", default="../shared/data", help="the shared data folder (default: %(default)s)")
        p.add_argument("--out", required=True, help="output folder")
        p.add_argument("--cache", default="/tmp/medviewer-gate-cache", help="decoded-image cache (default: %(default)s)")
        p.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="epochs (default: %(default)s)")
        p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
        if name == "loso":
            p.add_argument("--runs", type=int, default=len(LOSO), help="how many of the LOSO runs (default: all)")
        p.set_defaults(fn=fn)
    def package_args(p: argparse.ArgumentParser) -> None:  # what both package-writing commands take
        p.add_argument("--package", default="resources/models/pneumonia-cxr",
                       help="the package (default: %(default)s)")
        p.add_argument("--loso", default="runs/gate-loso", help="the output of 'loso' (default: %(default)s)")
        p.add_argument("--out", required=True, help="the new package folder (may be --package itself)")
        p.add_argument("--version", required=True, help="the new package version, e.g. 2.1.0")

    p = sub.add_parser("package", help="add a trained gate to a copy of a model package (card schema 3)")
    package_args(p)
    p.add_argument("--gate", default="runs/gate", help="the output of 'train' (default: %(default)s)")
    p.add_argument("--gate-version", default="1.0.0", help="the gate's version (default: %(default)s)")
    p.add_argument("--ood-quantile", type=float, default=None,
                   help="move the Mahalanobis threshold to this quantile of the calibration films' shifted copies")
    p.add_argument("--data", default="../shared/data", help="the shared data folder (default: %(default)s)")
    p.set_defaults(fn=cmd_package)
    p = sub.add_parser("revalidate", help="replace a package's leave-one-source-out evidence with a new 'loso' run")
    package_args(p)
    p.add_argument("--previous-epochs", type=int, required=True,
                   help="epochs of the gates behind the evidence being replaced (for the history)")
    p.set_defaults(fn=cmd_revalidate)
    args = parser.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
