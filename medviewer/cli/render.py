"""``medviewer render PATH --out FILE.png [--frame N] [--window CENTER WIDTH | --preset NAME] [--invert]``.

Writes exactly the image the viewer shows -- :func:`medviewer.imaging.display_image`: full resolution,
8-bit, no overlays -- as PNG (or any format OpenCV writes, chosen by the extension).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import cv2

from medviewer.errors import ReadError, display_path, error_line
from medviewer.imaging import PRESETS, DisplayPipeline, Window, check_not_blank, display_image, find_preset
from medviewer.io import quiet_pydicom_warnings, read_instance

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``render`` on the ``medviewer`` subcommand parser."""
    p = subparsers.add_parser(
        "render", help="write the displayed image of a DICOM/PNG/JPEG file to a PNG",
        description="Write exactly the image the viewer shows (full resolution, no overlays): modality "
                    "LUT, VOI window or LUT, MONOCHROME1 inversion. Default window: the file's, else "
                    "automatic (8-bit images unchanged).")
    p.add_argument("path", metavar="PATH", help="DICOM, PNG or JPEG file")
    p.add_argument("--out", required=True, metavar="FILE.png", help="output image (PNG recommended)")
    p.add_argument("--frame", type=int, default=0, metavar="N", help="0-based frame of a multi-frame image")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--window", nargs=2, type=float, metavar=("CENTER", "WIDTH"),
                       help="window center and width in modality units (HU for CT)")
    group.add_argument("--preset", metavar="NAME",
                       help="window preset: " + ", ".join(f"'{p.name}'" for p in PRESETS))
    p.add_argument("--invert", action="store_true", help="write the negative")
    p.set_defaults(run=run)
    return p


def _error(message: str) -> int:
    print(f"medviewer: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run ``medviewer render``; returns the exit status."""
    quiet_pydicom_warnings()
    path = Path(args.path)
    try:
        window = Window(*args.window) if args.window else None
        preset = find_preset(args.preset) if args.preset else None
    except ValueError as exc:
        return _error(str(exc))
    inst = read_instance(path)
    if not 0 <= args.frame < inst.number_of_frames:
        raise ReadError(path, f"--frame {args.frame} out of range (the image has {inst.number_of_frames} "
                              f"frame{'s' * (inst.number_of_frames != 1)}: 0..{inst.number_of_frames - 1})")
    try:
        pipeline = DisplayPipeline.from_instance(inst, args.frame)
        stored = inst.stored_pixels(args.frame)
        image = display_image(inst, frame=args.frame, window=window, preset=preset, invert=args.invert,
                              stored=stored)
    except ReadError:
        raise
    except Exception as exc:  # decoder bugs on odd files: still one line, no traceback
        raise ReadError(path, f"cannot render: {error_line(exc)}") from exc
    if window is None and preset is None:  # the file's own display must be an image, not a blank
        check_not_blank(image, path, args.frame, stored)
    notes = list(pipeline.notes)
    if preset is not None and not inst.is_color and pipeline.units != preset.units:
        written = pipeline.modality_lut.rescale_type or "absent"
        units = pipeline.units.label or "unspecified units"
        notes.append(f"preset {preset.name!r} is in {preset.units.value}, but this image's values are in {units} "
                     f"(Modality {inst.modality}, Rescale Type {written}); rendered with it anyway")
    for note in notes:
        print(f"medviewer: note: {display_path(path)}: {note}", file=sys.stderr)
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        return _error(f"{display_path(out)}: output folder {display_path(out.parent)} does not exist")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    try:  # encode, then write with Python: any file name (non-UTF-8 too), errors named
        ok, buf = cv2.imencode(out.suffix or ".png", bgr)
    except cv2.error as exc:
        return _error(f"{display_path(out)}: cannot write image: {' '.join(str(exc).split())[:200]}")
    if not ok:
        return _error(f"{display_path(out)}: cannot write image (unknown extension)")
    try:
        out.write_bytes(buf.tobytes())
    except OSError as exc:
        return _error(f"{display_path(out)}: cannot write image: {exc.strerror or exc}")
    if window is None and preset is None and not inst.is_color:
        used = pipeline
        how = "file VOI LUT" if used.voi_luts else (
            f"window {used.windows[0].center:g}/{used.windows[0].width:g}" if used.windows else "default window")
    else:
        w = window or (preset.window if preset else None)
        how = f"window {w.center:g}/{w.width:g}" if w else "colour, unchanged"
    kind = "RGB" if image.ndim == 3 else "gray"
    print(f"wrote {display_path(out)} ({image.shape[1]}x{image.shape[0]} {kind}, {how}{', inverted' if args.invert else ''})")
    return 0
