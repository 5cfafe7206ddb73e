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

import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import cv2
import numpy as np
from pydicom.dataset import Dataset

from medviewer.errors import ReadError
from medviewer.imaging.enum import PresentationLutShape, VoiLutFunction
from medviewer.imaging.lut import LutError, ModalityLut, VoiLut, read_lut_item
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
from medviewer.io import header
from medviewer.io.enum import PhotometricInterpretation, RescaleType
from medviewer.io.instance import Instance

__all__ = ["DisplayPipeline", "display_image", "check_not_blank"]

_MAX_CACHED_TABLES = 8
_AUTO_SAMPLES = 262_144  # values the automatic window looks at (a regular subsample of larger frames)
_BLOCK_SAMPLES = 1 << 20  # samples rendered per block on the float path


def _modality_lut(inst: Instance, ds: Dataset, signed: bool, little: bool, frame: int = 0) -> ModalityLut:
    item = ds.get("ModalityLUTSequence")
    item = item[0] if item else None
    if item is not None and ("LUTDescriptor" in item or "LUTData" in item):
        try:
            first, data, bits = read_lut_item(item, signed, little)
        except LutError as exc:
            raise ReadError(inst.path, f"invalid Modality LUT Sequence (0028,3000): {exc} (PS3.3 C.11.1.1.1); "
                                       f"modality values would be wrong, refused") from None
        lut_type = header.text(item, "ModalityLUTType").upper()
        return ModalityLut(rescale_type=lut_type, lut=data, first_mapped=first, lut_bits=bits,
                           units=header.rescale_units(lut_type, inst.modality))
    values = inst.frame_rescale(frame)  # ReadError for an unreadable slope/intercept
    problem = values.problem(inst.bits_stored, inst.pixel_representation == 1)
    if problem:
        raise ReadError(inst.path, problem)
    return ModalityLut(slope=values.slope, intercept=values.intercept, rescale_type=values.rescale_type,
                       units=values.units)


def _file_windows(ds: Dataset, frame: int = 0, notes: list[str] | None = None) -> list[Window]:
    notes = notes if notes is not None else []
    source = header.attribute_source(ds, ("WindowCenter", "WindowWidth"), "FrameVOILUTSequence", frame)
    if source is None or "WindowCenter" not in source or "WindowWidth" not in source:
        return []
    centers = header.decimal_values(source, "WindowCenter") or ()
    widths = header.decimal_values(source, "WindowWidth") or ()
    if len(centers) != len(widths):
        notes.append(f"Window Center (0028,1050) has {len(centers)} value(s) and Window Width (0028,1051) "
                     f"{len(widths)}; they must pair up (PS3.3 C.11.2.1.2), so the file's windows are ignored")
        return []
    explanations = source.get("WindowCenterWidthExplanation", "")
    if isinstance(explanations, str):
        explanations = [explanations] * max(len(centers), 1)
    function = VoiLutFunction.parse(header.text(source, "VOILUTFunction"))
    windows = []
    for i, (c, w) in enumerate(zip(centers, widths, strict=False)):
        if c is None or w is None:
            notes.append(f"window {i + 1} of the file ignored: its Window Center/Width is not a number")
            continue
        try:
            windows.append(Window(c, w, function, str(explanations[i]) if i < len(explanations) else ""))
        except ValueError as exc:
            notes.append(f"window {i + 1} of the file ignored: {exc}")
            continue  # an invalid window in the file (e.g. width 0) is skipped, not fatal
    return windows


def _voi_luts(ds: Dataset, signed: bool, little: bool, notes: list[str] | None = None) -> list[VoiLut]:
    notes = notes if notes is not None else []
    out = []
    try:
        seq = ds.get("VOILUTSequence") or []
    except Exception:
        notes.append("VOI LUT Sequence (0028,3010) is unreadable and ignored")
        seq = []
    for k, item in enumerate(seq, start=1):
        try:
            first, data, bits = read_lut_item(item, signed, little)
        except (LutError, ValueError, TypeError, KeyError, AttributeError, struct.error) as exc:
            notes.append(f"VOI LUT Sequence item {k} ignored: {exc} (PS3.3 C.11.2.1.1)")
            continue
        if data.size > 1 and int(data.min()) == int(data.max()):
            notes.append(f"VOI LUT Sequence item {k} ignored: every entry is {int(data[0])}, it would show a "
                         f"blank image")
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
    notes : list[str]
        One line per problem found in the file's VOI attributes and what was used instead (an invalid
        VOI LUT item skipped for the next valid VOI, unpaired Window Center/Width values ignored, ...).
        Front ends show them (``medviewer render`` prints them on stderr); empty for a clean file.
    """

    modality: str = "OT"
    modality_lut: ModalityLut = field(default_factory=ModalityLut)
    windows: list[Window] = field(default_factory=list)
    voi_luts: list[VoiLut] = field(default_factory=list)
    inverse: bool = False
    color: bool = False
    identity_default: bool = False
    notes: list[str] = field(default_factory=list)
    _tables: OrderedDict = field(default_factory=OrderedDict, repr=False)  # (dtype, window, ...) -> LUT
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def from_instance(cls, inst: Instance, frame: int = 0) -> DisplayPipeline:
        """Precompute the pipeline of `inst` from its header (no pixels are read).

        Header attributes are read by :mod:`medviewer.io.header`: rescale and window attributes absent
        from the top level are taken from the Functional Groups of enhanced multi-frame objects (Pixel
        Value Transformation / Frame VOI LUT, PS3.3 C.7.6.16.2.9-10), the Per-frame item of `frame`
        overriding the Shared item; the units (HU or not) come from
        :func:`medviewer.io.header.rescale_units` via :attr:`ModalityLut.units`.

        Invalid VOI attributes are not fatal: a VOI LUT Sequence item whose descriptor and data disagree
        (C.11.2.1.1) is skipped for the next valid one, unpaired Window Center/Width values are ignored
        (C.11.2.1.2), and each such decision is recorded in :attr:`notes`.

        Raises
        ------
        ReadError
            The Modality LUT is wrong, so every modality value (HU) would be: a Modality LUT Sequence
            whose descriptor and data disagree (C.11.1.1.1), a non-finite or zero Rescale Slope, a
            non-finite Rescale Intercept, or a rescale that overflows (beyond 1e30) over the stored range.
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
        notes: list[str] = []
        mlut = _modality_lut(inst, ds, signed, little, frame)
        windows = _file_windows(ds, frame, notes)
        vois = _voi_luts(ds, signed, little, notes)
        if notes:
            notes.append("shown with " + ("the next valid VOI LUT" if vois else "the file's valid window" if windows
                                          else "an automatic window (0.5-99.5th percentile)"))
        inverse = (inst.photometric_interpretation == PhotometricInterpretation.MONOCHROME1
                   or PresentationLutShape.lookup(header.text(ds, "PresentationLUTShape")) == PresentationLutShape.INVERSE)
        identity = (not windows and not vois and mlut.is_identity and inst.bits_stored <= 8
                    and not signed and inst.bits_allocated <= 8)
        return cls(modality=inst.modality, modality_lut=mlut, windows=windows, voi_luts=vois,
                   inverse=inverse, identity_default=identity, notes=notes)

    @property
    def units(self) -> RescaleType:
        """Units of :meth:`modality_values` (``HU`` on CT unless its Rescale Type says otherwise; ``US``,
        unspecified, for colour and PNG/JPEG images)."""
        return RescaleType.US if self.color else self.modality_lut.units

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
        flat = values.reshape(-1)
        if flat.size > _AUTO_SAMPLES:  # the same regular subsample auto_window takes, before the float copy
            flat = flat[:: int(np.ceil(flat.size / _AUTO_SAMPLES))]
        return auto_window(self.modality_values(flat), max_samples=_AUTO_SAMPLES)

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
        # other sample types (32-bit, float): in blocks of rows, so the float temporaries of a large frame
        # stay a few MB instead of several times the frame
        out = np.empty(arr.shape, np.uint8)
        rows_per_block = max(1, _BLOCK_SAMPLES // max(1, int(np.prod(arr.shape[1:]))))
        voi = self.voi_luts[min(voi_index, len(self.voi_luts) - 1)] if window is None else None
        for start in range(0, arr.shape[0], rows_per_block):
            values = self.modality_lut.apply(arr[start:start + rows_per_block], np.float32)
            unit = voi.apply(values) if voi is not None else apply_window(values, window)
            out[start:start + rows_per_block] = to_u8(unit)
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
        The pixels cannot be decoded, or the header's Modality LUT is invalid or overflows (see
        :meth:`DisplayPipeline.from_instance`).
    ValueError
        Unknown preset, both window and preset given, or an invalid window.

    Notes
    -----
    A constant result is returned as is; callers that must not show or score a blank image (``render``
    with the default display, inference) call :func:`check_not_blank` on it.
    """
    win = _resolve_window(window, preset)
    pipeline = DisplayPipeline.from_instance(inst, frame)
    if stored is None:
        stored = inst.stored_pixels(frame)
    return pipeline.render(stored, win, invert)


def _is_constant(arr: np.ndarray) -> bool:
    if arr.size == 0:
        return True
    if arr.dtype.kind in "iub":
        return bool(arr.min() == arr.max())
    finite = arr[np.isfinite(arr)]
    return finite.size == 0 or bool(finite.min() == finite.max())


def check_not_blank(image: np.ndarray, path: object = "", frame: int | None = None,
                    stored: np.ndarray | None = None) -> np.ndarray:
    """Refuse a displayed image that is constant: a blank or garbled frame must not be shown as an image or
    scored by a model as if it were one.

    Parameters
    ----------
    image
        A display image, uint8 ``(H, W)`` or ``(H, W, 3)`` (what :func:`display_image` returns); any
        numeric array is accepted.
    path
        The file, for the error message.
    frame
        0-based frame index, for the error message of multi-frame images.
    stored
        The frame's stored values, when at hand: the message then says whether the frame itself is
        constant or the window maps all its values to one display value.

    Returns
    -------
    np.ndarray
        `image` itself, when at least two pixels differ.

    Raises
    ------
    ReadError
        Every pixel (every channel) has the same value, or the image is empty.
    """
    arr = np.asarray(image)
    where = f"frame {frame}: " if frame else ""
    if arr.size == 0:
        raise ReadError(str(path), f"{where}the displayed image is empty; refused")
    first = arr.reshape(-1)[0]
    constant = _is_constant(arr)
    if constant:
        if stored is not None and not _is_constant(np.asarray(stored)):
            raise ReadError(str(path), f"{where}the displayed image is blank (every pixel is {first}): the "
                                       f"window maps all stored values to one display value; refused (choose "
                                       f"another window)")
        raise ReadError(str(path), f"{where}the displayed image is blank (every pixel is {first}): a constant "
                                   f"frame carries no image; refused")
    return image
