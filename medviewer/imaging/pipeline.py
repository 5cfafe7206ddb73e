"""The display pipeline: stored values -> the 8-bit image the radiologist (and the model) sees.

Grayscale standard pipeline, PS3.4 N.2.1.1 and PS3.3 C.11::

    stored values --Modality LUT (C.11.1)--> modality values (HU on CT)
                  --VOI LUT (C.11.2): window (LINEAR/LINEAR_EXACT/SIGMOID) or VOI LUT Sequence--> [0, 1]
                  --Presentation LUT (C.11.6): MONOCHROME1 / INVERSE invert, after the VOI--> uint8

Colour images (RGB, YBR_* and PALETTE COLOR, already RGB uint8 from :meth:`Instance.stored_pixels`) have
no VOI stage (C.11.2 applies to MONOCHROME1/2 only): by default they are shown unchanged; an explicit
window is applied to each channel.

Speed: for 8- and 16-bit stored values the whole chain is folded into one lookup table over every
possible stored value (256 or 65,536 entries, built in float64 in well under a millisecond), and a frame is
rendered by a single table lookup -- what happens on every mouse move while dragging W/L. Other sample
types (32-bit, float) take a vectorised float32 path.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydicom.dataset import Dataset

from medviewer.imaging.enum import PresentationLutShape, VoiLutFunction
from medviewer.imaging.lut import ModalityLut, VoiLut, read_lut_item
from medviewer.imaging.window import (
    IDENTITY_8BIT,
    Preset,
    Window,
    apply_window,
    auto_window,
    find_preset,
    invert_u8,
    linear_window,
    to_u8,
)
from medviewer.io.enum import PhotometricInterpretation
from medviewer.io.instance import Instance

__all__ = ["DisplayPipeline", "display_image"]

_MAX_CACHED_TABLES = 8


def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    try:
        seq = ds.get(keyword) if ds is not None else None
        return seq[0] if seq else None
    except (TypeError, IndexError, AttributeError):
        return None


def _functional(ds: Dataset, sequence: str, frame: int = 0) -> Dataset | None:
    """Item of `sequence` for `frame`: from the Per-frame Functional Groups item of that frame, else from
    the Shared Functional Groups (PS3.3 C.7.6.16)."""
    try:
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        frame_item = per_frame[frame] if per_frame is not None and frame < len(per_frame) else None
    except (TypeError, IndexError, AttributeError):
        frame_item = None
    for group in (frame_item, _first_item(ds, "SharedFunctionalGroupsSequence")):
        item = _first_item(group, sequence)
        if item is not None:
            return item
    return None


def _as_floats(value: object) -> list[float]:
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, list | tuple) or hasattr(value, "__iter__") and not isinstance(
        value, str | bytes) else [value]
    out = []
    for v in items:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return out


def _modality_lut(ds: Dataset, signed: bool, little: bool, frame: int = 0) -> ModalityLut:
    item = _first_item(ds, "ModalityLUTSequence")
    if item is not None and "LUTDescriptor" in item and "LUTData" in item:
        first, data, bits = read_lut_item(item, signed, little)
        return ModalityLut(rescale_type=str(item.get("ModalityLUTType", "")), lut=data, first_mapped=first,
                           lut_bits=bits)
    source: Dataset | None = ds
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        source = _functional(ds, "PixelValueTransformationSequence", frame)
    if source is None:
        return ModalityLut()
    slope = _as_floats(source.get("RescaleSlope", 1.0))
    intercept = _as_floats(source.get("RescaleIntercept", 0.0))
    s = slope[0] if slope and np.isfinite(slope[0]) and slope[0] != 0 else 1.0
    b = intercept[0] if intercept and np.isfinite(intercept[0]) else 0.0
    return ModalityLut(slope=s, intercept=b, rescale_type=str(source.get("RescaleType", "") or ""))


def _file_windows(ds: Dataset, frame: int = 0) -> list[Window]:
    source: Dataset | None = ds
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        source = _functional(ds, "FrameVOILUTSequence", frame)
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return []
    centers = _as_floats(source.get("WindowCenter"))
    widths = _as_floats(source.get("WindowWidth"))
    explanations = source.get("WindowCenterWidthExplanation", "")
    if isinstance(explanations, str):
        explanations = [explanations] * max(len(centers), 1)
    function = VoiLutFunction.parse(source.get("VOILUTFunction", ""))
    windows = []
    for i, (c, w) in enumerate(zip(centers, widths, strict=False)):
        try:
            windows.append(Window(c, w, function, str(explanations[i]) if i < len(explanations) else ""))
        except ValueError:
            continue  # an invalid window in the file (e.g. width 0) is skipped, not fatal
    return windows


def _voi_luts(ds: Dataset, signed: bool, little: bool) -> list[VoiLut]:
    out = []
    try:
        seq = ds.get("VOILUTSequence") or []
    except Exception:
        seq = []
    for item in seq:
        if "LUTDescriptor" not in item or "LUTData" not in item:
            continue
        try:
            first, data, bits = read_lut_item(item, signed, little)
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
        out.append(VoiLut(first, data, bits, str(item.get("LUTExplanation", "") or "")))
    return out


@dataclass(eq=False)
class DisplayPipeline:
    """Modality LUT, VOI choices and Presentation LUT of one instance; renders frames to uint8.

    Build it with :meth:`from_instance`. ``windows`` are the file's Window Center/Width pairs (the first
    is the default, PS3.3 C.11.2.1.2: further pairs are alternative views); ``voi_luts`` are its VOI LUT
    Sequence items, preferred over windows when both are present (as pydicom's ``apply_voi_lut``).

    Attributes
    ----------
    modality_lut : ModalityLut
    windows : list[Window]
    voi_luts : list[VoiLut]
    inverse : bool
        The Presentation LUT inverts (MONOCHROME1, or Presentation LUT Shape INVERSE). Applied once,
        after the VOI: never twice.
    color : bool
        Frames are RGB ``(H, W, 3)`` uint8 (no modality/VOI stage).
    identity_default : bool
        8-bit unsigned values with identity modality LUT and no VOI in the file (all 8-bit PNG/JPEG):
        the default display is the identity, pixels unchanged.
    """

    modality: str = "OT"
    modality_lut: ModalityLut = field(default_factory=ModalityLut)
    windows: list[Window] = field(default_factory=list)
    voi_luts: list[VoiLut] = field(default_factory=list)
    inverse: bool = False
    color: bool = False
    identity_default: bool = False
    _tables: OrderedDict = field(default_factory=OrderedDict, repr=False)  # (dtype, window, ...) -> LUT
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_instance(cls, inst: Instance, frame: int = 0) -> DisplayPipeline:
        """Precompute the pipeline of `inst` from its header (no pixels are read).

        Rescale and window attributes absent from the top level are taken from the Functional Groups of
        enhanced multi-frame objects (Pixel Value Transformation / Frame VOI LUT, PS3.3 C.7.6.16.2.9-10):
        the Per-frame item of `frame`, else the Shared item.
        """
        color = inst.is_color
        if not inst.is_dicom or inst.dataset is None:
            return cls(modality=inst.modality, color=color,
                       identity_default=inst.bits_allocated <= 8)
        ds = inst.dataset
        signed = inst.pixel_representation == 1
        try:
            little = ds.original_encoding[1] is not False
        except Exception:
            little = True
        if color:
            return cls(modality=inst.modality, color=True, identity_default=True)
        mlut = _modality_lut(ds, signed, little, frame)
        windows = _file_windows(ds, frame)
        vois = _voi_luts(ds, signed, little)
        shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
        inverse = (inst.photometric_interpretation == PhotometricInterpretation.MONOCHROME1.value
                   or shape == PresentationLutShape.INVERSE.value)
        identity = (not windows and not vois and mlut.is_identity and inst.bits_stored <= 8
                    and not signed and inst.bits_allocated <= 8)
        return cls(modality=inst.modality, modality_lut=mlut, windows=windows, voi_luts=vois,
                   inverse=inverse, identity_default=identity)

    @property
    def voi_function(self) -> VoiLutFunction:
        """The file's VOI LUT Function (0028,1056), LINEAR when absent: use it for windows the user drags,
        ``Window(center, width, pipeline.voi_function)``, so a SIGMOID image stays SIGMOID."""
        return self.windows[0].function if self.windows else VoiLutFunction.LINEAR

    # ------------------------------------------------------------------ values
    def modality_values(self, stored: np.ndarray) -> np.ndarray:
        """Stored values -> modality values (HU on CT) as float32, same shape (PS3.3 C.11.1).

        Colour frames are returned as float32 unchanged.
        """
        if self.color:
            return np.asarray(stored, dtype=np.float32)
        return self.modality_lut.apply(stored, np.float32)

    def default_window(self, stored: np.ndarray) -> Window | None:
        """The window shown first: the file's first window, else (no window and no VOI LUT) the identity
        window for 8-bit images, else a robust auto window (percentiles) of this frame.

        Returns ``None`` for colour images (shown unchanged). When the file has only a VOI LUT Sequence,
        :meth:`render` with ``window=None`` uses the LUT; this returns the auto window as the starting
        point for W/L dragging.
        """
        if self.color:
            return None
        if self.windows:
            return self.windows[0]
        if self.identity_default:
            return IDENTITY_8BIT
        return self.auto_window(stored)

    def auto_window(self, stored: np.ndarray) -> Window:
        """Robust automatic window: 0.5th..99.5th percentile of the frame's modality values (LINEAR)."""
        values = np.asarray(stored)
        if values.dtype.kind in "iu" and values.dtype.itemsize <= 2 and self.modality_lut.lut is None:
            # percentiles of stored values, then the (monotonic) rescale -- cheaper on large frames
            w = auto_window(values)
            ends = self.modality_lut.apply(np.array([w.lower, w.upper], np.float64), np.float64)
            lo, hi = sorted(float(v) for v in ends)
            return linear_window(lo, hi)
        return auto_window(self.modality_values(values))

    # ------------------------------------------------------------------ render
    def _unit(self, values: np.ndarray, window: Window | None, voi_index: int) -> np.ndarray:
        """Modality values -> VOI output in [0, 1] (float64 for LUT building)."""
        if window is None:
            if self.voi_luts:
                return self.voi_luts[min(voi_index, len(self.voi_luts) - 1)].apply(values)
            raise AssertionError("window resolved before _unit")
        return apply_window(values, window)

    def _table(self, dtype: np.dtype, window: Window | None, voi_index: int, invert: bool) -> np.ndarray:
        key = (dtype.str, window, voi_index, invert)
        with self._lock:  # the viewer renders from worker threads and the GUI thread
            table = self._tables.get(key)
            if table is not None:
                self._tables.move_to_end(key)
                return table
        if dtype.itemsize == 1:
            domain = np.arange(256, dtype=np.uint8).view(dtype)
        else:
            domain = np.arange(65536, dtype=np.uint16).view(dtype)
        values = self.modality_lut.apply(domain, np.float64)
        table = to_u8(self._unit(values, window, voi_index))
        if invert:
            table = invert_u8(table)
        with self._lock:
            self._tables[key] = table
            while len(self._tables) > _MAX_CACHED_TABLES:
                self._tables.popitem(last=False)
        return table

    def render(self, stored: np.ndarray, window: Window | None = None, invert: bool = False,
               voi_index: int = 0) -> np.ndarray:
        """Render one frame to the 8-bit display image.

        Parameters
        ----------
        stored
            Stored values of one frame as returned by :meth:`Instance.stored_pixels`: ``(H, W)``
            integer/float, or ``(H, W, 3)`` uint8 RGB.
        window
            VOI window in modality units (HU on CT). ``None``: the file's VOI (VOI LUT Sequence item
            `voi_index`, else Window `voi_index`), else the identity (8-bit) or auto window.
        invert
            Show the negative (applied on top of the Presentation LUT's own inversion).
        voi_index
            Which of the file's alternative VOI LUTs/windows to use when `window` is None.

        Returns
        -------
        np.ndarray
            uint8 ``(H, W)`` (0 = black) or ``(H, W, 3)`` RGB.
        """
        arr = np.asarray(stored)
        if self.color or arr.ndim == 3:
            out = arr if arr.dtype == np.uint8 else np.clip(arr, 0, 255).astype(np.uint8)
            if window is not None:
                table = to_u8(apply_window(np.arange(256, dtype=np.float64), window))
                out = cv2.LUT(out, table)
            return invert_u8(out) if invert else out
        flip = self.inverse != bool(invert)
        if window is None:
            if self.voi_luts:
                pass  # rendered through the VOI LUT below
            elif self.windows:
                window = self.windows[min(voi_index, len(self.windows) - 1)]
            elif self.identity_default:
                window = IDENTITY_8BIT
            else:
                window = self.auto_window(arr)
        if arr.dtype.kind in "iu" and arr.dtype.itemsize <= 2:
            table = self._table(arr.dtype, window, voi_index, flip)
            if arr.dtype.itemsize == 1:
                return cv2.LUT(arr.view(np.uint8), table)
            # np.take(mode="clip") skips bounds checks: ~3x faster than table[idx] (indices always valid)
            return np.take(table, arr.view(np.uint16), mode="clip")
        values = self.modality_lut.apply(arr, np.float32)
        if window is None:
            unit = self.voi_luts[min(voi_index, len(self.voi_luts) - 1)].apply(values)
        else:
            unit = apply_window(values, window)
        out = to_u8(unit)
        return invert_u8(out) if flip else out


def _resolve_window(window: Window | tuple[float, float] | None, preset: str | Preset | None) -> Window | None:
    if window is not None and preset is not None:
        raise ValueError("give either a window or a preset, not both")
    if preset is not None:
        return (preset if isinstance(preset, Preset) else find_preset(preset)).window
    if window is not None and not isinstance(window, Window):
        center, width = window
        return Window(center, width)
    return window


def display_image(inst: Instance, frame: int = 0, window: Window | tuple[float, float] | None = None,
                  preset: str | Preset | None = None, invert: bool = False,
                  stored: np.ndarray | None = None) -> np.ndarray:
    """Exactly what the viewer shows and ``medviewer render`` writes; the input of model preprocessing.

    Parameters
    ----------
    inst
        From :func:`medviewer.io.read_instance`.
    frame
        0-based frame index.
    window
        A :class:`Window` or ``(center, width)`` in modality units (HU on CT); ``None`` = the default
        display (file's VOI, identity for 8-bit images, else robust auto window).
    preset
        Name of a preset (see :data:`medviewer.imaging.PRESETS`), instead of `window`.
    invert
        Show the negative.
    stored
        The frame's stored values when the caller has already decoded them
        (``inst.stored_pixels(frame)``, e.g. from a viewer's cache); decoded here otherwise.

    Returns
    -------
    np.ndarray
        uint8 ``(rows, columns)`` gray or ``(rows, columns, 3)`` RGB, full resolution. For 8-bit PNG/JPEG
        with defaults, the decoded pixels unchanged.

    Raises
    ------
    ReadError
        The pixels cannot be decoded.
    ValueError
        Unknown preset, both window and preset given, or an invalid window.
    """
    win = _resolve_window(window, preset)
    pipeline = DisplayPipeline.from_instance(inst, frame)
    if stored is None:
        stored = inst.stored_pixels(frame)
    return pipeline.render(stored, win, invert)
