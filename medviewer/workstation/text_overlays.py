"""Qt-free content of the viewport overlays: four-corner text and orientation labels.

Orientation follows DICOM's patient coordinate system (PS3.3 C.7.6.2.1.1): +x towards the patient's
Left, +y Posterior, +z Head. Labels come from Image Orientation (Patient) (0020,0037) when present,
else from Patient Orientation (0020,0020) (e.g. ``["L", "F"]`` on a PA chest radiograph).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["corner_text", "orientation_labels", "format_person_name", "format_date"]

_AXES = (("L", "R"), ("P", "A"), ("H", "F"))
_LETTER_VEC = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1),
               "F": (0, 0, -1), "S": (0, 0, 1), "I": (0, 0, -1)}


def format_person_name(pn: Any) -> str:
    """DICOM PN ``Family^Given^Middle`` -> ``FAMILY, Given Middle``."""
    s = str(pn or "").strip()
    if not s:
        return ""
    parts = [p.strip() for p in s.split("^")]
    family, rest = parts[0], " ".join(p for p in parts[1:4] if p)
    return f"{family.upper()}, {rest}" if rest else family.upper()


def format_date(da: Any) -> str:
    """DICOM DA ``YYYYMMDD`` -> ``YYYY-MM-DD`` (other strings unchanged)."""
    s = str(da or "").strip()
    return f"{s[:4]}-{s[4:6]}-{s[6:8]}" if len(s) == 8 and s.isdigit() else s


def _label(vec: np.ndarray) -> str:
    """Up to two letters for a direction, strongest axis first (e.g. ``"LP"`` for an oblique)."""
    comps = sorted(range(3), key=lambda i: -abs(vec[i]))
    out = ""
    for i in comps[:2]:
        if abs(vec[i]) > 0.25 * max(abs(vec).max(), 1e-9) and abs(vec[i]) > 1e-6:
            out += _AXES[i][0] if vec[i] > 0 else _AXES[i][1]
    return out


def _directions(iop: Sequence[float] | None, patient_orientation: Sequence[str] | None
                ) -> tuple[np.ndarray, np.ndarray] | None:
    if iop is not None and len(iop) == 6:
        row = np.asarray(iop[:3], float)
        col = np.asarray(iop[3:], float)
        if np.linalg.norm(row) > 0 and np.linalg.norm(col) > 0:
            return row, col
    if patient_orientation is not None and len(patient_orientation) == 2:
        vecs = []
        for s in patient_orientation:
            v = np.zeros(3)
            for ch in str(s).upper():
                if ch in _LETTER_VEC:
                    v += _LETTER_VEC[ch]
            if not v.any():
                return None
            vecs.append(v)
        return vecs[0], vecs[1]
    return None


def orientation_labels(iop: Sequence[float] | None, patient_orientation: Sequence[str] | None,
                       rotation: int = 0, flip_h: bool = False, flip_v: bool = False
                       ) -> dict[str, str] | None:
    """Patient-direction letters at the viewport's ``left``, ``right``, ``top`` and ``bottom`` edges.

    ``rotation`` (clockwise degrees) and the flips are those of the view, so the labels follow what
    the reader sees. Returns None when the orientation is unknown.
    """
    dirs = _directions(iop, patient_orientation)
    if dirs is None:
        return None
    row, col = dirs  # patient direction of +x (along a row) and +y (down a column) in the image
    # screen direction (1, 0) expressed in image axes: undo rotation then flips
    a = math.radians(rotation)
    c, s = round(math.cos(a), 12), round(math.sin(a), 12)

    def screen_to_patient(dx: float, dy: float) -> np.ndarray:
        ix, iy = c * dx + s * dy, -s * dx + c * dy  # inverse rotation
        ix, iy = (-ix if flip_h else ix), (-iy if flip_v else iy)
        return ix * row + iy * col

    right, down = screen_to_patient(1, 0), screen_to_patient(0, 1)
    return {"right": _label(right), "left": _label(-right), "bottom": _label(down), "top": _label(-down)}


def corner_text(inst: Any, frame: int, n_frames: int, window: tuple[float, float] | None, zoom: float,
                invert: bool = False, rotation: int = 0, flips: str = "", patient: bool = True
                ) -> dict[str, list[str]]:
    """Lines of the four corners (keys ``tl``, ``tr``, ``bl``, ``br``) for one image.

    ``inst`` is a :class:`medviewer.io.Instance` (any object with its attributes works); ``patient``
    False leaves out the identifying lines (name, ID, sex/age), e.g. for an anonymised export.
    """
    g = lambda name: getattr(inst, name, None)  # noqa: E731
    tl: list[str] = []
    if patient:
        name = format_person_name(g("patient_name"))
        if name:
            tl.append(name)
        if g("patient_id"):
            tl.append(f"ID: {g('patient_id')}")
        sa = " ".join(x for x in (str(g("patient_sex") or ""), str(g("patient_age") or "")) if x)
        if sa:
            tl.append(sa)
    tr: list[str] = []
    if g("study_description"):
        tr.append(str(g("study_description")))
    if g("study_date"):
        tr.append(format_date(g("study_date")))
    mod = g("modality") or ""
    ser = " ".join(x for x in (f"Se {g('series_number')}" if g("series_number") is not None else "",
                               str(g("series_description") or "")) if x)
    tr.append(" ".join(x for x in (str(mod), ser) if x))
    bl = [f"Im {frame + 1}/{n_frames}"]
    loc, thk = g("slice_location"), g("slice_thickness")
    if loc is not None or thk is not None:
        bits = []
        if loc is not None:
            bits.append(f"Loc {float(loc):.1f} mm")
        if thk is not None:
            bits.append(f"Thk {float(thk):.1f} mm")
        bl.append("  ".join(bits))
    rows, cols = g("rows"), g("columns")
    if rows and cols:
        bl.append(f"{cols} × {rows}")
    br: list[str] = []
    if window is not None:
        br.append(f"W {window[1]:.0f}  L {window[0]:.0f}")
    state = [f"Zoom {zoom * 100:.0f}%"]
    if rotation:
        state.append(f"Rot {rotation}°")
    if flips:
        state.append(flips)
    if invert:
        state.append("Inv")
    br.append("  ".join(state))
    return {"tl": tl, "tr": [t for t in tr if t], "bl": bl, "br": br}
