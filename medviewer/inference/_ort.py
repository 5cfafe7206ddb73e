"""Thin helpers around onnxruntime shared by package validation and sessions, and the provider names.

onnxruntime itself is imported on first use (:func:`quiet_session`, :func:`cuda_unavailable_reason`), so
importing :mod:`medviewer.inference` -- e.g. for the model card -- does not load it.

Provider names are validated in one place: :class:`Provider` is what a user asks for (``--provider
auto|cuda|cpu``, the saved setting), :class:`ExecutionProvider` what onnxruntime reports running
(``InferenceSession.get_providers()``). :meth:`Provider.parse` is the one validator; :data:`PROVIDER_CHOICES`
the list for argument parsers.
"""

from __future__ import annotations

import ctypes
import threading
from enum import Enum
from pathlib import Path
from typing import Any

__all__ = ["Provider", "ExecutionProvider", "PROVIDER_CHOICES", "quiet_session", "cuda_unavailable_reason",
           "first_line"]


class Provider(str, Enum):
    """Execution provider preference, as a user states it (string values are user-facing)."""

    AUTO = "auto"  #: CUDA when it loads, else CPU (no warning: CPU is an expected outcome)
    CUDA = "cuda"  #: CUDA wanted; running on CPU instead sets :attr:`Session.fallback_warning`
    CPU = "cpu"  #: CPU only

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: object) -> Provider:
        """The member for ``"auto"``, ``"cuda"`` or ``"cpu"`` (any case, surrounding blanks ignored) or a member.

        Raises
        ------
        ValueError
            Anything else; the one-line message lists the valid names.
        """
        if isinstance(value, cls):
            return value
        text = str(value).strip().lower() if isinstance(value, str) else None
        try:
            return cls(text)
        except ValueError:
            names = ", ".join(PROVIDER_CHOICES[:-1]) + " or " + PROVIDER_CHOICES[-1]
            raise ValueError(f"unknown provider {value!r}; use {names}") from None

    def execution_providers(self, available: list[str]) -> list[str]:
        """The onnxruntime providers to ask for, in priority order, given ``get_available_providers()``:
        ``[CUDA, CPU]`` unless this is :attr:`CPU` or the build has no CUDA provider, else ``[CPU]``."""
        if self != Provider.CPU and ExecutionProvider.CUDA.value in available:
            return [ExecutionProvider.CUDA.value, ExecutionProvider.CPU.value]
        return [ExecutionProvider.CPU.value]


#: the user-facing provider names, in the order help texts list them
PROVIDER_CHOICES: tuple[str, ...] = tuple(p.value for p in Provider)


class ExecutionProvider(str, Enum):
    """onnxruntime execution provider names this app uses (``InferenceSession.get_providers()`` entries)."""

    CUDA = "CUDAExecutionProvider"
    CPU = "CPUExecutionProvider"

    def __str__(self) -> str:
        return self.value

    @property
    def short(self) -> str:
        """``"cuda"`` / ``"cpu"``: the name without ``ExecutionProvider``, lower case."""
        return short_name(self.value)


def short_name(name: str) -> str:
    """Any onnxruntime provider name without its ``ExecutionProvider`` suffix, lower case
    (``"CPUExecutionProvider"`` -> ``"cpu"``, ``"TensorrtExecutionProvider"`` -> ``"tensorrt"``)."""
    return str(name).removesuffix("ExecutionProvider").lower()


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
    so = ort.SessionOptions()
    so.log_severity_level = _LOAD_SEVERITY
    if intra_op_threads:
        so.intra_op_num_threads = intra_op_threads
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    with _lock:
        ort.set_default_logger_severity(_LOAD_SEVERITY)
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
    """One line saying why ORT's CUDA provider did not load here (best effort, never raises)."""
    ort = _onnxruntime()
    if ExecutionProvider.CUDA.value not in ort.get_available_providers():
        return f"this onnxruntime build ({ort.__version__}, device {ort.get_device()}) has no CUDA provider"
    lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if lib.is_file():
        try:
            ctypes.CDLL(str(lib))
        except OSError as exc:
            return f"the CUDA provider library could not be loaded ({exc})"
    return "no usable CUDA device or CUDA/cuDNN runtime was found"
