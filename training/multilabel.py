"""Multi-label training (one sigmoid per finding, as CheXNet; Rajpurkar et al. 2017, arXiv:1711.05225).

:func:`fit_multilabel` trains a :mod:`training.models` network on a multi-label table
(:func:`training.multilabel_data.read_multilabel_csv`) with

* binary cross-entropy with a positive weight per finding (``n_neg / n_pos`` on the training part);
* a patient-level split keeping every finding's prevalence (iterative stratification, Sechidis et al. 2011);
* images cached in memory or streamed from disk (``loader``), DataLoader workers, AMP on CUDA, and
  distributed data parallel under ``torchrun`` (gloo on CPU, NCCL on GPU), as :func:`training.engine.fit`;
* AdamW + warm-up/cosine, or CheXNet's Adam 1e-3 with the learning rate divided by 10 when the validation
  loss plateaus (``schedule="plateau"``, :data:`PRESETS`);
* model selection on the validation macro AUROC, resumable from ``last.pt``.

At the end (:func:`finish_multilabel`), on the validation part: the positive weight's shift of the odds is
removed from each finding's bias (``b_k -= log w_k``; Elkan 2001), then a **temperature per finding** (Guo
et al. 2017) fitted by the negative log-likelihood of ``sigmoid(z / T_k)``; a finding with fewer than
:data:`MIN_POSITIVES_FOR_OWN_T` positive validation images gets the one temperature fitted on all findings
pooled. The temperatures are folded into the classifier of ``best.pt`` (row ``k`` of the weights and bias
divided by ``T_k``: the same ranking, the same CAM shape, calibrated probabilities), so ``evaluate`` and
``export`` see the calibrated model. Then an **operating point per finding**, each with its own criterion
(``"youden,Pneumothorax=sensitivity>=0.9"``), per-finding metrics with patient-bootstrap intervals, and
macro and micro AUROC with patient-bootstrap intervals.

Example
-------
>>> cfg = FitConfig(data="../shared/data/nih-cxr14-64/labels.csv", task="multilabel", input_size=64,
...                 model="compact-small", epochs=20, out="runs/nih64")
>>> r = fit_multilabel(cfg)
>>> r.val_metrics["macro_auroc"]
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from training.data import Augment, load_fitted
from training.engine import (
    MEMORY_LIMIT,
    FitConfig,
    FitResult,
    ShuffleSampler,
    _init_distributed,
    _make_model,
    _scheduler,
    _seed_all,
    _setup_logging,
    load_checkpoint_model,
    make_optimizer,
    replay_command,
)
from training.multilabel_data import (
    MultilabelIndex,
    TargetDataset,
    decoded_bytes,
    multilabel_folds,
    pos_weights,
    read_multilabel_csv,
    split_multilabel,
)

__all__ = [
    "PRESETS",
    "MIN_POSITIVES_FOR_OWN_T",
    "MEMORY_LIMIT",
    "parse_criteria",
    "multilabel_metrics",
    "fit_label_temperatures",
    "split_multilabel_index",
    "predict_logits",
    "fit_multilabel",
    "finish_multilabel",
]

log = logging.getLogger("training")

#: ``--preset`` name -> FitConfig fields. ``chexnet``: Rajpurkar et al. (2017, arXiv:1711.05225): DenseNet-121,
#: input 224x224, Adam (beta 0.9, 0.999) at 1e-3, batch 16, learning rate / 10 when the validation loss
#: plateaus after an epoch, random horizontal flips. (They start from ImageNet weights: pass a local file
#: with ``--weights``; nothing is downloaded.)
PRESETS: dict[str, dict] = {
    "chexnet": {"model": "densenet121", "input_size": 224, "optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0,
                "batch_size": 16, "schedule": "plateau", "plateau_patience": 1, "warmup_epochs": 0.0,
                "hflip": True, "task": "multilabel"},
}
#: a finding needs this many positive validation images for a temperature of its own
MIN_POSITIVES_FOR_OWN_T = 5


def parse_criteria(spec: str, labels: list[str]) -> dict[str, str]:
    """``"youden,Pneumothorax=sensitivity>=0.9"`` -> finding -> criterion (the first item without ``=`` is
    the default for the others).

    Raises
    ------
    ValueError
        A finding that is not one of ``labels``.
    """
    default = "youden"
    per: dict[str, str] = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if "=" in item and not item.startswith("sensitivity"):
            lab, crit = item.split("=", 1)
            if lab.strip() not in labels:
                raise ValueError(f"--operating-point names {lab.strip()!r}, not one of the findings {labels}")
            per[lab.strip()] = crit.strip()
        else:
            default = item
    return {lab: per.get(lab, default) for lab in labels}


def _patient_bootstrap_aurocs(y: np.ndarray, p: np.ndarray, groups: np.ndarray, n_boot: int, seed: int
                              ) -> dict[str, tuple[float, float]]:
    """95 % percentile intervals of macro and micro AUROC by resampling patients (Field & Welsh 2007)."""
    from sklearn.metrics import roc_auc_score

    uniq, inv = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inv == i) for i in range(len(uniq))]
    rng = np.random.default_rng(seed)
    macro, micro = [], []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(uniq), len(uniq))])
        yb, pb = y[idx], p[idx]
        ok = [k for k in range(y.shape[1]) if 0 < yb[:, k].sum() < len(yb)]
        if ok:
            macro.append(float(np.mean([roc_auc_score(yb[:, k], pb[:, k]) for k in ok])))
        if 0 < yb.sum() < yb.size:
            micro.append(float(roc_auc_score(yb.ravel(), pb.ravel())))
    q = lambda v: (float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))) if v else None  # noqa: E731
    return {"macro": q(macro), "micro": q(micro)}


def multilabel_metrics(y: np.ndarray, p: np.ndarray, labels: list[str], groups: np.ndarray,
                       thresholds: dict[str, float] | None = None, n_boot: int = 1000, seed: int = 0) -> dict:
    """Per-finding metrics at each finding's threshold, and macro / micro AUROC with patient-bootstrap CIs.

    Parameters
    ----------
    y
        0/1 ``(N, K)`` truth.
    p
        ``(N, K)`` probabilities (sigmoid per finding).
    groups
        ``(N,)`` patient ids: every interval resamples patients.
    thresholds
        Finding -> operating point (default 0.5).

    Returns
    -------
    dict
        ``n, patients, per_label: {finding: binary_metrics(...) + prevalence, positives}, macro_auroc,
        macro_auroc_ci95, micro_auroc, micro_auroc_ci95, labels_in_macro, ci_method``. A finding without
        positive (or without negative) images has ``auroc`` None and is left out of the macro average.
    """
    from sklearn.metrics import roc_auc_score

    from training.metrics import binary_metrics

    y = np.asarray(y).astype(int)
    p = np.asarray(p, np.float64)
    groups = np.asarray(groups)
    per: dict[str, dict] = {}
    for k, lab in enumerate(labels):
        thr = (thresholds or {}).get(lab, 0.5)
        m = binary_metrics(y[:, k], p[:, k], thr, n_boot=n_boot, seed=seed, groups=groups)
        m["positives"] = int(y[:, k].sum())
        m["prevalence"] = float(y[:, k].mean()) if len(y) else 0.0
        per[lab] = m
    ok = [k for k in range(len(labels)) if 0 < y[:, k].sum() < len(y)]
    macro = float(np.mean([roc_auc_score(y[:, k], p[:, k]) for k in ok])) if ok else None
    micro = float(roc_auc_score(y.ravel(), p.ravel())) if 0 < y.sum() < y.size else None
    ci = (_patient_bootstrap_aurocs(y, p, groups, n_boot, seed) if n_boot > 0 and len(np.unique(groups)) > 1
          else {"macro": None, "micro": None})
    return {"n": int(len(y)), "patients": int(len(np.unique(groups))), "per_label": per,
            "macro_auroc": macro, "macro_auroc_ci95": ci["macro"], "micro_auroc": micro,
            "micro_auroc_ci95": ci["micro"], "labels_in_macro": [labels[k] for k in ok],
            "ci_method": f"percentile bootstrap over {len(np.unique(groups))} patients, {n_boot} resamples"}


def fit_label_temperatures(y: np.ndarray, logits: np.ndarray, min_positives: int = MIN_POSITIVES_FOR_OWN_T
                           ) -> tuple[np.ndarray, float]:
    """Temperature per finding for ``sigmoid(z_k / T_k)`` (Guo et al. 2017), by validation NLL.

    A finding with fewer than ``min_positives`` positive (or negative) images gets the shared temperature
    fitted on all findings pooled (one ``T`` for every logit), which is also returned.

    Returns
    -------
    (np.ndarray, float)
        float64 ``(K,)`` temperatures and the shared one.
    """
    from training.evaluation import fit_temperature

    y = np.asarray(y, np.float64)
    z = np.asarray(logits, np.float64)
    shared = fit_temperature(y.ravel(), z.ravel())
    t = np.full(y.shape[1], shared)
    for k in range(y.shape[1]):
        npos = y[:, k].sum()
        if npos >= min_positives and len(y) - npos >= min_positives:
            t[k] = fit_temperature(y[:, k], z[:, k])
    return t, shared


def _rule(cfg: FitConfig):
    from training.data import regex_patient_rule

    return regex_patient_rule(cfg.patient_regex) if cfg.patient_regex else None


def read_index(cfg: FitConfig) -> MultilabelIndex:
    """The configured table (``cfg.data``) with ``cfg.labels`` (comma-separated; default from the table)."""
    labels = [s.strip() for s in cfg.labels.split(",") if s.strip()] if cfg.labels else None
    return read_multilabel_csv(cfg.data, labels, _rule(cfg))


def split_multilabel_index(cfg: FitConfig, index: MultilabelIndex | None = None
                           ) -> tuple[MultilabelIndex, MultilabelIndex, MultilabelIndex | None, str]:
    """Train / validation (/ internal test) parts for a config: patient fold ``cfg.fold`` of ``cfg.folds``
    (``cv``) or a patient split; both by iterative stratification."""
    index = index if index is not None else read_index(cfg)
    if cfg.limit and cfg.limit < len(index):
        fold = multilabel_folds(index, max(2, round(len(index) / cfg.limit)), cfg.seed)
        index = index.take(np.flatnonzero(fold == 0))
    if cfg.fold is not None:
        fold = multilabel_folds(index, cfg.folds, cfg.seed)
        return (index.take(np.flatnonzero(fold != cfg.fold)), index.take(np.flatnonzero(fold == cfg.fold)), None,
                f"patient-level fold {cfg.fold + 1}/{cfg.folds} (iterative stratification, seed {cfg.seed})")
    parts = split_multilabel(index, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    test = index.take(parts["test"]) if parts["test"] else None
    desc = (f"validation (patient-level, iterative stratification, {cfg.val_fraction:.0%} of the images, "
            f"seed {cfg.seed})")
    return index.take(parts["train"]), index.take(parts["val"]), test, desc


def _dataset(cfg: FitConfig, part: MultilabelIndex, stream: bool, augment: Augment | None = None) -> TargetDataset:
    spec, inp = cfg.preprocessing(), cfg.input_spec()
    targets = part.targets.astype(np.float32)
    if stream:
        return TargetDataset(targets, spec, inp, paths=list(part.paths), augment=augment, seed=cfg.seed)
    images = load_fitted(part.paths, spec, inp, workers=max(2, cfg.workers), cache_dir=cfg.cache_dir,
                         progress=cfg.progress)
    return TargetDataset(targets, spec, inp, images=images, augment=augment, seed=cfg.seed)


@torch.no_grad()
def predict_logits(model: nn.Module, ds: TargetDataset, device: torch.device, batch_size: int = 64,
                   workers: int = 0, amp: bool = False) -> np.ndarray:
    """Logits float64 ``(N, K)`` of ``model`` on a dataset (its augmentation is not applied)."""
    model.eval()
    aug, ds.augment = ds.augment, None
    try:
        # its own generator: a loader draws a seed when iterated, which must not move the global RNG
        # (dropout), so a run is the same whichever data path evaluates it
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                             pin_memory=device.type == "cuda", generator=torch.Generator())
        out = []
        for x, _ in loader:
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                out.append(model(x.to(device, non_blocking=True)).float().cpu().double().numpy())
    finally:
        ds.augment = aug
    return np.concatenate(out) if out else np.zeros((0, 0))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def _macro_auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    ok = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
    return float(np.mean([roc_auc_score(y[:, k], p[:, k]) for k in ok])) if ok else float("nan")


@dataclass
class _Parts:
    train: MultilabelIndex
    val: MultilabelIndex
    test: MultilabelIndex | None
    desc: str


def _write_split(run_dir: Path, parts: _Parts) -> None:
    with open(run_dir / "split.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient_id", "split", *parts.train.labels])
        for name, idx in (("train", parts.train), ("val", parts.val), ("test", parts.test)):
            if idx is None:
                continue
            for i in range(len(idx)):
                w.writerow([str(idx.paths[i]), idx.patients[i], name, *idx.targets[i].tolist()])


def fit_multilabel(cfg: FitConfig, index: MultilabelIndex | None = None) -> FitResult:
    """Train a multi-label classifier as configured (see the module docstring); returns rank 0's result.

    ``cfg.loader``: ``"memory"`` decodes every image once into RAM (uint8, :func:`training.data.load_fitted`,
    optionally cached on disk with ``cfg.cache_dir``); ``"stream"`` reads, displays and fits each image
    when it is drawn (memory independent of the data set's size; use ``cfg.workers`` processes); ``"auto"``
    caches while the decoded training and validation images take at most :data:`MEMORY_LIMIT` bytes.

    Raises
    ------
    FileNotFoundError, ValueError
        Missing table or images, unknown model, bad fractions, a training part without any positive.
    """
    t_start = time.time()
    dinfo, device = _init_distributed(cfg.device)
    run_dir = Path(cfg.out)
    train, val, test, desc = split_multilabel_index(cfg, index)
    parts = _Parts(train, val, test, desc)
    labels = train.labels
    k = len(labels)
    if dinfo.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
        _write_split(run_dir, parts)
    _setup_logging(run_dir, dinfo.main)
    if cfg.loader not in ("auto", "memory", "stream"):
        raise ValueError(f"unknown loader {cfg.loader!r} (auto, memory or stream)")
    stream = cfg.loader == "stream" or (
        cfg.loader == "auto" and decoded_bytes(len(train) + len(val), cfg.input_spec()) > MEMORY_LIMIT)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif dinfo.world > 1 and device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dinfo.world))
    _seed_all(cfg.seed)
    aug = Augment.strong(hflip=cfg.hflip) if cfg.augment_preset == "strong" else Augment(hflip=cfg.hflip)
    ds = _dataset(cfg, train, stream, aug if cfg.augment else None)
    ds_val = _dataset(cfg, val, stream) if dinfo.main else None
    model = _make_model(cfg, k).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    net: nn.Module = model
    if dinfo.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = ShuffleSampler(len(train), cfg.seed, dinfo.rank, dinfo.world)
    per_rank_bs = max(1, cfg.batch_size // dinfo.world)
    loader = torch.utils.data.DataLoader(ds, batch_size=per_rank_bs, sampler=sampler, num_workers=cfg.workers,
                                         drop_last=len(sampler) > per_rank_bs, pin_memory=device.type == "cuda",
                                         persistent_workers=cfg.workers > 0)
    pw = torch.as_tensor(pos_weights(train.targets), device=device) if cfg.balance == "weights" else None
    crit = nn.BCEWithLogitsLoss(pos_weight=pw)
    opt = make_optimizer(cfg, model)
    plateau = cfg.schedule == "plateau"
    sched = (torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=0.1, patience=cfg.plateau_patience)
             if plateau else _scheduler(opt, cfg, len(loader), {"epochs": cfg.epochs}))
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
        start_epoch, best_auc, best_loss, best_epoch = ck["epoch"] + 1, ck["best_auc"], ck["best_loss"], ck["best_epoch"]
        bad, history = ck["bad_epochs"], ck["history"]
        if dinfo.main:
            log.info("resumed from %s at epoch %d", last_path, start_epoch)
    spec = cfg.preprocessing()
    meta = {"task": "multilabel", "classes": labels, "config": dataclasses.asdict(cfg),
            "input": cfg.input_spec().model_dump(), "preprocessing": spec.model_dump(mode="json"),
            "split": desc, "counts": {"train": train.counts(), "val": val.counts()}}
    if dinfo.main:
        log.info("multilabel model %s (%.2f M parameters) on %s, world %d, %s loader; train %s, val %s", cfg.model,
                 sum(p.numel() for p in model.parameters()) / 1e6, device, dinfo.world,
                 "streamed" if stream else "in-memory", train.counts(), val.counts())
    y_val = val.targets.astype(int)
    stop = torch.zeros(1)
    seen = 0
    t_train = 0.0
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.time()
        net.train()
        sampler.set_epoch(epoch)
        ds.set_epoch(epoch)
        tot, nb = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not (cfg.progress and dinfo.main),
                   leave=False, file=sys.stderr)
        for x, y in bar:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if device.type == "cuda":
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                out = net(x)
            loss = crit(out.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if not plateau:
                sched.step()
            tot += float(loss.detach())
            nb += 1
            seen += len(x) * dinfo.world
            bar.set_postfix(loss=f"{tot / nb:.4f}")
        t_train += time.time() - t0
        metric = torch.zeros(2)
        if dinfo.main:
            z = predict_logits(model, ds_val, device, workers=cfg.workers, amp=use_amp)
            pv = _sigmoid(z)
            val_loss = float(nn.functional.binary_cross_entropy_with_logits(torch.as_tensor(z),
                                                                           torch.as_tensor(y_val, dtype=torch.float64)))
            auc = _macro_auc(y_val, pv)
            row = {"epoch": epoch + 1, "train_loss": tot / max(1, nb), "val_loss": val_loss, "val_auroc": auc,
                   "lr": opt.param_groups[0]["lr"], "seconds": time.time() - t0,
                   "train_images_per_s": len(train) / max(1e-9, time.time() - t0)}
            history.append(row)
            improved = auc > best_auc + 1e-6 or (abs(auc - best_auc) <= 1e-6 and val_loss < best_loss)
            if improved:
                best_auc, best_loss, best_epoch, bad = auc, val_loss, epoch + 1, 0
                torch.save({**meta, "model": model.state_dict(), "epoch": epoch + 1, "val_auroc": auc}, best_path)
            else:
                bad += 1
            metric[0], metric[1] = val_loss, float(cfg.patience > 0 and bad >= cfg.patience)
        if dinfo.world > 1:
            dist.broadcast(metric, src=0)
        if plateau:
            sched.step(float(metric[0]))  # every rank steps with rank 0's validation loss: same learning rate
        if dinfo.main:
            torch.save({**meta, "model": model.state_dict(), "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                        "best_auc": best_auc, "best_loss": best_loss, "best_epoch": best_epoch,
                        "bad_epochs": bad, "history": history}, last_path)
            with open(run_dir / "log.csv", "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(row))
                w.writeheader()
                w.writerows(history)
            msg = (f"epoch {epoch + 1}/{cfg.epochs}: loss {row['train_loss']:.4f} val_loss {val_loss:.4f} "
                   f"val_macro_auroc {auc:.4f} ({row['seconds']:.0f} s){' *' if improved else ''}")
            log.info(msg)
            if not cfg.progress:
                print(msg, flush=True)
        stop[0] = metric[1]
        if stop[0] > 0:
            if dinfo.main:
                log.info("stopping: no macro AUROC gain for %d epochs", cfg.patience)
            break
    epochs_run = history[-1]["epoch"] if history else start_epoch
    result = FitResult(run_dir, best_epoch, epochs_run, {}, {}, time.time() - t_start, history, cfg.epochs)
    if dinfo.main:
        ips = seen / t_train if t_train > 0 else 0.0
        result = finish_multilabel(cfg, parts, run_dir, device, result, ds_val, stream, ips)
    if dinfo.world > 1:
        dist.barrier()
    return result


def finish_multilabel(cfg: FitConfig, parts: _Parts, run_dir: Path, device: torch.device, result: FitResult,
                      ds_val: TargetDataset, stream: bool, images_per_s: float = 0.0) -> FitResult:
    """Calibrate (temperature per finding, folded into ``best.pt``), choose each finding's operating point
    with its own criterion, and write ``metrics.json``, ``val_predictions.csv`` and ``plots/``."""
    from training.metrics import choose_operating_point
    from training.plots import plot_roc_overlay, plot_training_curves

    model, ck = load_checkpoint_model(run_dir / "best.pt", device)
    labels = parts.train.labels
    y = parts.val.targets.astype(int)
    groups = np.asarray(parts.val.patients)
    z = predict_logits(model, ds_val, device, workers=cfg.workers)
    # prior correction first: a BCE with positive weight w_k learns odds w_k times the true odds (Elkan
    # 2001, "The Foundations of Cost-Sensitive Learning", IJCAI), so log(w_k) comes off the bias; a
    # temperature alone cannot remove a shift
    shift = np.log(pos_weights(parts.train.targets)).astype(np.float64) if cfg.balance == "weights" else \
        np.zeros(len(labels))
    z = z - shift[None, :]
    temps, shared = fit_label_temperatures(y, z)
    with torch.no_grad():
        w = model.classifier.weight
        model.classifier.bias.sub_(torch.as_tensor(shift, dtype=w.dtype, device=w.device))
        t = torch.as_tensor(temps, dtype=w.dtype, device=w.device)
        model.classifier.weight.div_(t[:, None])
        model.classifier.bias.div_(t)
    p = _sigmoid(z / temps[None, :])
    criteria = parse_criteria(cfg.operating_point, labels)
    ops: dict[str, dict] = {}
    for k, lab in enumerate(labels):
        if 0 < y[:, k].sum() < len(y):
            op = choose_operating_point(y[:, k], p[:, k], criteria[lab])
            ops[lab] = dataclasses.asdict(op)
        else:  # nothing to choose a threshold on: never flagged, and the card says why
            ops[lab] = {"threshold": 1.0, "criterion": f"{criteria[lab]} not applicable: no positive validation "
                        "images; never flagged", "sensitivity": 0.0, "specificity": 1.0}
    m = multilabel_metrics(y, p, labels, groups, {lab: o["threshold"] for lab, o in ops.items()},
                           n_boot=cfg.bootstrap, seed=cfg.seed)
    for k, lab in enumerate(labels):
        m["per_label"][lab]["temperature"] = float(temps[k])
    ck.update({"model": model.state_dict(), "operating_points": ops, "temperatures": temps.tolist(),
               "temperature_shared": shared, "prior_shift": shift.tolist(),
               "val_metrics": m})
    torch.save(ck, run_dir / "best.pt")
    with open(run_dir / "val_predictions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "patient_id"] + [f"y_{lab}" for lab in labels] + [f"p_{lab}" for lab in labels])
        for i in range(len(y)):
            w.writerow([str(parts.val.paths[i]), parts.val.patients[i], *y[i].tolist(),
                        *(f"{v:.6f}" for v in p[i])])
    out = {"task": "multilabel", "split": parts.desc, "labels": labels, "operating_points": ops, "validation": m,
           "temperature": {"per_label": dict(zip(labels, temps.tolist(), strict=True)), "shared": shared,
                           "prior_shift": dict(zip(labels, shift.tolist(), strict=True)),
                           "rule": "log(pos_weight) subtracted from each bias (prior correction, Elkan 2001), then "
                                   f"own temperature with >= {MIN_POSITIVES_FOR_OWN_T} positive and negative "
                                   "validation images, else the shared one (all findings pooled)"},
           "best_epoch": result.best_epoch, "epochs_run": result.epochs_run, "planned_epochs": result.planned_epochs,
           "reproduce": replay_command(cfg.command, cfg.epochs), "seconds": round(result.seconds, 1),
           "loader": "streamed" if stream else "in-memory", "train_images_per_s": round(images_per_s, 1),
           "device": f"{device.type} ({torch.get_num_threads()} threads)" if device.type == "cpu"
           else torch.cuda.get_device_name(device),
           "counts": {"train": parts.train.counts(), "val": parts.val.counts()}}
    if parts.test is not None:
        ds_test = _dataset(cfg, parts.test, stream)
        pt = _sigmoid(predict_logits(model, ds_test, device, workers=cfg.workers))
        out["internal_test"] = multilabel_metrics(parts.test.targets, pt, labels, np.asarray(parts.test.patients),
                                                  {lab: o["threshold"] for lab, o in ops.items()},
                                                  n_boot=cfg.bootstrap, seed=cfg.seed)
        out["counts"]["internal_test"] = parts.test.counts()
    (run_dir / "metrics.json").write_text(json.dumps(out, indent=2) + "\n")
    curves = [(lab, y[:, k], p[:, k]) for k, lab in enumerate(labels) if 0 < y[:, k].sum() < len(y)]
    if curves:
        plot_roc_overlay(curves, run_dir / "plots" / "roc_per_finding.png", "ROC per finding (validation)")
    plot_training_curves(run_dir / "log.csv", run_dir / "plots" / "training_curves.png")
    log.info("best epoch %d; validation macro AUROC %s, micro AUROC %s", result.best_epoch, m["macro_auroc"],
             m["micro_auroc"])
    return dataclasses.replace(result, val_metrics=m, operating_point=ops)
