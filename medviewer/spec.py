"""The network input and its preprocessing parameters: the part of the model card that pixels depend on.

A leaf module: it imports only pydantic, never :mod:`medviewer.imaging` nor :mod:`medviewer.inference`, so
both can use it without importing each other. :mod:`medviewer.imaging.preprocess` implements these
parameters; :mod:`medviewer.inference.card` embeds them in the model card (``card.input``,
``card.preprocessing``) and re-exports every name here, so ``from medviewer.inference.card import InputSpec``
and cards written before the move keep working (the JSON is the same).
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["StrictModel", "ResizeMode", "InputSpec", "Preprocessing"]


class StrictModel(BaseModel):
    """Base of the model card's parts: unknown fields are an error, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ResizeMode(str, Enum):
    """How the display image is fitted to the network's input size."""

    SQUEEZE = "squeeze"  #: resize both axes independently (aspect ratio not kept)
    LETTERBOX = "letterbox"  #: keep aspect ratio, pad the short side symmetrically with pad_value


class InputSpec(StrictModel):
    """The ONNX input tensor: shape (N, channels, height, width), N dynamic."""

    name: str = "image"
    channels: Literal[1, 3] = 1
    height: int = Field(gt=0)
    width: int = Field(gt=0)
    dtype: Literal["float32"] = "float32"


class Preprocessing(StrictModel):
    """From the display pipeline's 8-bit image (VOI applied, MONOCHROME1 inverted) to the input tensor.

    ``x = (u8 * scale - mean[c]) / std[c]`` after resizing with ``resize``/``interpolation``.
    Implemented once, in :func:`medviewer.imaging.preprocess.preprocess`, for training and the app.
    """

    source: Literal["display_u8"] = "display_u8"
    resize: ResizeMode = ResizeMode.SQUEEZE
    interpolation: Literal["area", "linear", "cubic"] = "area"
    pad_value: int = Field(0, ge=0, le=255)
    scale: float = 1.0 / 255.0
    mean: list[float] = Field(default_factory=lambda: [0.5])
    std: list[float] = Field(default_factory=lambda: [0.25])
