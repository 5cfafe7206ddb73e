"""AI runtime: model packages, ONNX Runtime sessions, class activation maps and flagged regions (Qt-free).

- :mod:`~medviewer.inference.card`: the model card schema (the contract with ``training``); the input
  spec and preprocessing parameters it embeds live in the leaf module :mod:`medviewer.spec`;
- :mod:`~medviewer.inference.package`: :class:`ModelPackage` loading and validation;
- :mod:`~medviewer.inference.registry`: finding packages (built-in, user data dir, paths), import;
- :mod:`~medviewer.inference.session`: :class:`Session`, :class:`Prediction`;
- :mod:`~medviewer.inference.batch`: :func:`score_instances` (many images, batched, overlapped);
- :mod:`~medviewer.inference.heatmap`: CAM colour maps and blending;
- :mod:`~medviewer.inference.regions`: :class:`Region` s from CAMs;
- :mod:`~medviewer.inference._ort`: :class:`Provider` (``auto|cuda|cpu``, the one validator) and
  :class:`ExecutionProvider` (onnxruntime's names); onnxruntime is imported on first use.

This package depends on :mod:`medviewer.imaging` and :mod:`medviewer.io`; neither imports it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the submodule defining it. Loaded on first access (PEP 562), so that importing one leaf
#: (``medviewer.inference.card`` for a model card, ``heatmap`` for a colour map) does not pull in pydicom,
#: the display pipeline and the batch scorer: the GUI shows its window about 0.5 s sooner. This is for
#: import time only -- there is no import cycle to hide (tests/test_imports.py checks the module graph).
_LAZY = {
    "FrameRef": "batch", "Outcome": "batch", "score_instances": "batch",
    "ModelCard": "card",
    "COLORMAPS": "heatmap", "blend": "heatmap", "colorize": "heatmap", "normalize_cam": "heatmap",
    "ModelPackage": "package",
    "Region": "regions", "find_regions": "regions",
    "DEFAULT_MODEL_NAME": "registry", "InvalidPackage": "registry", "builtin_models_dir": "registry",
    "default_model": "registry", "find_models": "registry", "import_model": "registry",
    "resolve_model": "registry", "scan_models": "registry", "user_models_dir": "registry",
    "Prediction": "session", "Session": "session", "open_session": "session",
}

from medviewer.providers import PROVIDER_CHOICES, ExecutionProvider, Provider  # noqa: E402  (a leaf)

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, eagerly
    from medviewer.inference.batch import FrameRef, Outcome, score_instances
    from medviewer.inference.card import ModelCard
    from medviewer.inference.heatmap import COLORMAPS, blend, colorize, normalize_cam
    from medviewer.inference.package import ModelPackage
    from medviewer.inference.regions import Region, find_regions
    from medviewer.inference.registry import (
        DEFAULT_MODEL_NAME,
        InvalidPackage,
        builtin_models_dir,
        default_model,
        find_models,
        import_model,
        resolve_model,
        scan_models,
        user_models_dir,
    )
    from medviewer.inference.session import Prediction, Session, open_session


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
    "ExecutionProvider",
    "PROVIDER_CHOICES",
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
