"""Upgrade a schema-1 model package to schema 2 without retraining: same weights, new outputs and card.

For networks of :mod:`training.models` whose ONNX graph was exported by this kit (batch norm folded into
the convolutions by the exporter's optimiser), the torch model is rebuilt from the graph's initialisers
(each folded convolution gets an identity batch norm carrying the folded bias), checked against the old
graph with onnxruntime (probabilities within 1e-5 on real images), and exported again with
:func:`training.export.export_onnx` -- which adds the ``features`` output -- and the out-of-distribution
detector is fitted on the training split that the card names (:func:`training.export.fit_intended_use`).
The metrics, operating point and provenance of the old card are kept; the old version goes into
``history``.

Example
-------
>>> upgrade_package("resources/models/pneumonia-cxr", "../shared/data/kermany-cxr-224", "/tmp/pcxr",
...                 version="1.1.0")  # doctest: +SKIP
"""

from __future__ import annotations

import re
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from medviewer.errors import ModelPackageError
from medviewer.inference.card import HistoryEntry, ModelCard, OutputSpec, load_card, sha256_file
from training.models import MODELS, CAMNet

__all__ = ["rebuild_from_onnx", "upgrade_package"]


def rebuild_from_onnx(onnx_path: str | Path, architecture: str, num_classes: int, in_channels: int = 1) -> CAMNet:
    """A torch model with the weights of an exported graph (convolutions with folded batch norm).

    Raises
    ------
    ModelPackageError
        Unknown architecture, or an initialiser the model lacks / a shape mismatch.
    """
    import onnx
    from onnx import numpy_helper

    if architecture not in MODELS:
        raise ModelPackageError(onnx_path, f"unknown architecture {architecture!r}; known: {sorted(MODELS)}")
    model = MODELS[architecture][0](num_classes=num_classes, in_channels=in_channels).eval()
    inits = {t.name.removeprefix("model."): numpy_helper.to_array(t)
             for t in onnx.load(str(onnx_path)).graph.initializer}
    modules = dict(model.named_modules())
    state = model.state_dict()
    for name, mod in modules.items():
        if not isinstance(mod, torch.nn.Conv2d):
            continue
        w = inits.get(f"{name}.weight")
        if w is None or tuple(w.shape) != tuple(mod.weight.shape):
            raise ModelPackageError(onnx_path, f"the graph has no weights {name}.weight of shape {tuple(mod.weight.shape)}")
        state[f"{name}.weight"] = torch.from_numpy(np.array(w))
        bias = inits.get(f"{name}.weight_bias")
        parent, _, idx = name.rpartition(".")
        bn_name = {"conv1": "bn1", "conv2": "bn2"}.get(name.rsplit(".", 1)[-1])
        bn = f"{name.rsplit('.', 1)[0]}.{bn_name}" if bn_name else f"{parent}.{int(idx) + 1}" if idx.isdigit() else None
        if bias is not None and bn in modules and isinstance(modules[bn], torch.nn.BatchNorm2d):
            eps = modules[bn].eps
            state[f"{bn}.weight"] = torch.ones_like(state[f"{bn}.weight"])
            state[f"{bn}.bias"] = torch.from_numpy(np.array(bias))
            state[f"{bn}.running_mean"] = torch.zeros_like(state[f"{bn}.running_mean"])
            state[f"{bn}.running_var"] = torch.full_like(state[f"{bn}.running_var"], 1.0 - eps)
        elif bias is not None:
            raise ModelPackageError(onnx_path, f"folded bias of {name} has no batch norm to carry it")
    for key in ("classifier.weight", "classifier.bias"):
        state[key] = torch.from_numpy(np.array(inits[key]))
    model.load_state_dict(state)
    return model.eval()


def upgrade_package(package: str | Path, data: str | Path, out_dir: str | Path, version: str,
                    changes: str = "", val_fraction: float = 0.15) -> Path:
    """Write a schema-2 package at ``out_dir`` from the schema-1 package at ``package``.

    ``data`` is the training data the card was trained on (its patient split is re-derived with the
    card's seed and ``val_fraction``, and must give the card's validation count).

    Raises
    ------
    ModelPackageError
        The rebuilt model does not reproduce the old graph, or the split does not match the card.
    """
    from training.data import discover, read_display_u8, split_by_patient
    from training.export import (
        KERMANY_APPLICABILITY,
        check_parity,
        export_onnx,
        finalize_files,
        fit_intended_use,
    )
    from training.ood import onnx_outputs, save_ood

    src = Path(package)
    old = load_card(src)
    arch = old.training.architecture.split(" ", 1)[0]
    model = rebuild_from_onnx(src / "model.onnx", arch, len(old.labels), old.input.channels)
    index = discover(data)
    pool = index.subset("train") if "train" in index.splits else index.subset(None)
    parts = split_by_patient(pool, val_fraction, 0.0, old.training.seed)
    train, val = pool.take(parts["train"]), pool.take(parts["val"])
    n_val = old.metrics[0].n if old.metrics else None
    if n_val is not None and len(val) != n_val:
        raise ModelPackageError(src, f"re-derived validation split has {len(val)} images, the card says {n_val}")
    val_paths = [s.path for s in val.samples]
    probe = [read_display_u8(p) for p in val_paths[:: max(1, len(val_paths) // 64)]]
    (old_logits,) = onnx_outputs(src / "model.onnx", probe, old.preprocessing, old.input, names=["logits"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(model, out / "model.onnx", old.input)
    (new_logits,) = onnx_outputs(onnx_path, probe, old.preprocessing, old.input, names=["logits"])
    p_old = torch.softmax(torch.from_numpy(old_logits), 1).numpy()
    p_new = torch.softmax(torch.from_numpy(new_logits), 1).numpy()
    diff = float(np.abs(p_old - p_new).max())
    if diff > 1e-5:
        raise ModelPackageError(src, f"the rebuilt model differs from the old graph (max |dp| = {diff:.2e})")
    from medviewer.imaging.preprocess import fit_to_input

    fitted = np.stack([fit_to_input(im, old.preprocessing, old.input)[0] for im in probe[:16]])
    parity = check_parity(model, onnx_path, fitted, old.preprocessing)
    if not parity.ok:
        raise ModelPackageError(out, f"export parity failed: {parity}")
    blocks = model.ood_block_sizes(old.input.channels, old.input.height, old.input.width)
    labels = np.array([int(s.label) for s in train.samples])  # class indices in sorted label order
    ood, arrays = fit_intended_use(onnx_path, old.preprocessing, old.input, blocks, [s.path for s in train.samples],
                                   labels, val_paths, old.training.split, old.training.seed)
    save_ood(arrays, out / ood.file)
    for sub in ("plots",):
        if (src / sub).is_dir():
            shutil.copytree(src / sub, out / sub, dirs_exist_ok=True)
    history = [*old.history, HistoryEntry(version=old.version, created=old.created, metrics=old.metrics,
                                          changes="schema 1: no machine-readable intended use, no OOD detector")]
    note = changes or (f"Same weights as {old.version} (max |dp| {diff:.1e} on {len(probe)} validation images); "
                       "card schema 2: machine-readable intended use, an out-of-distribution detector "
                       "(features output + ood.npz), every file hashed.")
    card = ModelCard.model_validate({
        **old.model_dump(mode="json"), "schema_version": 2, "version": version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sha256": sha256_file(onnx_path), "outputs": OutputSpec(features="features").model_dump(),
        "applicability": KERMANY_APPLICABILITY.model_dump(mode="json"),
        "ood": ood.model_dump(mode="json"), "history": [h.model_dump(mode="json") for h in history],
        "files": {"model.onnx": sha256_file(onnx_path), ood.file: sha256_file(out / ood.file)},
        "description": old.description,
    })
    from training.export import render_readme

    plots = [f"plots/{p.name}" for p in sorted((out / "plots").glob("*.png"))]
    text = render_readme(card, parity, plots, _trained_note(src), f"{version}: {note}")
    (out / "README.md").write_text(text, encoding="utf-8")
    finalize_files(out, card)
    return out


def _trained_note(src: Path) -> str:
    readme = src / "README.md"
    if readme.is_file():
        m = re.search(r"trained in [^\n;]*", readme.read_text(encoding="utf-8"))
        if m:
            return m.group(0).rstrip(".")
    return ""
