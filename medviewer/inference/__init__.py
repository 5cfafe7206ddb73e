"""AI runtime: model packages, ONNX Runtime sessions, class activation maps and flagged regions (Qt-free).

- :mod:`~medviewer.inference.card`: the model card schema (the contract with ``training``);
- :mod:`~medviewer.inference.package`: :class:`ModelPackage` loading and validation;
- :mod:`~medviewer.inference.registry`: finding packages (built-in, user data dir, paths), import;
- :mod:`~medviewer.inference.session`: :class:`Session`, :class:`Prediction`;
- :mod:`~medviewer.inference.batch`: :func:`score_instances` (many images, batched, overlapped);
- :mod:`~medviewer.inference.heatmap`: CAM colour maps and blending;
- :mod:`~medviewer.inference.regions`: :class:`Region` s from CAMs.

Names are imported lazily, so ``medviewer.imaging.preprocess`` (which needs the card) and this package
do not import each other at start-up.
"""

from __future__ import annotations

import importlib

__all__ = [
    "ModelCard",
    "ModelPackage",
    "InvalidPackage",
    "DEFAULT_MODEL_NAME",
    "find_models",
    "scan_models",
    "resolve_model",
    "default_model",
    "import_model",
    "user_models_dir",
    "builtin_models_dir",
    "Provider",
    "Session",
    "Prediction",
    "open_session",
    "score_instances",
    "Outcome",
    "FrameRef",
    "Region",
    "find_regions",
    "COLORMAPS",
    "colorize",
    "blend",
    "normalize_cam",
]

_WHERE = {
    "ModelCard": "card",
    "ModelPackage": "package",
    "InvalidPackage": "registry",
    "DEFAULT_MODEL_NAME": "registry",
    "find_models": "registry",
    "scan_models": "registry",
    "resolve_model": "registry",
    "default_model": "registry",
    "import_model": "registry",
    "user_models_dir": "registry",
    "builtin_models_dir": "registry",
    "Provider": "session",
    "Session": "session",
    "Prediction": "session",
    "open_session": "session",
    "score_instances": "batch",
    "Outcome": "batch",
    "FrameRef": "batch",
    "Region": "regions",
    "find_regions": "regions",
    "COLORMAPS": "heatmap",
    "colorize": "heatmap",
    "blend": "heatmap",
    "normalize_cam": "heatmap",
}


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
