"""Thin helpers around onnxruntime shared by package validation and sessions (private).

onnxruntime itself is imported on first use (:func:`quiet_session`, :func:`cuda_unavailable_reason`), so
importing :mod:`medviewer.inference` -- e.g. for the model card -- does not load it. The provider names
(:class:`Provider`, :class:`ExecutionProvider`, :data:`PROVIDER_CHOICES`) are defined in the leaf module
:mod:`medviewer.providers` (so the command line can validate ``--provider`` without importing this
package) and re-exported here.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from medviewer.errors import DEBUG_ENV
from medviewer.providers import PROVIDER_CHOICES, ExecutionProvider, Provider, short_name

__all__ = ["Provider", "ExecutionProvider", "PROVIDER_CHOICES", "short_name", "quiet_session",
           "cuda_unavailable_reason", "first_line", "dry_run_input"]


#: ERROR: what the app keeps from ORT's own log once a session is loaded
_RUN_SEVERITY = 3
#: FATAL: while a session is being created; the CUDA provider library failing to load is logged at
#: ERROR by ORT's provider bridge, and we report that ourselves as a one-line fallback warning
_LOAD_SEVERITY = 4
_lock = threading.Lock()
_configured = False


def _onnxruntime() -> Any:
    """The onnxruntime module, its default log severity set to ERROR on first use."""
    global _configured
    import onnxruntime as ort

    if not _configured:
        ort.set_default_logger_severity(_RUN_SEVERITY)
        _configured = True
    return ort


def quiet_session(model: str | bytes | Path, providers: list, *, optimize: bool = True,
                  intra_op_threads: int = 0) -> Any:
    """Create an :class:`onnxruntime.InferenceSession` with ORT's loader noise silenced.

    Raises whatever ORT raises (callers turn it into a one-line error).
    """
    ort = _onnxruntime()
    load_severity = _RUN_SEVERITY if os.environ.get(DEBUG_ENV) else _LOAD_SEVERITY  # debugging: ORT says why
    so = ort.SessionOptions()
    so.log_severity_level = load_severity
    if intra_op_threads:
        so.intra_op_num_threads = intra_op_threads
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with _lock:
        ort.set_default_logger_severity(load_severity)
        try:
            # enable_fallback=0: ORT's own fallback prints "EP Error" banners to stdout; Session falls back
            # itself and reports why (Session.fallback_warning)
            return ort.InferenceSession(str(model) if isinstance(model, Path) else model, so,
                                        providers=[str(p) for p in providers], enable_fallback=0)
        finally:
            ort.set_default_logger_severity(_RUN_SEVERITY)


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (ORT errors can span many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def cuda_unavailable_reason() -> str:
    """One line saying why ORT's CUDA provider did not load here (best effort, never raises).

    ORT falls back to the CPU without an exception and writes the cause (e.g. the CUDA or cuDNN library it
    could not open) only to its own log, which :func:`quiet_session` silences; the line says how to see it.
    """
    ort = _onnxruntime()
    if ExecutionProvider.CUDA.value not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.__version__}, device {ort.get_device()}) has no CUDA provider"
    return (f"onnxruntime {ort.__version__} could not use its CUDA provider: no NVIDIA GPU or driver, or a CUDA / "
            f"cuDNN runtime library it needs is missing (set {DEBUG_ENV}=1 to see onnxruntime's log naming it)")


def dry_run_input(batch: int, channels: int, height: int, width: int) -> np.ndarray:
    """A real-looking float32 ``(batch, C, H, W)`` input: a smooth gradient with a seeded texture, in the
    range of normalised images (about -2..2), different per batch item. Zeros hide models that fail
    only on real data (an empty CAM, NaN after a log)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    out = np.empty((batch, channels, height, width), np.float32)
    for n in range(batch):
        base = np.sin(xx / max(width, 1) * np.pi * (1 + n)) * np.cos(yy / max(height, 1) * np.pi)
        out[n] = (1.5 * base + 0.3 * rng.standard_normal((height, width))).astype(np.float32)[None]
    return out
