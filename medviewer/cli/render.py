"""``medviewer render PATH --out FILE.png [--frame N] [--window CENTER WIDTH | --preset NAME] [--invert]``.

Writes exactly the image the viewer shows -- :func:`medviewer.imaging.display_image`: full resolution,
8-bit, no overlays -- as PNG (or any format OpenCV writes, chosen by the extension).

With ``--plane axial|coronal|sagittal`` PATH is a series (folder or files) and the image is the multiplanar
reformat the MPR view shows (:meth:`medviewer.imaging.mpr.Volume.render`): ``[--index N | --position MM]``
choose the plane, ``--slab MM --projection mip|minip|mean`` a thick slab.
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

_EPILOG = """examples:
  medviewer render image.dcm --out image.png --preset lung
  medviewer render CT_FOLDER --plane coronal --out coronal.png            # middle coronal plane
  medviewer render CT_FOLDER --plane sagittal --index 200 --out sag.png    # 0-based plane index
  medviewer render CT_FOLDER --plane axial --position 250 --out ax.png    # z = 250 mm (LPS)
  medviewer render CT_FOLDER --plane coronal --slab 20 --projection mip --preset bone --out mip.png

--position is the patient coordinate in mm along the plane's normal (DICOM LPS: x for sagittal, y for
coronal, z for axial). Reformatted images have square pixels of the finest in-plane spacing, so their
height/width is the true proportion in mm (slice spacing from Image Position (Patient), not Slice Thickness).
A series that is not one volume (mixed orientation, missing slices, unequal spacing, gantry tilt) is
refused with the reason."""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``render`` on the ``medviewer`` subcommand parser."""
    p = subparsers.add_parser(
        "render", help="write the displayed image of a DICOM/PNG/JPEG file (or a CT/MR reformat) to a PNG",
        description="Write exactly the image the viewer shows (full resolution, no overlays): modality "
                    "LUT, VOI window or LUT, MONOCHROME1 inversion. Default window: the file's, else "
                    "automatic (8-bit images unchanged). With --plane: a multiplanar reformat of a series.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", metavar="PATH", help="DICOM, PNG or JPEG file; with --plane, a series folder")
    p.add_argument("--out", required=True, metavar="FILE.png", help="output image (PNG recommended)")
    p.add_argument("--frame", type=int, default=0, metavar="N", help="0-based frame of a multi-frame image")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--window", nargs=2, type=float, metavar=("CENTER", "WIDTH"),
                       help="window center and width in modality units (HU for CT)")
    group.add_argument("--preset", metavar="NAME",
                       help="window preset: " + ", ".join(f"'{p.name}'" for p in PRESETS))
    p.add_argument("--invert", action="store_true", help="write the negative")
    mpr = p.add_argument_group("multiplanar reformat (CT/MR series)")
    mpr.add_argument("--plane", choices=("axial", "coronal", "sagittal"),
                     help="reformat PATH (a series) in this plane")
    where = mpr.add_mutually_exclusive_group()
    where.add_argument("--index", type=int, metavar="N", help="0-based plane index (default: the middle one)")
    where.add_argument("--position", type=float, metavar="MM",
                       help="plane at this patient coordinate in mm along its normal (LPS)")
    mpr.add_argument("--slab", type=float, default=0.0, metavar="MM", help="thick slab in mm (default: 0, one plane)")
    mpr.add_argument("--projection", choices=("mip", "minip", "mean"), default="mip",
                     help="how the slab is projected (default: mip)")
    mpr.add_argument("--series", metavar="UID|NUMBER",
                     help="which series of PATH (Series Instance UID or Series Number; default: the one with most slices)")
    p.set_defaults(run=run)
    return p


def _error(message: str) -> int:
    print(f"medviewer: error: {message}", file=sys.stderr)
    return 2


def _write(out: Path, image: Any) -> int | None:
    """Encode `image` by `out`'s extension and write it; the exit status of an error, None when written."""
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
    return None


def _pick_series(path: Path, wanted: str | None) -> Any:
    """The series of `path` to reformat (see ``--series``); ReadError when none fits."""
    from medviewer.io import scan

    found = [s for s in scan(path).series if s.instances and s.instances[0].is_dicom]
    if not found:
        raise ReadError(path, "no DICOM series found to reformat")
    if wanted:
        hits = [s for s in found if s.series_instance_uid == wanted or str(s.series_number) == wanted]
        if not hits:
            listed = ", ".join(f"{s.series_number} ({len(s.instances)} images)" for s in found)
            raise ReadError(path, f"no series {wanted!r} here; series numbers: {listed}")
        return hits[0]
    best = max(found, key=lambda s: len(s.instances))
    if len(found) > 1:
        print(f"medviewer: note: {display_path(path)}: {len(found)} series; reformatting series "
              f"{best.series_number} ({len(best.instances)} images); choose another with --series", file=sys.stderr)
    return best


def _run_mpr(args: argparse.Namespace, path: Path, window: Window | None, preset: Any) -> int:
    """``render --plane``: one reformatted plane or slab of a series."""
    from medviewer.imaging.mpr import VolumeError, build_volume

    if args.slab < 0 or args.slab != args.slab:
        return _error(f"--slab {args.slab:g}: the slab thickness must be 0 or more mm")
    series = _pick_series(path, args.series)
    try:
        volume = build_volume(series)
    except VolumeError as exc:
        raise ReadError(path, f"cannot reformat series {series.series_number}: {exc.reason}") from None
    plane = volume.plane(args.plane)
    if args.position is not None:
        try:
            index = volume.index_at(plane, args.position)
        except VolumeError as exc:
            return _error(f"{display_path(path)}: {exc.reason}")
    else:
        index = plane.count // 2 if args.index is None else args.index
        if not 0 <= index < plane.count:
            return _error(f"{display_path(path)}: --index {index} out of range (the {plane.name} planes are "
                          f"0..{plane.count - 1})")
    w = window or (preset.window if preset else None)
    image = volume.render(plane, index, w, args.slab, args.projection, args.invert)
    status = _write(Path(args.out), image)
    if status is not None:
        return status
    used = w or volume.default_window
    how = f"window {used.center:g}/{used.width:g}" if used else "file VOI LUT"
    first, stop = volume.slab_range(plane, index, args.slab)
    slab = f", {args.projection} slab of {stop - first} planes ({(stop - first) * plane.spacing:.1f} mm)" \
        if stop - first > 1 else ""
    axis = "xyz"[{"sagittal": 0, "coronal": 1, "axial": 2}[plane.name]]
    print(f"wrote {display_path(Path(args.out))} ({image.shape[1]}x{image.shape[0]} gray, {plane.name} {index}/"
          f"{plane.count - 1} at {axis} = {volume.position_of(plane, index):.1f} mm{slab}, "
          f"{plane.display_mm:.3f} mm pixels, {how}{', inverted' if args.invert else ''})")
    for note in volume.notes:  # e.g. a gantry tilt shear-corrected, rescale differing between slices
        print(f"medviewer: note: {note}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``medviewer render``; returns the exit status."""
    quiet_pydicom_warnings()
    path = Path(args.path)
    try:
        window = Window(*args.window) if args.window else None
        preset = find_preset(args.preset) if args.preset else None
    except ValueError as exc:
        return _error(str(exc))
    if getattr(args, "plane", None):
        return _run_mpr(args, path, window, preset)
    if args.index is not None or args.position is not None or args.slab or args.series:
        return _error("--index, --position, --slab and --series need --plane axial|coronal|sagittal")
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
    status = _write(out, image)
    if status is not None:
        return status
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
