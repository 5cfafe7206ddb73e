"""ONNX Runtime execution provider names: the one enum and validator (a leaf module, stdlib only).

:class:`Provider` is what a user asks for (``--provider auto|cuda|cpu``, the saved setting, the ``Session``
argument), :class:`ExecutionProvider` what onnxruntime reports running (``InferenceSession.get_providers()``,
``results.json``'s ``"provider"``). :meth:`Provider.parse` is the one validator and :data:`PROVIDER_CHOICES`
the list argument parsers offer. Importing this module imports nothing else, so the command line and the
settings can use it at start-up; :mod:`medviewer.inference` re-exports every name.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Provider", "ExecutionProvider", "PROVIDER_CHOICES", "short_name"]


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
