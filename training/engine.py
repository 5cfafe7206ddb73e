"""Training engine: AdamW, warm-up + cosine (or one-cycle), early stopping on validation AUROC, checkpoints.

Runs on CPU or CUDA (AMP on CUDA), single process or distributed data parallel under ``torchrun``
(gloo on CPU, NCCL on GPU). A run directory holds ``config.json``, ``split.csv``, ``log.csv`` (one row
per epoch), ``train.log``, ``last.pt`` (for ``--resume``), ``best.pt`` (best validation AUROC),
``val_predictions.csv``, ``metrics.json`` and ``plots/``.

Example
-------
>>> cfg = FitConfig(data="../shared/data/kermany-cxr-224", out="runs/cxr", epochs=30)
>>> result = fit(cfg)
>>> result.val_metrics["auroc"]
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from medviewer.inference.card import InputSpec, Preprocessing, ResizeMode
from training.data import (
    Augment,
    DatasetIndex,
    ImageDataset,
    class_weights,
    discover,
    kermany_patient_id,
    load_fitted,
    regex_patient_rule,
    split_by_patient,
)
from training.metrics import binary_metrics, choose_operating_point
from training.models import CAMNet, build_model

__all__ = [
    "FitConfig",
    "FitResult",
    "DistInfo",
    "resolve_device",
    "prepare_data",
    "predict_probs",
    "fit",
    "fit_arrays",
    "replay_command",
    "load_checkpoint_model",
    "make_optimizer",
]

log = logging.getLogger("training")


@dataclass
class FitConfig:
    """Everything that determines a training run (saved as the run's ``config.json``)."""

    data: str = ""
    out: str = "runs/fit"
    model: str = "compact"
    input_size: int = 224
    resize: str = "squeeze"
    mean: float = 0.5
    std: float = 0.25
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    schedule: str = "cosine"  # cosine | onecycle | constant
    patience: int = 10
    val_fraction: float = 0.15
    test_fraction: float = 0.0
    seed: int = 0
    balance: str = "weights"  # weights | sampler | none
    augment: bool = True
    augment_preset: str = "standard"  # standard | strong (Augment.strong: acquisition-shift terms)
    mixup: float = 0.0  # > 0: mixup (Zhang et al. 2018) with lambda ~ Beta(mixup, mixup)
    hflip: bool = False
    label_smoothing: float = 0.0
    dropout: float = 0.2
    ema: float = 0.0
    device: str = "auto"
    workers: int = 0
    threads: int = 0
    amp: bool = True
    weights: str | None = None
    resume: bool = False
    limit: int | None = None
    patient_regex: str | None = None
    positive: str | None = None
    operating_point: str = "youden"
    cache_dir: str | None = None
    bootstrap: int = 1000
    progress: bool = True
    max_minutes: float = 0.0  # > 0: time budget; the epoch count is fixed after epoch 1 (see fit)
    fold: int | None = None  # set by `cv`: use patient fold `fold` of `folds` as validation
    folds: int = 5
    command: str = ""
    task: str = "multiclass"  # multiclass (softmax, one positive label) | multilabel (sigmoid per finding)
    labels: str | None = None  # multilabel: comma-separated findings (default: from the table)
    loader: str = "auto"  # memory (decoded images cached in RAM) | stream (read per item) | auto (see fit_multilabel)
    optimizer: str = "adamw"  # adamw | adam
    plateau_patience: int = 1  # --schedule plateau: epochs without validation-loss gain before lr /= 10
    preset: str | None = None  # e.g. chexnet (training.multilabel.PRESETS)

    def input_spec(self) -> InputSpec:
        return InputSpec(channels=1, height=self.input_size, width=self.input_size)

    def preprocessing(self) -> Preprocessing:
        return Preprocessing(resize=ResizeMode(self.resize), mean=[self.mean], std=[self.std])


@dataclass
class FitResult:
    """What :func:`fit` returns (rank 0; other ranks get ``val_metrics == {}``)."""

    run_dir: Path
    best_epoch: int
    epochs_run: int
    val_metrics: dict
    operating_point: dict
    seconds: float
    history: list[dict] = field(default_factory=list)
    planned_epochs: int = 0


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU. Raises ValueError for ``cuda`` without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(name)


def _init_distributed(device_name: str) -> tuple[DistInfo, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), resolve_device(device_name)
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device_name)
    if dev.type == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank, world, local), dev


def _seed_all(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


class BalancedSampler(torch.utils.data.Sampler[int]):
    """Class-balanced sampling with replacement, sharded across ranks; same draw on every rank per epoch."""

    def __init__(self, labels: np.ndarray, seed: int, rank: int = 0, world: int = 1) -> None:
        w = class_weights(labels, int(labels.max()) + 1)[labels]
        self.weights = torch.as_tensor(w, dtype=torch.float64)
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0
        self.n = math.ceil(len(labels) / world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        idx = torch.multinomial(self.weights, self.n * self.world, replacement=True, generator=g)
        return iter(idx[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return self.n


class ShuffleSampler(BalancedSampler):
    """Seeded permutation per epoch, padded to a multiple of the world size and sharded."""

    def __init__(self, n: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.len_data = n
        self.seed, self.rank, self.world, self.epoch = seed, rank, world, 0
        self.n = math.ceil(n / world)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        idx = torch.randperm(self.len_data, generator=g)
        idx = torch.cat([idx, idx[: self.n * self.world - self.len_data]])
        return iter(idx[self.rank :: self.world].tolist())


@dataclass
class PreparedData:
    """Training and validation images and their indices: cached uint8 arrays, or None for each part when the
    images are streamed from disk (``stream``; ``FitConfig.loader``)."""

    classes: list[str]
    train: DatasetIndex
    val: DatasetIndex
    test: DatasetIndex | None
    x_train: np.ndarray | None
    x_val: np.ndarray | None
    x_test: np.ndarray | None
    split_desc: str
    stream: bool = False


def _patient_rule(cfg: FitConfig) -> Callable:
    return regex_patient_rule(cfg.patient_regex) if cfg.patient_regex else kermany_patient_id


def _limit(index: DatasetIndex, n: int, seed: int) -> DatasetIndex:
    """A stratified random subset of about ``n`` images (for smoke tests and quick searches)."""
    rng = np.random.default_rng(seed)
    labels = index.labels
    keep: list[int] = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(2, round(n * len(idx) / len(labels)))
        keep.extend(rng.permutation(idx)[:k].tolist())
    return index.take(sorted(keep))


def split_index(cfg: FitConfig) -> tuple[DatasetIndex, DatasetIndex, DatasetIndex | None, str]:
    """Train / validation (/ internal test) indices for a config: layout splits or a patient split."""
    index = discover(cfg.data, _patient_rule(cfg))
    pool = index.subset("train") if "train" in index.splits else index.subset(None)
    if cfg.limit:
        pool = _limit(pool, cfg.limit, cfg.seed)
    if cfg.fold is not None:
        from sklearn.model_selection import StratifiedGroupKFold

        groups = [s.patient_id for s in pool.samples]
        skf = StratifiedGroupKFold(n_splits=cfg.folds, shuffle=True, random_state=cfg.seed)
        tr, va = list(skf.split(np.zeros(len(pool)), pool.labels, groups))[cfg.fold]
        return (pool.take(tr), pool.take(va), None,
                f"patient-level fold {cfg.fold + 1}/{cfg.folds} (StratifiedGroupKFold, seed {cfg.seed})")
    if "val" in index.splits and len(index.subset("val")) >= 50 and cfg.val_fraction == 0:
        return pool, index.subset("val"), None, "layout val/ folder"
    parts = split_by_patient(pool, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    test = pool.take(parts["test"]) if parts["test"] else None
    desc = f"validation (patient-level, stratified, {cfg.val_fraction:.0%} of train, seed {cfg.seed})"
    return pool.take(parts["train"]), pool.take(parts["val"]), test, desc


#: ``loader="auto"`` caches the decoded images in memory while they take at most this many bytes
MEMORY_LIMIT = 2 * 1024**3


def prepare_data(cfg: FitConfig) -> PreparedData:
    """Index, split by patient and cache the fitted images of a run (``cfg.loader``: ``memory``; ``stream``:
    nothing is decoded here, each image is read when drawn; ``auto``: memory while the decoded training and
    validation images take at most :data:`MEMORY_LIMIT` bytes)."""
    train, val, test, desc = split_index(cfg)
    spec, inp = cfg.preprocessing(), cfg.input_spec()
    if cfg.loader not in ("auto", "memory", "stream"):
        raise ValueError(f"unknown loader {cfg.loader!r} (auto, memory or stream)")
    n = len(train) + len(val)
    if cfg.loader == "stream" or (cfg.loader == "auto" and n * inp.height * inp.width * inp.channels > MEMORY_LIMIT):
        return PreparedData(train.classes, train, val, test, None, None, None, desc, stream=True)
    kw = {"workers": 2, "cache_dir": cfg.cache_dir, "progress": cfg.progress}
    x_tr = load_fitted([s.path for s in train.samples], spec, inp, **kw)
    x_va = load_fitted([s.path for s in val.samples], spec, inp, **kw)
    x_te = load_fitted([s.path for s in test.samples], spec, inp, **kw) if test is not None else None
    return PreparedData(train.classes, train, val, test, x_tr, x_va, x_te, desc)


@torch.no_grad()
def predict_probs(model: nn.Module, images_u8: np.ndarray, spec: Preprocessing, device: torch.device,
                  batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities float64 ``(N, K)`` for fitted uint8 images ``(N, H, W, C)``, no augmentation."""
    model.eval()
    ds = ImageDataset(images_u8, np.zeros(len(images_u8), np.int64), spec)
    out = []
    for i in range(0, len(ds), batch_size):
        x = torch.stack([ds[j][0] for j in range(i, min(i + batch_size, len(ds)))]).to(device)
        out.append(torch.softmax(model(x).float(), dim=1).cpu().double().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2))


@torch.no_grad()
def part_probs(model: nn.Module, data: PreparedData, part: str, cfg: FitConfig, device: torch.device,
               batch_size: int = 64) -> np.ndarray:
    """Softmax probabilities float64 ``(N, K)`` on the ``"val"`` or ``"test"`` part: from the cached images,
    or, when streamed, read from disk through a DataLoader with ``cfg.workers`` processes."""
    x = data.x_val if part == "val" else data.x_test
    spec = cfg.preprocessing()
    if x is not None:
        return predict_probs(model, x, spec, device, batch_size)
    from training.multilabel_data import TargetDataset

    idx = data.val if part == "val" else data.test
    ds = TargetDataset(np.zeros(len(idx), np.int64), spec, cfg.input_spec(), paths=[s.path for s in idx.samples])
    model.eval()
    # the loader gets its own generator: iterating one draws a seed, which must not move the global RNG (dropout)
    out = [torch.softmax(model(xb.to(device)).float(), dim=1).cpu().double().numpy()
           for xb, _ in torch.utils.data.DataLoader(ds, batch_size=batch_size, num_workers=cfg.workers,
                                                          generator=torch.Generator())]
    return np.concatenate(out) if out else np.zeros((0, len(data.classes)))


def _param_groups(model: nn.Module, wd: float) -> list[dict]:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(cfg: FitConfig, model: nn.Module) -> torch.optim.Optimizer:
    """``cfg.optimizer``: AdamW (decoupled weight decay; Loshchilov & Hutter 2019) or Adam (Kingma & Ba
    2015, L2 weight decay), no decay on biases and norm parameters; learning rate ``cfg.lr``.

    Raises ValueError for another name."""
    cls = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}.get(cfg.optimizer)
    if cls is None:
        raise ValueError(f"unknown optimizer {cfg.optimizer!r} (adamw or adam)")
    return cls(_param_groups(model, cfg.weight_decay), lr=cfg.lr)


def _scheduler(opt: torch.optim.Optimizer, cfg: FitConfig, steps_per_epoch: int,
               plan: dict) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-step schedule: linear warm-up then cosine to 1 % over ``plan["epochs"]`` (read at every step)."""
    if cfg.schedule == "onecycle":
        total = max(1, cfg.epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=0.25)
    warm = int(cfg.warmup_epochs * steps_per_epoch)

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "constant":
            return 1.0
        total = max(1, plan["epochs"] * steps_per_epoch)
        t = min(1.0, (step - warm) / max(1, total - warm))
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def _setup_logging(run_dir: Path, main: bool) -> None:
    if not main:
        return
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.handlers = [h for h in log.handlers if not isinstance(h, logging.FileHandler)] + [fh]
    log.setLevel(logging.INFO)


def _write_split(run_dir: Path, data: PreparedData) -> None:
    with open(run_dir / "split.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patient_id", "split"])
        for name, idx in (("train", data.train), ("val", data.val), ("test", data.test)):
            for s in idx.samples if idx is not None else []:
                w.writerow([str(s.path), data.classes[s.label], s.patient_id, name])


def load_checkpoint_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[CAMNet, dict]:
    """Rebuild the network of a checkpoint (``best.pt``/``last.pt``) and its metadata.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    ck = torch.load(path, map_location="cpu", weights_only=False)
    cfg = ck["config"]
    model = build_model(cfg["model"], num_classes=len(ck["classes"]), dropout=cfg.get("dropout", 0.2)) \
        if cfg["model"].startswith("compact") else build_model(cfg["model"], num_classes=len(ck["classes"]))
    model.load_state_dict(ck["model"])
    model.to(device).eval()
    return model, ck


def _make_model(cfg: FitConfig, k: int) -> CAMNet:
    kw = {"dropout": cfg.dropout} if cfg.model.startswith("compact") else {}
    return build_model(cfg.model, num_classes=k, weights=cfg.weights, **kw)


def fit_arrays(cfg: FitConfig, data: PreparedData) -> FitResult:
    """Train on prepared (cached) data; see :func:`fit`."""
    t_start = time.time()
    dinfo, device = _init_distributed(cfg.device)
    run_dir = Path(cfg.out)
    if dinfo.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        _write_split(run_dir, data)
    _setup_logging(run_dir, dinfo.main)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif dinfo.world > 1 and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dinfo.world))
    _seed_all(cfg.seed)
    k = len(data.classes)
    pos = data.classes.index(cfg.positive) if cfg.positive else k - 1
    spec = cfg.preprocessing()
    model = _make_model(cfg, k).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if dinfo.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    ema = None
    if cfg.ema > 0:
        from torch.optim.swa_utils import AveragedModel

        def ema_avg(avg: torch.Tensor, cur: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
            d = min(cfg.ema, (1.0 + float(n)) / (10.0 + float(n)))  # warm-up: early weights are not over-kept
            return avg * d + cur * (1.0 - d)

        ema = AveragedModel(model, avg_fn=ema_avg, use_buffers=True)

    y_tr = data.train.labels
    y_va = data.val.labels
    aug = (Augment.strong(hflip=cfg.hflip) if cfg.augment_preset == "strong" else Augment(hflip=cfg.hflip))
    if data.stream:
        from training.multilabel_data import TargetDataset

        ds = TargetDataset(y_tr, spec, cfg.input_spec(), paths=[s.path for s in data.train.samples],
                           augment=aug if cfg.augment else None, seed=cfg.seed)
    else:
        ds = ImageDataset(data.x_train, y_tr, spec, aug if cfg.augment else None, cfg.seed)
    mix_rng = np.random.default_rng((cfg.seed, dinfo.rank, 7))
    sampler: BalancedSampler = (BalancedSampler(y_tr, cfg.seed, dinfo.rank, dinfo.world) if cfg.balance == "sampler"
                                else ShuffleSampler(len(y_tr), cfg.seed, dinfo.rank, dinfo.world))
    per_rank_bs = max(1, cfg.batch_size // dinfo.world)
    loader = torch.utils.data.DataLoader(ds, batch_size=per_rank_bs, sampler=sampler, num_workers=cfg.workers,
                                         drop_last=len(sampler) > per_rank_bs, pin_memory=device.type == "cuda")
    cw = torch.as_tensor(class_weights(y_tr, k), device=device) if cfg.balance == "weights" else None
    crit = nn.CrossEntropyLoss(weight=cw, label_smoothing=cfg.label_smoothing)
    opt = make_optimizer(cfg, model)
    if cfg.max_minutes > 0 and (cfg.schedule == "onecycle" or cfg.warmup_epochs < 1):
        raise ValueError("--max-minutes needs --schedule cosine or constant and --warmup-epochs >= 1")
    plan = {"epochs": cfg.epochs, "truncated": False}
    clock = {"frac": 0.0, "t0": time.time()}
    sched = _scheduler(opt, cfg, len(loader), plan)
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    start_epoch, best_auc, best_loss, best_epoch, bad, history = 0, -1.0, math.inf, -1, 0, []
    last_path, best_path = run_dir / "last.pt", run_dir / "best.pt"
    if cfg.resume and last_path.is_file():
        ck = torch.load(last_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        if ema is not None and ck.get("ema") is not None:
            ema.load_state_dict(ck["ema"])
        start_epoch, best_auc, best_loss, best_epoch = ck["epoch"] + 1, ck["best_auc"], ck["best_loss"], ck["best_epoch"]
        bad, history = ck["bad_epochs"], ck["history"]
        clock["t0"] = time.time() - ck.get("elapsed", 0.0)
        plan["epochs"] = ck.get("planned_epochs", cfg.epochs)
        if dinfo.main:
            log.info("resumed from %s at epoch %d", last_path, start_epoch)
    meta = {"classes": data.classes, "config": dataclasses.asdict(cfg), "input": cfg.input_spec().model_dump(),
            "preprocessing": spec.model_dump(mode="json"), "positive": data.classes[pos],
            "split": data.split_desc, "counts": {"train": data.train.counts(), "val": data.val.counts()}}
    if dinfo.main:
        log.info("model %s (%.2f M parameters) on %s, world %d; train %s, val %s", cfg.model,
                 sum(p.numel() for p in model.parameters()) / 1e6, device, dinfo.world,
                 data.train.counts(), data.val.counts())

    stop = torch.zeros(1)
    epoch = start_epoch - 1
    while epoch + 1 < plan["epochs"]:
        epoch += 1
        t0 = time.time()
        net.train()
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        tot, nb = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{plan['epochs']}", disable=not (cfg.progress and dinfo.main),
                   leave=False, file=sys.stderr)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            if cfg.mixup > 0:  # mixup: convex combinations of image pairs and of their losses
                lam = float(mix_rng.beta(cfg.mixup, cfg.mixup))
                perm = torch.as_tensor(mix_rng.permutation(len(y)), device=device)
                x = lam * x + (1.0 - lam) * x[perm]
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                out = net(x)
                loss = crit(out, y) if cfg.mixup <= 0 else lam * crit(out, y) + (1.0 - lam) * crit(out, y[perm])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            if ema is not None:
                ema.update_parameters(model)
            tot += float(loss.detach())
            nb += 1
            bar.set_postfix(loss=f"{tot / nb:.4f}")
            if cfg.max_minutes > 0:
                clock["frac"] = (time.time() - clock["t0"]) / (60 * cfg.max_minutes)
                if dinfo.world > 1:  # all ranks follow rank 0's clock so they stop at the same step
                    f = torch.tensor([clock["frac"]])
                    dist.broadcast(f, src=0)
                    clock["frac"] = float(f)
                if clock["frac"] >= 1.0:  # the planned epochs overran the budget: stop here (logged)
                    plan["truncated"] = True
                    break
        if epoch == 0 and cfg.max_minutes > 0:
            # Time budget -> a fixed epoch count, decided once after epoch 1 (which is all warm-up, so the
            # schedule is exactly that of `--epochs N`: the run can be replayed without a budget).
            n = torch.tensor([max(1, min(cfg.epochs, int(0.92 * 60 * cfg.max_minutes / (time.time() - t0))))])
            if dinfo.world > 1:
                dist.broadcast(n, src=0)
            plan["epochs"] = int(n)
            if dinfo.main:
                log.info("time budget %.0f min: %d epochs", cfg.max_minutes, plan["epochs"])
        if dinfo.main:
            eval_model = ema.module if ema is not None else model
            probs = part_probs(eval_model, data, "val", cfg, device)
            yv = torch.as_tensor(y_va)
            val_loss = float(nn.functional.nll_loss(torch.log(torch.as_tensor(probs).clamp_min(1e-12)), yv))
            yb = (y_va == pos).astype(int)
            from sklearn.metrics import roc_auc_score

            auc = float(roc_auc_score(yb, probs[:, pos])) if len(np.unique(yb)) == 2 else float("nan")
            acc = float(np.mean(probs.argmax(1) == y_va))
            row = {"epoch": epoch + 1, "train_loss": tot / max(1, nb), "val_loss": val_loss, "val_auroc": auc,
                   "val_accuracy": acc, "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0}
            history.append(row)
            improved = auc > best_auc + 1e-6 or (abs(auc - best_auc) <= 1e-6 and val_loss < best_loss)
            if improved:
                best_auc, best_loss, best_epoch, bad = auc, val_loss, epoch + 1, 0
                torch.save({**meta, "model": eval_model.state_dict(), "epoch": epoch + 1, "val_auroc": auc}, best_path)
            else:
                bad += 1
            torch.save({**meta, "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                        "ema": ema.state_dict() if ema is not None else None, "epoch": epoch,
                        "best_auc": best_auc, "best_loss": best_loss, "best_epoch": best_epoch,
                        "bad_epochs": bad, "history": history, "elapsed": time.time() - clock["t0"],
                        "planned_epochs": plan["epochs"]}, last_path)
            with open(run_dir / "log.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                w.writeheader()
                w.writerows(history)
            log.info("epoch %d: train loss %.4f, val loss %.4f, val AUROC %.4f, val acc %.4f, %.0f s%s",
                     epoch + 1, row["train_loss"], val_loss, auc, acc, row["seconds"], " *" if improved else "")
            if not cfg.progress:
                print(f"epoch {epoch + 1}/{plan['epochs']}: loss {row['train_loss']:.4f} val_loss {val_loss:.4f} "
                      f"val_auroc {auc:.4f} val_acc {acc:.4f} ({row['seconds']:.0f} s){' *' if improved else ''}",
                      flush=True)
            stop[0] = float((cfg.patience > 0 and bad >= cfg.patience) or plan["truncated"])
        if dinfo.world > 1:
            dist.broadcast(stop, src=0)
        if stop[0] > 0:
            if dinfo.main:
                log.info("stopping: %s", "time budget reached" if plan["truncated"]
                         else f"no AUROC gain for {cfg.patience} epochs")
            break
    epochs_run = (history[-1]["epoch"] if history else start_epoch)
    result = FitResult(run_dir, best_epoch, epochs_run, {}, {}, time.time() - t_start, history, plan["epochs"])
    if dinfo.main:
        result = _finish(cfg, data, run_dir, device, pos, result)
    if dinfo.world > 1:
        dist.barrier()
    return result


def _finish(cfg: FitConfig, data: PreparedData, run_dir: Path, device: torch.device, pos: int,
            result: FitResult) -> FitResult:
    """Evaluate the best checkpoint on validation, choose the operating point, write metrics and plots."""
    from training.plots import plot_all

    model, ck = load_checkpoint_model(run_dir / "best.pt", device)
    probs = part_probs(model, data, "val", cfg, device)
    yb = (data.val.labels == pos).astype(int)
    op = choose_operating_point(yb, probs[:, pos], cfg.operating_point)
    m = binary_metrics(yb, probs[:, pos], op.threshold, n_boot=cfg.bootstrap, seed=cfg.seed,
                       groups=np.array([s.patient_id for s in data.val.samples]))
    op_d = dataclasses.asdict(op)
    ck["operating_point"] = op_d
    ck["val_metrics"] = m
    torch.save(ck, run_dir / "best.pt")
    with open(run_dir / "val_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient_id", "label"] + [f"p_{c}" for c in data.classes])
        for s, p in zip(data.val.samples, probs, strict=True):
            w.writerow([str(s.path), s.patient_id, data.classes[s.label]] + [f"{v:.6f}" for v in p])
    out = {"split": data.split_desc, "positive": data.classes[pos], "operating_point": op_d, "validation": m,
           "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
           "planned_epochs": result.planned_epochs, "reproduce": replay_command(cfg.command, result.planned_epochs),
           "seconds": round(result.seconds, 1),
           "device": f"{device.type} ({torch.get_num_threads()} threads)" if device.type == "cpu"
           else torch.cuda.get_device_name(device),
           "counts": {"train": data.train.counts(), "val": data.val.counts()}}
    if data.test is not None:
        pt = part_probs(model, data, "test", cfg, device)
        yt = (data.test.labels == pos).astype(int)
        out["internal_test"] = binary_metrics(yt, pt[:, pos], op.threshold, n_boot=cfg.bootstrap, seed=cfg.seed,
                                              groups=np.array([s.patient_id for s in data.test.samples]))
        out["counts"]["internal_test"] = data.test.counts()
    (run_dir / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
    labels = list(data.classes) if len(data.classes) == 2 else ["other", data.classes[pos]]
    plot_all(yb, probs[:, pos], m, labels, run_dir / "plots", "validation", run_dir / "log.csv")
    log.info("best epoch %d; validation at %s threshold %.4f: %s", result.best_epoch, op.criterion, op.threshold,
             {k: m[k] for k in ("auroc", "accuracy", "sensitivity", "specificity")})
    return dataclasses.replace(result, val_metrics=m, operating_point=op_d)


def replay_command(command: str, epochs: int) -> str:
    """``command`` with ``--max-minutes`` dropped and ``--epochs`` set: replays a time-budgeted run exactly."""
    import shlex

    if not command:
        return ""
    words = shlex.split(command)
    out: list[str] = []
    skip = False
    for w in words:
        if skip:
            skip = False
            continue
        if w in ("--max-minutes", "--epochs"):
            skip = True
            continue
        if w.startswith(("--max-minutes=", "--epochs=")):
            continue
        out.append(w)
    at = out.index("fit") + 1 if "fit" in out else len(out)
    out[at:at] = ["--epochs", str(epochs)]
    return " ".join(shlex.quote(w) for w in out)


def fit(cfg: FitConfig) -> FitResult:
    """Train a classifier as configured: index, split by patient, cache, train, evaluate, plot.

    Returns
    -------
    FitResult
        Run directory, best epoch, validation metrics at the chosen operating point.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing data, unknown model, bad split fractions.
    """
    return fit_arrays(cfg, prepare_data(cfg))
