"""Windows (VOI window center/width), the VOI functions of PS3.3 C.11.2, presets and the auto window.

Every function here is pure: arrays in, arrays out; nothing depends on a file or a widget.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medviewer.imaging.enum import RescaleType, VoiLutFunction
from medviewer.io.header import rescale_units

__all__ = [
    "Window",
    "Preset",
    "PRESETS",
    "IDENTITY_8BIT",
    "presets_for",
    "find_preset",
    "apply_window",
    "auto_window",
    "linear_window",
    "invert_u8",
    "to_u8",
]


@dataclass(frozen=True)
class Window:
    """A VOI window: Window Center (0028,1050) and Window Width (0028,1051), in modality units.

    Parameters
    ----------
    center, width
        In the output units of the Modality LUT (HU for CT). LINEAR needs ``width >= 1``; LINEAR_EXACT
        and SIGMOID need ``width > 0`` (PS3.3 C.11.2.1.2).
    function
        VOI LUT Function (0028,1056).
    explanation
        Window Center & Width Explanation (0028,1055), when the file gives one.

    Raises
    ------
    ValueError
        Non-finite center/width, or a width outside the range its function allows.
    """

    center: float
    width: float
    function: VoiLutFunction = VoiLutFunction.LINEAR
    explanation: str = field(default="", compare=False)  # a label; equal numbers = the same window

    def __post_init__(self) -> None:
        if not (np.isfinite(self.center) and np.isfinite(self.width)):
            raise ValueError(f"Window center/width must be finite, got {self.center}/{self.width}")
        function = VoiLutFunction.parse(self.function)
        object.__setattr__(self, "function", function)
        object.__setattr__(self, "center", float(self.center))
        object.__setattr__(self, "width", float(self.width))
        if function == VoiLutFunction.LINEAR and self.width < 1:
            raise ValueError(f"Window width must be >= 1 for LINEAR (PS3.3 C.11.2.1.2.1), got {self.width}")
        if self.width <= 0:
            raise ValueError(f"Window width must be > 0 for {function.value}, got {self.width}")

    @property
    def lower(self) -> float:
        """Modality value at and below which the output is black (before any inversion)."""
        if self.function == VoiLutFunction.LINEAR:
            return self.center - 0.5 - (self.width - 1) / 2
        return self.center - self.width / 2

    @property
    def upper(self) -> float:
        """Modality value above which the output is white (before any inversion)."""
        if self.function == VoiLutFunction.LINEAR:
            return self.center - 0.5 + (self.width - 1) / 2
        return self.center + self.width / 2

    def with_center_width(self, center: float, width: float) -> Window:
        """A copy with new center/width (same function), width clamped to the allowed minimum."""
        minimum = 1.0 if self.function == VoiLutFunction.LINEAR else 1e-6
        return Window(center, max(width, minimum), self.function)


#: LINEAR 128/256 maps 8-bit value x to exactly x/255: the identity display of 8-bit images.
IDENTITY_8BIT = Window(128.0, 256.0, VoiLutFunction.LINEAR, "full 8-bit range")


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Apply a VOI window, PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) and C.11.2.1.3.1 (SIGMOID).

    Parameters
    ----------
    values
        Modality values (any shape, any real dtype).
    window
        The window.

    Returns
    -------
    np.ndarray
        Same shape, in ``[0, 1]`` (0 = black before the Presentation LUT), float64 for float64 input
        else float32.
    """
    dtype = np.float64 if np.asarray(values).dtype == np.float64 else np.float32
    x = np.asarray(values, dtype=dtype)
    c, w = window.center, window.width
    if window.function == VoiLutFunction.SIGMOID:
        with np.errstate(over="ignore"):  # exp overflow -> inf -> output 0, as the formula intends
            return (1.0 / (1.0 + np.exp(-4.0 * (x - c) / w))).astype(dtype, copy=False)
    if window.function == VoiLutFunction.LINEAR:
        c, w = c - 0.5, w - 1.0
        if w <= 0:  # width 1: a threshold at c - 0.5
            return (x > c).astype(dtype)
    y = (x - c) / w + 0.5
    return np.clip(y, 0.0, 1.0, out=y)


def to_u8(unit: np.ndarray) -> np.ndarray:
    """``[0, 1]`` floats -> uint8 by rounding ``255 * y`` (round half to even)."""
    return np.clip(np.rint(np.asarray(unit) * 255.0), 0, 255).astype(np.uint8)


def invert_u8(image_u8: np.ndarray) -> np.ndarray:
    """Photographic negative of an 8-bit display image (``255 - x``)."""
    return np.subtract(255, image_u8, dtype=np.uint8)


def auto_window(values: np.ndarray, low: float = 0.5, high: float = 99.5, max_samples: int = 262_144) -> Window:
    """A robust window from percentiles of the modality values (used when the file gives none).

    Parameters
    ----------
    values
        Modality values (HU on CT), any shape; NaNs are ignored.
    low, high
        Percentiles mapped to black and white (default 0.5 and 99.5, so a few outliers -- metal, the
        table, padding -- do not flatten the contrast).
    max_samples
        Large images are subsampled on a regular grid to at most this many values, for speed.

    Returns
    -------
    Window
        LINEAR window (PS3.3 C.11.2.1.2.1) whose black and white points (:attr:`Window.lower`,
        :attr:`Window.upper`) are ``p_low`` and ``p_high``: center ``(p_low + p_high) / 2 + 0.5``, width
        ``p_high - p_low + 1``. LINEAR, so a viewer that re-creates it from its center/width alone
        (``Window(center, width)``) renders exactly the same image.
    """
    v = np.asarray(values)
    flat = v.reshape(-1)
    if flat.size > max_samples:
        flat = flat[:: int(np.ceil(flat.size / max_samples))]
    flat = flat[np.isfinite(flat)] if flat.dtype.kind == "f" else flat
    if flat.size == 0:
        return linear_window(0.0, 1.0)
    lo, hi = np.percentile(flat, [low, high])
    if hi - lo < 1:
        lo, hi = float(flat.min()), float(flat.max())
    if hi - lo < 1:
        mid = (lo + hi) / 2
        lo, hi = mid - 0.5, mid + 0.5
    return linear_window(float(lo), float(hi))


def linear_window(black: float, white: float, explanation: str = "auto") -> Window:
    """The LINEAR window mapping `black` (and below) to 0 and `white` (and above) to 1.

    Raises
    ------
    ValueError
        ``white - black < 0``.
    """
    if white < black:
        raise ValueError(f"white point {white} is below the black point {black}")
    return Window((black + white) / 2 + 0.5, white - black + 1.0, VoiLutFunction.LINEAR, explanation)


@dataclass(frozen=True)
class Preset:
    """A named window for a modality (center/width in the Modality LUT's output units, HU for CT)."""

    name: str
    center: float
    width: float
    modality: str = "CT"

    @property
    def units(self) -> RescaleType:
        """The units of center/width, by the header reader's rule (:func:`medviewer.io.header.rescale_units`
        with no Rescale Type): HU for CT presets, else unspecified."""
        return rescale_units("", self.modality)

    @property
    def window(self) -> Window:
        """The preset as a LINEAR :class:`Window`."""
        return Window(self.center, self.width, VoiLutFunction.LINEAR, self.name)


#: Standard CT windows (HU). Sources: Radiopaedia "Windowing (CT)"; Hoang JK et al., AJR 2010.
PRESETS: tuple[Preset, ...] = (
    Preset("lung", -600, 1500),
    Preset("mediastinum", 50, 350),
    Preset("abdomen", 40, 400),
    Preset("liver", 30, 150),
    Preset("bone", 400, 1800),
    Preset("brain", 40, 80),
    Preset("subdural", 75, 215),
    Preset("stroke", 40, 40),
    Preset("temporal bone", 600, 2800),
    Preset("soft tissue", 50, 400),
)


def presets_for(modality: str) -> list[Preset]:
    """Window presets meaningful for `modality` (CT: HU windows; others have no absolute scale: [])."""
    return [p for p in PRESETS if p.modality == str(modality).upper()]


def find_preset(name: str) -> Preset:
    """Look a preset up by name (case-insensitive; ``_``/``-`` match a space).

    Raises
    ------
    ValueError
        Unknown name; the message lists the known ones.
    """
    key = name.strip().lower().replace("_", " ").replace("-", " ")
    for preset in PRESETS:
        if preset.name == key:
            return preset
    names = ", ".join(p.name for p in PRESETS)
    raise ValueError(f"unknown window preset '{name}' (known: {names})")
