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
from medviewer.limits import get_limits

__all__ = ["FrameRef", "Outcome", "score_instances", "expand_frames", "INFLIGHT_FRAMES"]

#: images in flight (decoding, waiting for the network, postprocessing) are kept under this many
#: maximum-size frames' samples: measured, ``medviewer infer`` on four float 8192 x 8192 images peaked at
#: 3.5 GB with all four in flight and full-size CAM stacks; one at a time with one map per label, at 0.9 GB
INFLIGHT_FRAMES = 1


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


def _declared_samples(item: Any) -> int:
    """Rows x Columns x Samples per Pixel that ``item`` (an instance or :class:`FrameRef`) declares; 0 unknown."""
    inst = getattr(item, "instance", item)
    try:
        return max(0, int(inst.rows) * int(inst.columns) * max(1, int(getattr(inst, "samples_per_pixel", 1) or 1)))
    except (AttributeError, TypeError, ValueError):
        return 0


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
    max_inflight_samples: int | None = None,
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
        Called in a worker thread as ``on_done(outcome, display_u8, prediction)`` for each success (an
        exception it raises is recorded as ``outcome.extra["export_error"]``; the image stays scored), before
        the CAMs are dropped; a returned dict is stored in ``outcome.extra``.
    progress
        Called in the calling thread with each finished :class:`Outcome`, in input order.
    cancel
        Polled between batches; returning True stops the run (finished outcomes are returned).
    max_inflight_samples
        Memory bound: the declared samples (Rows x Columns x Samples per Pixel) of the images being
        decoded, waiting for the network or postprocessed at one time; default :data:`INFLIGHT_FRAMES`
        times ``max_frame_pixels`` (:mod:`medviewer.limits`, ``MEDVIEWER_MAX_FRAME_PIXELS``). Small images
        flow as before; 8192 x 8192 ones go one after the other instead of ``workers`` at once. An image
        is always admitted when nothing else is in flight.

    Returns
    -------
    list[Outcome]
        One per input, in input order (fewer only when cancelled).
    """
    return _BatchRun(session, instances, batch_size=batch_size, workers=workers, regions=regions,
                     fraction=fraction, min_area_px=min_area_px, keep_cams=keep_cams, render=render,
                     policy=policy, on_done=on_done, progress=progress, cancel=cancel,
                     max_inflight_samples=max_inflight_samples).run()


#: one decoded image waiting for the network: (outcome, item, display uint8, prepared input, decode seconds)
_Batched = tuple[Outcome, Any, np.ndarray, Prepared, float]


class _BatchRun:
    """One run of :func:`score_instances` (see there for the parameters).

    Stages: :meth:`_load` (worker thread: decode, render, preprocess) -> :meth:`_run_network` (calling
    thread: one ONNX Runtime call per batch) -> :meth:`_finish` (worker thread: CAMs, regions, policy,
    ``on_done``). Bookkeeping in the calling thread: :meth:`_refill` admits inputs under the memory budget,
    :meth:`_settle` records a final outcome and :meth:`_emit_ready` reports outcomes in input order.
    """

    def __init__(self, session: Session, instances: Sequence[Any], *, batch_size: int, workers: int | None,
                 regions: str | Sequence[str], fraction: float, min_area_px: int | None, keep_cams: bool,
                 render: Callable[[Any], np.ndarray], policy: Callable[[Any, np.ndarray, Prediction], Any] | None,
                 on_done: Callable[[Outcome, np.ndarray, Prediction], dict | None] | None,
                 progress: Callable[[Outcome], None] | None, cancel: Callable[[], bool] | None,
                 max_inflight_samples: int | None) -> None:
        self.session = session
        self.batch_size = max(1, int(batch_size))
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.regions = regions
        self.fraction = fraction
        self.min_area_px = min_area_px
        self.keep_cams = keep_cams
        self.render = render
        self.policy = policy
        self.on_done = on_done
        self.progress = progress
        self.cancel = cancel
        self.budget = max(1, int(max_inflight_samples if max_inflight_samples is not None
                                 else INFLIGHT_FRAMES * get_limits().max_frame_pixels))
        self.results: dict[int, Outcome] = {}
        self.next_out = 0
        self.inflight: dict[int, int] = {}  # index -> declared samples, from admission until its outcome is final
        self.sources = iter(enumerate(instances))
        self.upcoming: list[tuple[int, Any]] = []  # the next source, peeked at while the budget is full
        self.pending: deque[tuple[int, Any, Future | None]] = deque()
        self.post: deque[Future] = deque()
        self.prefetch = self.batch_size * 2 + self.workers
        self.pool: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ worker-thread stages
    def _load(self, inst: Any) -> tuple[np.ndarray, Prepared, float]:
        t0 = time.perf_counter()
        img = self.render(inst)
        prepared = self.session.prepare(img, getattr(inst, "pixel_spacing", None))
        return img, prepared, time.perf_counter() - t0 - prepared.seconds

    def _finish(self, out: Outcome, item: Any, img: np.ndarray, prepared: Prepared, logits: np.ndarray,
                cam: np.ndarray, feats: np.ndarray | None, share: float, decode_s: float) -> Outcome:
        try:
            pred = self.session.finish(prepared, logits, cam, net_seconds=share, regions=self.regions,
                                       fraction=self.fraction, min_area_px=self.min_area_px, features=feats,
                                       keep_cams=self.keep_cams or self.on_done is not None)
            if self.policy is not None:
                self.policy(item, img, pred)
            out.seconds = decode_s + pred.seconds
            if self.on_done is not None:
                try:
                    extra = self.on_done(out, img, pred)
                except Exception as exc:  # an export (overlay, SR/SC) that fails never unscores the image
                    extra = {"export_error": error_line(exc)}
                if extra:
                    out.extra.update(extra)
            if not self.keep_cams:
                pred.cams = np.zeros((pred.cams.shape[0], 0, 0), np.float32)
            out.prediction = pred
        except Exception as exc:  # one bad image must not stop the run
            out.error = error_line(exc)
        return out

    # ------------------------------------------------------------------ calling-thread bookkeeping
    def _settle(self, out: Outcome) -> None:
        self.results[out.index] = out
        self.inflight.pop(out.index, None)

    def _emit_ready(self) -> None:
        while self.next_out in self.results:
            if self.progress is not None:
                self.progress(self.results[self.next_out])
            self.next_out += 1

    def _refill(self) -> None:
        """Admit inputs until ``prefetch`` are pending or the in-flight samples would exceed the budget (an
        input is always admitted when nothing is in flight)."""
        assert self.pool is not None
        while len(self.pending) < self.prefetch:
            if not self.upcoming:
                try:
                    self.upcoming.append(next(self.sources))
                except StopIteration:
                    return
            i, inst = self.upcoming[0]
            cost = 0 if isinstance(inst, Skipped) else _declared_samples(inst)
            if self.inflight and sum(self.inflight.values()) + cost > self.budget:
                return  # admitted when earlier images are done
            self.upcoming.pop()
            self.inflight[i] = cost
            self.pending.append((i, inst, None if isinstance(inst, Skipped) else self.pool.submit(self._load, inst)))

    def _collect(self, block: bool) -> None:
        while self.post and (block or self.post[0].done()):
            self._settle(self.post.popleft().result())
        self._emit_ready()

    def _take_next(self, batch: list[_Batched]) -> None:
        """The oldest pending input: its decoded image joins ``batch``, or its error is its outcome."""
        i, inst, fut = self.pending.popleft()
        self._refill()
        uid = getattr(inst, "sop_instance_uid", None) or None
        out = Outcome(i, Path(inst.path), uid, getattr(inst, "frame", None))
        if fut is None:
            out.error = inst.reason
            self._settle(out)
            return
        try:
            img, prepared, decode_s = fut.result()
            batch.append((out, inst, img, prepared, decode_s))
        except Exception as exc:
            out.error = error_line(exc)
            self._settle(out)

    def _run_network(self, batch: list[_Batched]) -> None:
        """One ONNX Runtime call for ``batch``; its postprocessing goes to the pool (a failed call is every
        item's error)."""
        assert self.pool is not None
        t0 = time.perf_counter()
        try:
            logits, cams, feats = self.session.run_all(np.stack([b[3].x for b in batch]))
        except Exception as exc:
            for b in batch:
                b[0].error = error_line(exc)
                self._settle(b[0])
            return
        share = (time.perf_counter() - t0) / len(batch)
        for k, (o, item, img, prepared, decode_s) in enumerate(batch):
            self.post.append(self.pool.submit(self._finish, o, item, img, prepared, logits[k], cams[k],
                                              None if feats is None else feats[k], share, decode_s))

    def run(self) -> list[Outcome]:
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medviewer-infer") as pool:
            self.pool = pool
            self._refill()
            batch: list[_Batched] = []
            cancelled = False
            while self.pending or self.upcoming:
                if not self.pending:  # the budget is held by images being postprocessed: wait for the oldest
                    if self.post:
                        self._settle(self.post.popleft().result())
                        self._emit_ready()
                    self._refill()
                    continue
                self._take_next(batch)
                if batch and (len(batch) >= self.batch_size or not self.pending):
                    self._run_network(batch)
                    batch = []
                    if self.cancel is not None and self.cancel():
                        cancelled = True
                self._collect(block=False)
                self._refill()
                if cancelled:
                    for _, _, f in self.pending:
                        if f is not None:
                            f.cancel()
                    break
            self._collect(block=True)
        return [self.results[k] for k in sorted(self.results)]
