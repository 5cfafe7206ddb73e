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
from medviewer.providers import PROVIDER_CHOICES, ExecutionProvider, Provider

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
