"""Scoring many images: batched ONNX Runtime calls with decoding and postprocessing overlapped.

The calling thread feeds the network in batches while a thread pool (``concurrent.futures``) decodes
and renders the next images (:func:`medviewer.imaging.display_image`, then preprocessing) and
postprocesses the previous batch (CAMs onto the original grid, regions, optional overlay writing).
OpenCV, pydicom's decoders and onnxruntime release the GIL, so the stages really run side by side.
A file that cannot be read or scored becomes an :class:`Outcome` with ``error`` set; the run goes on.

Example
-------
>>> from medviewer.io.scan import scan  # doctest: +SKIP
>>> res = scan(["study/"])  # doctest: +SKIP
>>> outcomes = score_instances(open_session(default_model()), res.instances, batch_size=8)  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medviewer.errors import error_line
from medviewer.inference.regions import DEFAULT_FRACTION
from medviewer.inference.session import Prediction, Prepared, Session
from medviewer.io.scan import Skipped

__all__ = ["FrameRef", "Outcome", "score_instances", "expand_frames"]


@dataclass(frozen=True)
class FrameRef:
    """One frame of a (multi-frame) instance, to be scored on its own."""

    instance: Any
    frame: int = 0

    @property
    def path(self) -> Path:
        return self.instance.path

    @property
    def sop_instance_uid(self) -> str:
        return self.instance.sop_instance_uid

    @property
    def pixel_spacing(self) -> tuple[float, float] | None:
        return self.instance.pixel_spacing


def expand_frames(items: Sequence[Any], all_frames: bool) -> list[Any]:
    """Instances -> :class:`FrameRef` s: every frame of multi-frame instances if ``all_frames``, else frame 0.

    :class:`medviewer.io.Skipped` entries (inputs known to be bad before decoding) are kept as they are.
    """
    out: list[Any] = []
    for it in items:
        if isinstance(it, Skipped | FrameRef):
            out.append(it)
            continue
        n = max(1, int(getattr(it, "number_of_frames", 1) or 1)) if all_frames else 1
        out += [FrameRef(it, f) for f in range(n)]
    return out


@dataclass
class Outcome:
    """The result for one input, in input order.

    ``prediction`` is None when ``error`` is set. Its ``cams`` are dropped (empty ``(K, 0, 0)``) unless
    ``keep_cams=True`` was passed, so a long run does not hold every CAM in memory. ``extra`` holds what
    the ``on_done`` callback returned (e.g. the overlay's path).
    """

    index: int
    path: Path
    sop_instance_uid: str | None
    frame: int | None = None
    prediction: Prediction | None = None
    error: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def _display(item) -> np.ndarray:
    from medviewer.imaging import check_not_blank, display_image

    if isinstance(item, FrameRef):  # a blank (constant) display image is refused, never scored
        return check_not_blank(display_image(item.instance, frame=item.frame), item.path, item.frame)
    return check_not_blank(display_image(item), item.path)


def score_instances(
    session: Session,
    instances: Sequence[Any],
    *,
    batch_size: int = 8,
    workers: int | None = None,
    regions: str | Sequence[str] = "flagged",
    fraction: float = DEFAULT_FRACTION,
    min_area_px: int | None = None,
    keep_cams: bool = False,
    render: Callable[[Any], np.ndarray] = _display,
    policy: Callable[[Any, np.ndarray, Prediction], Any] | None = None,
    on_done: Callable[[Outcome, np.ndarray, Prediction], dict | None] | None = None,
    progress: Callable[[Outcome], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> list[Outcome]:
    """Score ``instances`` (from :func:`medviewer.io.scan`; :class:`medviewer.io.Skipped` entries pass through as errors).

    Parameters
    ----------
    session
        An open :class:`Session`.
    instances
        :class:`medviewer.io.Instance` or :class:`FrameRef` objects (anything with ``path``,
        ``sop_instance_uid`` and ``pixel_spacing`` that ``render`` accepts) or :class:`medviewer.io.Skipped`.
    batch_size
        Images per ONNX Runtime call.
    workers
        Decode/postprocess threads; default ``min(4, os.cpu_count())``.
    regions, fraction, min_area_px
        See :meth:`Session.finish`.
    policy
        Called in a worker thread as ``policy(item, display_u8, prediction)`` before ``on_done``: the
        intended-use policy (:class:`medviewer.workstation.intended_use.IntendedUsePolicy`), which records
        the applicability and withholds findings from out-of-scope images.
    keep_cams
        Keep each prediction's CAMs (memory: ``K * H * W * 4`` bytes per image).
    render
        Item -> uint8 display image; default :func:`medviewer.imaging.display_image` (of the
        :class:`FrameRef`'s frame; frame 0 of an instance).
    on_done
        Called in a worker thread as ``on_done(outcome, display_u8, prediction)`` for each success, before
        the CAMs are dropped; a returned dict is stored in ``outcome.extra`` (an exception becomes the
        outcome's error).
    progress
        Called in the calling thread with each finished :class:`Outcome`, in input order.
    cancel
        Polled between batches; returning True stops the run (finished outcomes are returned).

    Returns
    -------
    list[Outcome]
        One per input, in input order (fewer only when cancelled).
    """
    batch_size = max(1, int(batch_size))
    workers = workers or min(4, os.cpu_count() or 1)
    results: dict[int, Outcome] = {}
    next_out = 0

    def emit_ready() -> None:
        nonlocal next_out
        while next_out in results:
            if progress is not None:
                progress(results[next_out])
            next_out += 1

    def load(inst) -> tuple[np.ndarray, Prepared, float]:
        t0 = time.perf_counter()
        img = render(inst)
        prepared = session.prepare(img, getattr(inst, "pixel_spacing", None))
        return img, prepared, time.perf_counter() - t0 - prepared.seconds

    def finish(out: Outcome, item: Any, img: np.ndarray, prepared: Prepared, logits: np.ndarray, cam: np.ndarray,
               feats: np.ndarray | None, share: float, decode_s: float) -> Outcome:
        try:
            pred = session.finish(prepared, logits, cam, net_seconds=share, regions=regions, fraction=fraction,
                                  min_area_px=min_area_px, features=feats)
            if policy is not None:
                policy(item, img, pred)
            out.seconds = decode_s + pred.seconds
            if on_done is not None:
                extra = on_done(out, img, pred)
                if extra:
                    out.extra.update(extra)
            if not keep_cams:
                pred.cams = np.zeros((pred.cams.shape[0], 0, 0), np.float32)
            out.prediction = pred
        except Exception as exc:  # one bad image must not stop the run
            out.error = error_line(exc)
        return out

    sources = iter(enumerate(instances))
    pending: deque[tuple[int, Any, Future | None]] = deque()
    post: deque[Future] = deque()
    prefetch = batch_size * 2 + workers

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medviewer-infer") as pool:
        def refill() -> None:
            while len(pending) < prefetch:
                try:
                    i, inst = next(sources)
                except StopIteration:
                    return
                pending.append((i, inst, None if isinstance(inst, Skipped) else pool.submit(load, inst)))

        def collect(block: bool) -> None:
            while post and (block or post[0].done()):
                out = post.popleft().result()
                results[out.index] = out
            emit_ready()

        refill()
        batch: list[tuple[Outcome, Any, np.ndarray, Prepared, float]] = []
        cancelled = False
        while pending:
            i, inst, fut = pending.popleft()
            refill()
            uid = getattr(inst, "sop_instance_uid", None) or None
            out = Outcome(i, Path(inst.path), uid, getattr(inst, "frame", None))
            if fut is None:
                out.error = inst.reason
                results[i] = out
            else:
                try:
                    img, prepared, decode_s = fut.result()
                    batch.append((out, inst, img, prepared, decode_s))
                except Exception as exc:
                    out.error = error_line(exc)
                    results[i] = out
            if batch and (len(batch) >= batch_size or not pending):
                t0 = time.perf_counter()
                try:
                    logits, cams, feats = session.run_all(np.stack([b[3].x for b in batch]))
                except Exception as exc:
                    for b in batch:
                        b[0].error = error_line(exc)
                        results[b[0].index] = b[0]
                else:
                    share = (time.perf_counter() - t0) / len(batch)
                    for k, (o, item, img, prepared, decode_s) in enumerate(batch):
                        post.append(pool.submit(finish, o, item, img, prepared, logits[k], cams[k],
                                                None if feats is None else feats[k], share, decode_s))
                batch = []
                if cancel is not None and cancel():
                    cancelled = True
            collect(block=False)
            if cancelled:
                for _, _, f in pending:
                    if f is not None:
                        f.cancel()
                break
        collect(block=True)
    return [results[k] for k in sorted(results)]
