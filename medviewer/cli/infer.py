"""``medviewer infer``: score files, folders and DICOM series with a model package; write JSON/CSV/overlays.

``--models auto`` scores every image with every installed model whose intended use it meets (the card's
intended-use policy decides, as for one model): ``results.json`` then holds one entry per (image, model),
each naming its ``"model"``; an image no model applies to keeps one entry per model, each saying why.

Exit status: 0 when every image was scored, 2 when some inputs failed (each has an ``error`` entry in
``results.json``), 1 when nothing could run (invalid model, unwritable output, no images found).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from medviewer.errors import MedViewerError, display_path
from medviewer.providers import PROVIDER_CHOICES

__all__ = ["add_parser", "run", "EXIT_OK", "EXIT_SOME_FAILED", "write_results"]

EXIT_OK = 0
EXIT_SOME_FAILED = 2

_EPILOG = """\
outputs:
  DIR/results.json   {"model": {"name", "version", "sha256"}, "provider", "results": [{"path",
                     "sop_instance_uid", "frame", "scores": {label: probability}, "flagged": [label],
                     "regions": [{"label", "bbox": [x0, y0, x1, y1], "bbox_mm", "peak", "mean",
                     "area_px", "area_mm2"}], "applicability": {"status": "in_scope" |
                     "out_of_scope" | "unknown", "reasons", "checks", "ood_score", "ood_threshold",
                     "overridden"}, "seconds", "error", "overlay"}], "summary",
                     "ignored": [{"path", "reason"}]}  (files in folders that are not images)
  DIR/results.csv    path, [frame (with --frames all),] one probability column per label,
                     flagged (';'-separated), applicability, ood_score, error
  with --models auto: "models": [{"name", "version", "sha256", "path", "labels", "operating_points",
                     "intended_use"}], one entry per (image, model) in "results", each with "model": name
                     (an image outside every model's intended use: one entry per model, with the reasons);
                     "outside_intended_use": [{"path", "frame", "model", "reasons"}]: the pairs left out;
                     results.csv gets a model column and the union of the labels; overlays/<model>/,
                     dicom/<model>/

intended use:
  Every image is checked against the model card's intended use (modality, body part, view, patient
  age, photometric interpretation from the DICOM header; a missing tag is "unknown") and against its
  out-of-distribution detector (pixels). An out-of-scope image gets no flagged labels and no regions;
  its scores stay in the file, and "applicability" says why in one line per reason.
  --ignore-intended-use shows findings anyway and records "overridden": true.
  DIR/overlays/*.png with --overlays: heat map of the top flagged (else most probable) label,
                     region outlines and scores, on the original image grid
  DIR/dicom/*.dcm with --dicom: per scored DICOM image SR_<SOP Instance UID>.dcm (TID 1500) and SC_...dcm
                     (the overlay); with --anonymize de-identified and named by the keyed UID; --send
                     NODE stores them and records "sent" in the audit log

exit status:
  0  every image was scored
  2  some inputs failed (truncated/undecodable DICOM, a named file that is not an image, ...): each
     has an "error" entry; the others are scored. Non-image files found in folders (LICENSE, *.txt)
     are listed under "ignored" and do not count as failures
  1  nothing ran: invalid or missing model, unwritable output folder, or no images found; or
     --send did not store every SR/SC (one line per object that failed)

examples:
  medviewer infer study/ --out results/
  medviewer infer a.dcm b.jpeg --model ./my-model --provider cuda --batch 16 --overlays --out results/
  medviewer infer study/ --models auto --out results/      (every installed model whose intended use fits)
  medviewer infer study/ --dicom --anonymize --pseudonym-key site.key --send dicom://PACS@pacs:104 --out r/
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``infer`` on the ``medviewer`` subcommand parser."""
    from medviewer.inference.heatmap import COLORMAPS
    from medviewer.inference.registry import DEFAULT_MODEL_NAME

    p = subparsers.add_parser(
        "infer", help="score images with a model package; write results.json/.csv and overlays",
        description="Score DICOM/PNG/JPEG files, folders and DICOM series (each instance) with "
                    "an ONNX model package: probabilities, findings flagged at the card's operating points, "
                    "class activation maps and flagged regions.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="files or folders (scanned recursively)")
    p.add_argument("--model", metavar="NAME|PATH", default=None,
                   help=f"model name (see 'medviewer models list') or package path (default: {DEFAULT_MODEL_NAME})")
    p.add_argument("--models", metavar="auto|NAME,...", default=None,
                   help="score with several models: auto = every installed model, each image by those whose "
                        "intended use it meets; or a comma-separated list of names/paths (default: one model, "
                        "--model)")
    p.add_argument("--out", metavar="DIR", required=True, type=Path, help="output folder (created)")
    p.add_argument("--provider", choices=PROVIDER_CHOICES, default="auto",
                   help="ONNX Runtime execution provider; auto = CUDA when it loads, else CPU (default: auto)")
    p.add_argument("--batch", type=int, default=8, metavar="N", help="images per ONNX Runtime call (default: 8)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="decoding/postprocessing threads (default: min(4, CPUs))")
    p.add_argument("--overlays", action="store_true", help="write DIR/overlays/<name>.png per image")
    p.add_argument("--colormap", choices=sorted(COLORMAPS), default="jet", help="heat map colours (default: jet)")
    p.add_argument("--alpha", type=float, default=0.4, help="heat map opacity 0..1 (default: 0.4)")
    p.add_argument("--region-threshold", type=float, default=0.5, metavar="F",
                   help="a region is where the CAM is >= F x its peak (default: 0.5)")
    p.add_argument("--min-region-area", type=int, default=None, metavar="PX",
                   help="smallest region in pixels (default: 0.2%% of the image)")
    p.add_argument("--all-regions", action="store_true",
                   help="regions for every positive label, not only the flagged ones")
    p.add_argument("--frames", choices=["first", "all"], default="first",
                   help="multi-frame instances: score the first frame only, or every frame (default: first)")
    p.add_argument("--dicom", action="store_true",
                   help="also write DIR/dicom/: per scored DICOM image a TID 1500 SR (scores, flags, applicability, "
                        "regions) and a Secondary Capture of the overlay, in the source study")
    p.add_argument("--anonymize", action="store_true",
                   help="with --dicom: de-identified SR/SC (PS3.15 E.1 Basic Profile, as `medviewer anonymize`): "
                        "patient pseudonym, keyed UIDs, references to the anonymized copy of each source")
    p.add_argument("--pseudonym-key", metavar="FILE", default=None,
                   help="with --anonymize: key file, so the UIDs and pseudonym match `medviewer anonymize "
                        "--pseudonym-key FILE` of the sources")
    p.add_argument("--send", metavar="NODE", default=None,
                   help="with --dicom: store the SR/SC written on a PACS (http(s)://host:port/path, "
                        "dicom://AET@host:port or a saved name; see 'medviewer pacs')")
    p.add_argument("--aet", default="MEDVIEWER", help="with --send over DIMSE: our AE title (default MEDVIEWER)")
    p.add_argument("--ignore-intended-use", action="store_true",
                   help="flag findings on images outside the model's intended use too (recorded in the results)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)
    return p


#: a file found in a folder with one of these suffixes is meant to be an image: unreadable = an error
IMAGE_SUFFIXES = {".dcm", ".dicom", ".dic", ".ima", ".png", ".jpg", ".jpeg"}


def _gather(inputs: list[str], all_frames: bool) -> tuple[list, list[dict]]:
    """Scan the inputs: frames to score (study/series/display order) then the files that failed, and the
    files ignored.

    A file found while walking a folder whose content is not DICOM/PNG/JPEG and whose suffix is not an
    image suffix (``LICENSE``, ``notes.txt``) is ignored, not failed; a file named on the command line,
    or one with an image suffix (``broken.dcm``), that cannot be read is a failure.
    """
    from medviewer.inference.batch import expand_frames
    from medviewer.io import sniff_kind
    from medviewer.io.instance import FileKind
    from medviewer.io.scan import scan

    res = scan(inputs)
    items = expand_frames(res.instances, all_frames)
    named = {os.path.realpath(i) for i in inputs}  # realpath: no RuntimeError on a symbolic link loop
    ignored: list[dict] = []
    for sk in res.skipped:
        path = Path(sk.path)
        try:
            regular = path.is_file()  # False for FIFOs/devices: never opened (sniff_kind cannot block either)
        except OSError:  # e.g. file name too long
            regular = False
        if (regular and os.path.realpath(path) not in named and path.suffix.lower() not in IMAGE_SUFFIXES
                and sniff_kind(path) == FileKind.UNKNOWN):
            ignored.append({"path": str(path), "reason": sk.reason})
        else:
            items.append(sk)
    return items, ignored


def _overlay_names(items) -> list[str]:
    used: set[str] = set()
    names = []
    for it in items:
        stem = Path(it.path).stem or "image"
        frames = getattr(getattr(it, "instance", None), "number_of_frames", 1) or 1
        if frames > 1 and getattr(it, "frame", None) is not None:
            stem = f"{stem}_f{it.frame:04d}"
        name, k = f"{stem}.png", 1
        while name in used:
            k += 1
            name = f"{stem}_{k}.png"
        used.add(name)
        names.append(name)
    return names


def _result_entry(o, model: str | None = None) -> dict:
    pred = o.prediction
    entry = {
        "model": model,
        "path": str(o.path),
        "sop_instance_uid": o.sop_instance_uid,
        "frame": o.frame,
        "scores": {} if pred is None else {k: round(v, 6) for k, v in pred.scores.items()},
        "flagged": [] if pred is None else list(pred.flagged),
        "regions": [] if pred is None else [r.to_dict() for r in pred.regions],
        "applicability": None if pred is None or pred.applicability is None else pred.applicability.to_dict(),
        "energy": None if pred is None or pred.energy is None else round(pred.energy, 4),
        "seconds": round(o.seconds, 4),
        "error": o.error,
    }
    entry.update(o.extra)
    return entry


def write_results(out_dir: Path, package, session, outcomes, *, options: dict, wall_s: float,
                  ignored: list[dict] | None = None) -> tuple[Path, Path]:
    """Write ``results.json`` and ``results.csv`` into ``out_dir``; returns their paths."""
    from medviewer import __version__

    labels = list(package.card.labels)
    failed = sum(1 for o in outcomes if not o.ok)
    out_of_scope = sum(1 for o in outcomes if _out_of_scope(o))
    card = package.card
    doc = {
        "model": {"name": package.card.name, "version": package.card.version, "sha256": package.card.sha256,
                  "path": str(package.path)},
        "provider": session.provider,
        "provider_requested": session.requested.value,
        "fallback_warning": session.fallback_warning,
        "labels": labels,
        "operating_points": {op.label: op.threshold for op in package.card.operating_points},
        "intended_use": {
            "applicability": None if card.applicability is None else card.applicability.model_dump(mode="json"),
            "ood_threshold": None if card.ood is None else card.ood.threshold,
            "ignore_intended_use": bool(options.get("ignore_intended_use", False)),
        },
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "producer": f"medviewer {__version__}",
        "options": options,
        "summary": {"images": len(outcomes), "scored": len(outcomes) - failed, "failed": failed,
                    "ignored": len(ignored or []), "out_of_scope": out_of_scope,
                    "seconds": round(wall_s, 3),
                    "images_per_second": round((len(outcomes) - failed) / wall_s, 3) if wall_s > 0 else None},
        "results": [_result_entry(o, card.name) for o in outcomes],
        "ignored": ignored or [],
    }
    json_path, csv_path = out_dir / "results.json", out_dir / "results.csv"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, json_path)
    frame_col = options.get("frames") == "all"  # a frame column only when frames are scored separately
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", *(["frame"] if frame_col else []), *labels, "flagged", "applicability", "ood_score",
                    "error"])
        for o in outcomes:
            pred = o.prediction
            scores = pred.scores if pred is not None else {}
            app = None if pred is None else pred.applicability
            ood = "" if pred is None or pred.ood_score is None else f"{pred.ood_score:.4f}"
            w.writerow([display_path(o.path), *([o.frame if o.frame is not None else ""] if frame_col else []),
                        *(f"{scores[lab]:.6f}" if lab in scores else "" for lab in labels),
                        ";".join(pred.flagged if pred is not None else []), "" if app is None else app.status.value,
                        ood,
                        o.error or ""])
    return json_path, csv_path


def _on_done_factory(args: argparse.Namespace, out_dir: Path, items: list, package, deid_key,
                     subdir: str | None = None, skip_out_of_scope: bool = False):
    """The ``on_done`` callback of :func:`medviewer.inference.score_instances` that writes overlays (``--overlays``)
    and DICOM SR/SC (``--dicom``) of ``package``'s results, under ``overlays/<subdir>/`` and ``dicom/<subdir>/``
    when ``subdir`` is given; None when neither is asked for. ``skip_out_of_scope``: nothing is written for an
    image outside the model's intended use (``--models``: that model does not report on it)."""
    if not (args.overlays or args.dicom):
        return None
    import threading

    from medviewer.export.overlay import render_overlay, save_image

    names = _overlay_names(items)
    overlay_dir = Path("overlays") / subdir if subdir else Path("overlays")
    if args.overlays:
        (out_dir / overlay_dir).mkdir(parents=True, exist_ok=True)
    negative = package.card.negative_label
    writer = None
    lock = threading.Lock()
    if args.dicom:
        from medviewer.export.dicom_ai import DicomResultWriter

        writer = DicomResultWriter(out_dir / "dicom" / (subdir or ""), package.card,
                                   deidentify=bool(args.anonymize) or None, key=deid_key)

    def on_done(outcome, display_u8, pred):
        extra: dict = {}
        if skip_out_of_scope and pred.applicability is not None and pred.applicability.out_of_scope:
            return extra
        rgb = render_overlay(display_u8, pred, alpha=args.alpha, colormap=args.colormap, negative_label=negative)
        if args.overlays:
            rel = overlay_dir / names[outcome.index]
            save_image(out_dir / rel, rgb)
            extra["overlay"] = str(rel)
        if writer is not None:
            item = items[outcome.index]
            inst = getattr(item, "instance", item)
            ds = getattr(inst, "dataset", None)
            if ds is None:
                extra["dicom"] = None  # PNG/JPEG: no study to put a DICOM result in
            else:
                with lock:  # the writer numbers instances per study
                    app = None if pred.applicability is None else pred.applicability.to_dict()
                    paths = writer.write(ds, pred, rgb, applicability=app,
                                         frame=getattr(item, "frame", None))
                extra["dicom"] = [str(q.relative_to(out_dir)) for q in paths]
        return extra

    return on_done


def run(args: argparse.Namespace) -> int:
    """Run ``medviewer infer``; returns 0 (all scored) or 2 (some failed). Raises MedViewerError (exit 1)."""
    from tqdm import tqdm

    from medviewer.inference.registry import resolve_model
    from medviewer.io import quiet_pydicom_warnings
    from medviewer.workstation.ai import AiController

    if args.batch < 1:
        raise MedViewerError(f"--batch must be at least 1, got {args.batch}")
    if not 0.0 < args.region_threshold <= 1.0:
        raise MedViewerError(f"--region-threshold must be in (0, 1], got {args.region_threshold}")
    if not 0.0 <= args.alpha <= 1.0:
        raise MedViewerError(f"--alpha must be in [0, 1], got {args.alpha}")
    deid_key, node = _check_dicom_options(args)
    # the workstation's controller: the same session cache and intended-use policy as the GUI
    ai = AiController(provider=args.provider, ignore_intended_use=args.ignore_intended_use)
    if args.models and args.model:
        raise MedViewerError("give --model (one model) or --models (several), not both")
    packages = _resolve_many(args.models) if args.models else None
    package = ai.select(packages[0] if packages else resolve_model(args.model))
    out_dir: Path = args.out
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".medviewer-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise MedViewerError(f"{out_dir}: cannot write the output folder ({exc.strerror or exc})") from None
    session = ai.session()
    if session.fallback_warning:
        print(f"medviewer: warning: {session.fallback_warning}", file=sys.stderr)
    quiet_pydicom_warnings()
    items, ignored = _gather(args.inputs, args.frames == "all")
    if not items:
        raise MedViewerError(f"no DICOM, PNG or JPEG images found in {' '.join(args.inputs)}"
                             + (f" ({len(ignored)} other files ignored)" if ignored else ""))

    if packages is not None:
        return _run_many(args, ai, packages, out_dir, items, ignored, deid_key, node)
    on_done = _on_done_factory(args, out_dir, items, package, deid_key)
    bar = tqdm(total=len(items), unit="img", desc=f"{package.card.name} [{session.provider_short}]",
               disable=True if args.quiet else None, file=sys.stderr)
    t0 = time.perf_counter()
    try:
        outcomes = ai.score(
            items, batch_size=args.batch, workers=args.workers,
            regions="all" if args.all_regions else "flagged", fraction=args.region_threshold,
            min_area_px=args.min_region_area, on_done=on_done, progress=lambda o: bar.update(1))
    finally:
        bar.close()
    wall = time.perf_counter() - t0
    options = {"inputs": list(args.inputs), "batch": args.batch, "overlays": bool(args.overlays),
               "region_threshold": args.region_threshold, "min_region_area": args.min_region_area,
               "all_regions": bool(args.all_regions), "colormap": args.colormap, "alpha": args.alpha,
               "frames": args.frames, "ignore_intended_use": bool(args.ignore_intended_use),
               "dicom": bool(args.dicom), "anonymize": bool(args.anonymize), "send": node is not None}
    json_path, _ = write_results(out_dir, package, session, outcomes, options=options, wall_s=wall, ignored=ignored)
    failed = [o for o in outcomes if not o.ok]
    for o in failed[:10]:
        print(f"medviewer: failed: {o.error if str(o.path) in o.error else f'{o.path}: {o.error}'}", file=sys.stderr)
    if len(failed) > 10:
        print(f"medviewer: ... and {len(failed) - 10} more failures (see {json_path})", file=sys.stderr)
    n_ok = len(outcomes) - len(failed)
    flagged = sum(1 for o in outcomes if o.prediction is not None and o.prediction.flagged)
    scope = [o for o in outcomes if _out_of_scope(o)]
    for o in scope[:10]:
        reasons = "; ".join(o.prediction.applicability.reasons)
        verb = "shown anyway" if args.ignore_intended_use else "no findings reported"
        print(f"medviewer: outside intended use ({verb}): {o.path}: {reasons}", file=sys.stderr)
    not_written = [o for o in outcomes if o.extra.get("export_error")]
    for o in not_written[:10]:  # scored, but its overlay / SR / SC could not be written
        print(f"medviewer: results not written for {o.path} (scored; see results.json): {o.extra['export_error']}",
              file=sys.stderr)
    skipped = f", {len(ignored)} non-image files ignored" if ignored else ""
    oos = f", {len(scope)} outside intended use" if scope else ""
    print(f"{n_ok}/{len(outcomes)} images scored ({flagged} with findings flagged{oos}, {len(failed)} failed{skipped}) by "
          f"{package.card.name} {package.card.version} on {session.provider} in {wall:.1f} s "
          f"({n_ok / wall if wall > 0 else 0:.1f} images/s) -> {json_path}")
    from medviewer.audit import record_ai_run  # audit trail: model, objects by UID only, outcome

    record_ai_run({"name": package.card.name, "version": package.card.version, "sha256": package.card.sha256},
                  [o.sop_instance_uid for o in outcomes if o.sop_instance_uid],
                  study_uids=[getattr(getattr(it, "instance", None), "study_instance_uid", "") for it in items],
                  scored=n_ok, failed=len(failed), provider=session.provider)
    if node is not None:
        written = [out_dir / p for o in outcomes for p in (o.extra.get("dicom") or [])]
        if not written:
            print("medviewer: error: --send: no DICOM results to send (no DICOM image was scored)", file=sys.stderr)
            return 1
        if _send_results(node, written, args.aet, deidentified=bool(args.anonymize)):
            return 1
    return EXIT_SOME_FAILED if failed else EXIT_OK


def _resolve_many(spec: str) -> list:
    """``--models``: ``auto`` -> every valid installed package (:func:`medviewer.inference.find_models`), else
    the comma-separated names/paths, each resolved as ``--model`` is. Raises MedViewerError (none found)."""
    from medviewer.inference.registry import find_models, resolve_model

    if spec.strip().lower() == "auto":
        pkgs = find_models()
        if not pkgs:
            raise MedViewerError("--models auto: no model is installed (see 'medviewer models list')")
        return pkgs
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise MedViewerError("--models needs 'auto' or a comma-separated list of model names or paths")
    pkgs, seen = [], set()
    for n in names:
        pkg = resolve_model(n)
        if pkg.card.name not in seen:
            seen.add(pkg.card.name)
            pkgs.append(pkg)
    return pkgs


def _out_of_scope(o) -> bool:
    """True when outcome ``o`` was scored and the intended-use policy found its image out of scope."""
    app = None if o.prediction is None else o.prediction.applicability
    return app is not None and app.out_of_scope


def _model_info(package, session) -> dict:
    card = package.card
    return {"name": card.name, "version": card.version, "sha256": card.sha256, "path": str(package.path),
            "task": card.task.value, "labels": list(card.labels), "provider": session.provider,
            "operating_points": {op.label: op.threshold for op in card.operating_points},
            "intended_use": {"applicability": None if card.applicability is None
                             else card.applicability.model_dump(mode="json"),
                             "ood_threshold": None if card.ood is None else card.ood.threshold}}


def _combine(runs: list, n_items: int, ignore_intended_use: bool) -> tuple[list[dict], list[dict], int, int]:
    """One entry per (image, model) whose intended use the image meets (all, with ``--ignore-intended-use``);
    an image no model applies to gets every model's entry (each with its reasons); an image that failed
    for every model gets one entry (``"model": null``). Returns the entries, the (image, model) pairs left
    out (``{"path", "frame", "model", "reasons"}``), images failed, images no model applies to."""
    entries: list[dict] = []
    left_out: list[dict] = []
    failed = none_applies = 0
    for i in range(n_items):
        per = [(pkg, outcomes[i]) for pkg, _session, outcomes in runs]
        ok = [(pkg, o) for pkg, o in per if o.ok]
        if not ok:
            failed += 1
            entries.append(_result_entry(per[0][1], None))
            continue
        chosen = ok if ignore_intended_use else [(pkg, o) for pkg, o in ok if not _out_of_scope(o)]
        if not chosen:
            none_applies += 1
            chosen = ok
        entries += [_result_entry(o, pkg.card.name) for pkg, o in chosen]
        entries += [_result_entry(o, pkg.card.name) for pkg, o in per if not o.ok]
        left_out += [{"path": str(o.path), "frame": o.frame, "model": pkg.card.name,
                      "reasons": [] if o.prediction.applicability is None else list(o.prediction.applicability.reasons)}
                     for pkg, o in ok if all(o is not c for _p, c in chosen)]
    return entries, left_out, failed, none_applies


def _run_many(args: argparse.Namespace, ai, packages: list, out_dir: Path, items: list, ignored: list[dict],
              deid_key, node) -> int:
    """``--models``: score ``items`` with every package, keep each image's in-scope (image, model) pairs."""
    from tqdm import tqdm

    from medviewer import __version__
    from medviewer.audit import record_ai_run
    from medviewer.inference.applicability import Status

    runs = []
    t0 = time.perf_counter()
    for pkg in packages:
        ai.select(pkg)
        session = ai.session()
        if session.fallback_warning:
            print(f"medviewer: warning: {session.fallback_warning}", file=sys.stderr)
        on_done = _on_done_factory(args, out_dir, items, pkg, deid_key, subdir=pkg.card.name,
                                   skip_out_of_scope=not args.ignore_intended_use)
        bar = tqdm(total=len(items), unit="img", desc=f"{pkg.card.name} [{session.provider_short}]",
                   disable=True if args.quiet else None, file=sys.stderr)
        try:
            outcomes = ai.score(
                items, batch_size=args.batch, workers=args.workers,
                regions="all" if args.all_regions else "flagged", fraction=args.region_threshold,
                min_area_px=args.min_region_area, on_done=on_done, progress=lambda o, b=bar: b.update(1))
        finally:
            bar.close()
        runs.append((pkg, session, outcomes))
        record_ai_run({"name": pkg.card.name, "version": pkg.card.version, "sha256": pkg.card.sha256},
                      [o.sop_instance_uid for o in outcomes if o.sop_instance_uid],
                      study_uids=[getattr(getattr(it, "instance", None), "study_instance_uid", "") for it in items],
                      scored=sum(o.ok for o in outcomes), failed=sum(not o.ok for o in outcomes),
                      provider=session.provider)
    wall = time.perf_counter() - t0
    entries, left_out, failed, none_applies = _combine(runs, len(items), bool(args.ignore_intended_use))
    by_model = {pkg.card.name: sum(1 for e in entries if e["model"] == pkg.card.name and e["error"] is None
                                   and (e["applicability"] or {}).get("status") != Status.OUT_OF_SCOPE)
                for pkg, _s, _o in runs}
    options = {"inputs": list(args.inputs), "models": args.models, "batch": args.batch,
               "overlays": bool(args.overlays), "region_threshold": args.region_threshold,
               "min_region_area": args.min_region_area, "all_regions": bool(args.all_regions),
               "colormap": args.colormap, "alpha": args.alpha, "frames": args.frames,
               "ignore_intended_use": bool(args.ignore_intended_use), "dicom": bool(args.dicom),
               "anonymize": bool(args.anonymize), "send": node is not None}
    doc = {
        "models": [_model_info(pkg, session) for pkg, session, _o in runs],
        "provider": runs[0][1].provider,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "producer": f"medviewer {__version__}",
        "options": options,
        "summary": {"images": len(items), "scored": len(items) - failed, "failed": failed,
                    "ignored": len(ignored), "entries": len(entries), "no_model_applies": none_applies,
                    "in_scope_by_model": by_model, "seconds": round(wall, 3)},
        "results": entries,
        "outside_intended_use": left_out,
        "ignored": ignored,
    }
    json_path = out_dir / "results.json"
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, json_path)
    labels = list(dict.fromkeys(lab for pkg, _s, _o in runs for lab in pkg.card.labels))
    frame_col = args.frames == "all"
    with open(out_dir / "results.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", *(["frame"] if frame_col else []), "model", *labels, "flagged", "applicability",
                    "ood_score", "error"])
        for e in entries:
            app = e["applicability"] or {}  # the serialised form (results.json)
            ood = app.get("ood_score")
            ood = ood if ood is None or isinstance(ood, str) else f"{ood:.4f}"
            w.writerow([display_path(e["path"]), *([e["frame"] if e["frame"] is not None else ""] if frame_col else []),
                        e["model"] or "", *(f"{e['scores'][lab]:.6f}" if lab in e["scores"] else "" for lab in labels),
                        ";".join(e["flagged"]), app.get("status", ""), "" if ood is None else ood,
                        e["error"] or ""])
    for e in [e for e in entries if e["error"]][:10]:
        where = "" if e["path"] in e["error"] else f"{e['path']}: "
        print(f"medviewer: failed: {where}{e['error']}", file=sys.stderr)
    per = ", ".join(f"{name} {n}" for name, n in by_model.items())
    nothing = f", {none_applies} outside every model's intended use" if none_applies else ""
    print(f"{len(items) - failed}/{len(items)} images scored by {len(runs)} models (in scope: {per}{nothing}; "
          f"{failed} failed) in {wall:.1f} s -> {json_path}")
    if node is not None:
        written = [out_dir / p for e in entries for p in (e.get("dicom") or [])]
        if not written:
            print("medviewer: error: --send: no DICOM results to send (no DICOM image was scored)", file=sys.stderr)
            return 1
        if _send_results(node, written, args.aet, deidentified=bool(args.anonymize)):
            return 1
    return EXIT_SOME_FAILED if failed or any(e["error"] for e in entries) else EXIT_OK


def _check_dicom_options(args: argparse.Namespace):
    """Validate --anonymize/--pseudonym-key/--send before any scoring: ``(key bytes or None, Node or None)``.

    Raises MedViewerError (one line) for an option without --dicom, a bad key file or an unknown node.
    """
    for flag, value in (("--anonymize", args.anonymize), ("--send", args.send),
                        ("--pseudonym-key", args.pseudonym_key)):
        if value and not args.dicom:
            raise MedViewerError(f"{flag} needs --dicom")
    if args.pseudonym_key and not args.anonymize:
        raise MedViewerError("--pseudonym-key needs --anonymize")
    key = None
    if args.pseudonym_key:
        from medviewer.deid import load_key

        key = load_key(args.pseudonym_key)
    node = None
    if args.send:
        from medviewer.pacs import resolve_node

        node = resolve_node(args.send)
    return key, node


def _send_results(node, paths: list[Path], aet: str, deidentified: bool) -> bool:
    """Store ``paths`` on ``node`` (C-STORE or STOW-RS, as ``medviewer pacs send``, audited as "sent").
    Prints one line per object that failed; True when any failed or the node could not be reached."""
    import logging

    from medviewer.cli.pacs import _send
    from medviewer.pacs import connect

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    try:
        with connect(node, aet=aet) as client:
            return _send(client, [str(p) for p in paths], written_deidentified=deidentified) != 0
    except MedViewerError as exc:
        print(f"medviewer: error: {' '.join(str(exc).split())} (the results are in {paths[0].parent})",
              file=sys.stderr)
        return True
