"""The AI controller, Qt-free: model choice, the one session cache, run/cancel, and the intended-use policy.

:class:`AiController` is what both front ends use to run a model:

* the **model choice**: which package is *preferred* (:func:`choose_package`: the one asked for, else the
  saved one, else :data:`~medviewer.inference.DEFAULT_MODEL_NAME`, else the first found);
* **routing over several models**: a run scores the image with the preferred model and with every other
  installed model whose intended use the image's header meets (:meth:`AiController.route`: the card's
  modality gate and header checks, :func:`~medviewer.inference.applicability.check_header`); the pixels are
  then judged by each model's policy. A model the header rules out is not run: its out-of-scope
  :class:`~medviewer.inference.applicability.Assessment` is kept, so a view can say why
  (:meth:`AiController.results`: one :class:`ModelResult` per model, the preferred first);
* the **session cache**: ONNX Runtime sessions come from :func:`medviewer.inference.open_session` -- one per
  (model, SHA-256, provider) for the whole process, shared by the workstation and ``medviewer infer``;
* **run / cancel** of single images on a :class:`concurrent.futures.ThreadPoolExecutor` (one inference at a
  time; a new run cancels the previous one; a cancelled run's result is dropped -- ONNX Runtime cannot stop
  a running ``run()``, it finishes in the background);
* the **intended-use policy** of the model card (:class:`~medviewer.workstation.intended_use.IntendedUsePolicy`)
  applied to every result, and the **run-on-open gate** (:func:`~medviewer.workstation.intended_use.should_auto_run`);
* results go into the :class:`~medviewer.workstation.session.ReadingSession`, keyed by SOP Instance UID,
  frame and model SHA-256.

Events (:class:`AiEvents`, psygnal) are emitted in the thread that produced them -- the worker for
``prediction_ready``, ``failed``, ``cancelled`` after a run, ``models_loaded`` -- so a Qt view relays them
to its GUI thread. The controller never imports Qt or torch.

Example
-------
>>> ai = AiController(ReadingSession(), provider="cpu")  # doctest: +SKIP
>>> ai.load_models().result()  # doctest: +SKIP
>>> job = ai.run(source, 0)  # doctest: +SKIP
>>> entry = job.future.result()  # a PredictionEntry, also in ai.reading.prediction(job.key)  # doctest: +SKIP
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from psygnal import Signal, SignalGroup

from medviewer.errors import MedViewerError, error_line
from medviewer.inference.applicability import (
    Assessment,
    IntendedUsePolicy,
    Status,
    assess,
    header_facts,
    should_auto_run,
)
from medviewer.workstation.session import PredictionEntry, PredictionKey, ReadingSession

__all__ = ["AiController", "AiEvents", "AiJob", "ModelResult", "choose_package", "header_route"]


def choose_package(packages: Sequence[Any], requested: Any = None, saved: str | None = None) -> Any:
    """The model-choice policy: ``requested`` (a package, e.g. from ``--model``) when given, else the package whose
    path or name is ``saved`` (the reader's last choice), else the one named
    :data:`medviewer.inference.DEFAULT_MODEL_NAME`, else the first of ``packages``; None when there is none."""
    if requested is not None:
        return requested
    from medviewer.inference.registry import DEFAULT_MODEL_NAME

    pkgs = list(packages)
    match = [p for p in pkgs if saved and (str(p.path) == saved or p.card.name == saved)]
    default = [p for p in pkgs if p.card.name == DEFAULT_MODEL_NAME]
    return (match or default or pkgs or [None])[0]


def header_route(card: Any, instance: Any) -> Assessment | None:
    """Whether a model that was not asked for by name is run on ``instance``, from the header alone: None to run
    it, else the out-of-scope :class:`~medviewer.inference.applicability.Assessment` that says why not.

    It is not run when the card's modality gate says no (:func:`should_auto_run`: a chest model on a CT slice;
    a schema-1 card on anything but a projection radiograph) or a present tag contradicts the card's intended
    use (:func:`~medviewer.inference.applicability.check_header`: "patient age 64 y; model: 1-5 y"). Missing
    tags never stop it: the pixels are then judged after the run, by the model's policy.
    """
    inst = getattr(instance, "instance", instance)
    ok, reason = should_auto_run(card, inst)
    if not ok:
        return Assessment(Status.OUT_OF_SCOPE, (reason or "modality outside the model's intended use",))
    a = assess(card, header_facts(inst), None)
    return a if a.reasons else None


@dataclass(frozen=True)
class ModelResult:
    """One installed model's say on one image: its result (``entry``), or -- not run because the header ruled
    it out (:func:`header_route`) -- the reason (``assessment`` only).

    Attributes
    ----------
    package
        The :class:`~medviewer.inference.ModelPackage`.
    entry
        Its :class:`~medviewer.workstation.session.PredictionEntry`, or None when it was not run.
    assessment
        The intended-use :class:`~medviewer.inference.applicability.Assessment`: the result's, or the header's.
    preferred
        The reader's selected model.
    """

    package: Any
    entry: PredictionEntry | None
    assessment: Assessment | None
    preferred: bool = False

    @property
    def shown(self) -> bool:
        """True when the model's findings may be shown: it ran and its result is not withheld."""
        return self.entry is not None and not (self.assessment is not None and self.assessment.withheld)


class AiEvents(SignalGroup):
    """Events of an :class:`AiController` (psygnal; see the module doc for the threads they come from)."""

    models_loaded = Signal(list, object, object)  #: packages, the selected package (or None), error line or None
    model_changed = Signal(object)  #: the selected package, or None
    started = Signal(object)  #: an :class:`AiJob` was submitted
    prediction_ready = Signal(object)  #: a :class:`~medviewer.workstation.session.PredictionEntry`
    failed = Signal(object, str)  #: :class:`AiJob`, one-line reason
    cancelled = Signal(object)  #: :class:`AiJob` cancelled by the reader (or replaced by a new run)
    finished = Signal(object)  #: :class:`AiJob`, always, last (also after a cancel)


@dataclass(eq=False)
class AiJob:
    """One run on one frame: the key of its first model's result, the future of that
    :class:`PredictionEntry`, whether it was cancelled; a routed run (several models) has every model's key in
    ``keys`` and, once done, every entry in ``entries`` (a model that failed has none)."""

    key: PredictionKey
    package: Any
    frame_index: int
    future: Future = field(default_factory=Future)
    _cancel: threading.Event = field(default_factory=threading.Event)
    packages: list[Any] = field(default_factory=list)
    keys: list[PredictionKey] = field(default_factory=list)
    entries: list[PredictionEntry] = field(default_factory=list)

    @property
    def cancelled(self) -> bool:
        """True once :meth:`AiController.cancel` (or a newer run) cancelled it."""
        return self._cancel.is_set()

    def done(self) -> bool:
        """True once the worker finished with it (result, error or discarded)."""
        return self.future.done()


class AiController:
    """Model choice, inference on images of a :class:`ReadingSession`, and the model card's policies.

    Parameters
    ----------
    reading
        Where results are kept (a new :class:`ReadingSession` if None).
    provider
        ``"auto"``, ``"cuda"`` or ``"cpu"`` (:class:`medviewer.inference.Provider`).
    ignore_intended_use
        Passed to the :class:`IntendedUsePolicy` (``medviewer infer --ignore-intended-use``).
    """

    def __init__(self, reading: ReadingSession | None = None, provider: str = "auto", *,
                 ignore_intended_use: bool = False) -> None:
        self.reading = reading if reading is not None else ReadingSession()
        self.events = AiEvents()
        self.provider = str(provider)
        self.ignore_intended_use = bool(ignore_intended_use)
        self.packages: list[Any] = []
        self.package: Any = None
        self.models_ready = False
        self._runner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medviewer-ai")
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medviewer-models")
        self._lock = threading.Lock()
        self._job: AiJob | None = None
        self._outstanding: set[Future] = set()
        self._auto_tried: set[PredictionKey] = set()
        self._not_run: dict[PredictionKey, Assessment] = {}  # models the header ruled out, with the reason
        self._models_gen = 0

    # -- models ----------------------------------------------------------------------------------------
    def load_models(self, select: str | None = None, saved: str | None = None) -> Future:
        """Find model packages in a worker (:func:`medviewer.inference.find_models`) and select one with
        :func:`choose_package` (``select``: a name or path asked for, e.g. ``--model``; ``saved``: the reader's last
        choice). Emits ``models_loaded`` and ``model_changed`` from the worker; only the latest call counts.
        A ``select`` that cannot be resolved is reported as the event's error, the others stay usable."""
        with self._lock:
            self._models_gen += 1
            gen = self._models_gen
            self.models_ready = False

        def work() -> tuple[list[Any], Any, str | None]:
            import medviewer.inference as inference

            err = None
            chosen = None
            try:
                pkgs = list(inference.find_models())
            except Exception as exc:  # reported; the viewer goes on without models
                pkgs, err = [], error_line(exc)
            if select:
                try:
                    chosen = inference.resolve_model(select)
                except Exception as exc:
                    err = error_line(exc)
                if chosen is not None and all(str(p.path) != str(chosen.path) for p in pkgs):
                    pkgs.insert(0, chosen)
            pick = choose_package(pkgs, chosen, saved)
            with self._lock:
                if gen != self._models_gen:  # a newer scan (e.g. start-up and --model racing) wins
                    return pkgs, pick, err
                self.packages, self.package, self.models_ready = pkgs, pick, True
            self.events.models_loaded.emit(pkgs, pick, err)
            self.events.model_changed.emit(pick)
            return pkgs, pick, err

        return self._track(self._loader.submit(work))

    def prepare(self, fn: Callable[[], Any]) -> Future:
        """Run ``fn`` on the model thread before any model scan or import submitted later (e.g. importing
        what worker threads use, so none of them imports a module another is half-way through)."""
        return self._loader.submit(fn)

    def select(self, package: Any) -> Any:
        """Select ``package`` (a :class:`~medviewer.inference.ModelPackage`, its path as a string, or None); emits
        ``model_changed``. Returns the selected package (None for an unknown path)."""
        if isinstance(package, str):
            package = next((p for p in self.packages if str(p.path) == package), None)
        self.package = package
        self.events.model_changed.emit(package)
        return package

    def set_provider(self, name: str) -> None:
        """Run later inferences on ``name`` (``auto``, ``cuda`` or ``cpu``)."""
        self.provider = str(name)

    def import_model(self, path: str) -> Future:
        """Validate and install a model package (:func:`medviewer.inference.import_model`) in a worker; the future
        gives the installed package or raises its one-line error."""
        from medviewer.inference import import_model

        return self._track(self._loader.submit(import_model, path))

    # -- the one session cache and the policy ----------------------------------------------------------
    def session(self, package: Any = None) -> Any:
        """The ONNX Runtime :class:`~medviewer.inference.Session` of ``package`` (default: the selected one) on this
        controller's provider, from the process-wide cache :func:`medviewer.inference.open_session`.

        Raises
        ------
        MedViewerError
            No model is selected; InferenceError when onnxruntime cannot create the session.
        """
        from medviewer.inference.session import open_session

        package = package if package is not None else self.package
        if package is None:
            raise MedViewerError("no model selected")
        return open_session(package, self.provider)

    def policy(self, package: Any = None) -> IntendedUsePolicy:
        """The intended-use policy of ``package``'s card (default: the selected one)."""
        package = package if package is not None else self.package
        if package is None:
            raise MedViewerError("no model selected")
        return IntendedUsePolicy(package.card, ignore_intended_use=self.ignore_intended_use)

    def key(self, source: Any, k: int, package: Any = None) -> PredictionKey | None:
        """The :class:`PredictionKey` of frame ``k`` of ``source`` for ``package`` (default: the selected one)."""
        package = package if package is not None else self.package
        if package is None or source is None:
            return None
        return self.reading.prediction_key(source, k, package.sha256)

    def result(self, source: Any, k: int) -> PredictionEntry | None:
        """The selected model's result for frame ``k`` of ``source``, or None (another model's never counts)."""
        return self.reading.prediction(self.key(source, k))

    # -- routing over the installed models -------------------------------------------------------------
    def ordered_packages(self) -> list[Any]:
        """The installed packages, the preferred (selected) one first, then the others in discovery order."""
        pref = self.package
        others = [p for p in self.packages if pref is None or str(p.path) != str(pref.path)]
        return ([pref] if pref is not None else []) + others

    def route(self, source: Any, k: int, *, preferred: bool = True) -> list[Any]:
        """The packages a run on frame ``k`` of ``source`` scores: the preferred model (when ``preferred``:
        the reader asked for it; run again if it has a result) and every other installed model without a
        result for this image that :func:`header_route` lets through; the others' reasons are kept for
        :meth:`results`."""
        inst = source.instance(k)
        chosen = []
        for pkg in self.ordered_packages():
            if preferred and pkg is self.package:
                chosen.append(pkg)
                continue
            key = self.reading.prediction_key(source, k, pkg.sha256)
            if key in self.reading:
                continue  # kept: another model's result is not re-run when the reader re-runs the preferred one
            why = header_route(pkg.card, inst)
            if why is None:
                chosen.append(pkg)
            else:
                self._not_run[key] = why
        return chosen

    def results(self, source: Any, k: int) -> list[ModelResult]:
        """Every installed model's say on frame ``k`` of ``source``, the preferred model first: its result when
        it ran, or the header's reason when routing left it out; models not decided yet are absent."""
        out = []
        for pkg in self.ordered_packages():
            key = self.reading.prediction_key(source, k, pkg.sha256)
            entry = self.reading.prediction(key)
            if entry is not None:
                out.append(ModelResult(pkg, entry, entry.prediction.applicability, pkg is self.package))
            elif key in self._not_run:
                out.append(ModelResult(pkg, None, self._not_run[key], pkg is self.package))
        return out

    def auto_run_packages(self, source: Any, k: int) -> tuple[list[Any], str | None] | None:
        """Run on open over every installed model: None when every model was decided for this image before;
        else ``(packages to run, reason)`` -- the preferred model by its card's modality gate
        (:func:`should_auto_run`, ``reason`` says why it is skipped), each other model by :func:`header_route`.
        Each image and model is decided once."""
        if source is None:
            return None
        inst = source.instance(k)
        decided, run, reason = False, [], None
        for pkg in self.ordered_packages():
            key = self.reading.prediction_key(source, k, pkg.sha256)
            if key in self.reading or key in self._auto_tried:
                continue
            self._auto_tried.add(key)
            decided = True
            if pkg is self.package:
                ok, reason = should_auto_run(pkg.card, inst)
                if ok:
                    run.append(pkg)
                continue
            why = header_route(pkg.card, inst)
            if why is None:
                run.append(pkg)
            else:
                self._not_run[key] = why
        return (run, reason) if decided else None

    def auto_run_check(self, source: Any, k: int) -> tuple[bool, str | None] | None:
        """Run on open for frame ``k`` of ``source``: None when there is nothing to decide (no model, a result or an
        earlier decision for this image and model), else ``(run, reason)`` from the card's intended use
        (:func:`~medviewer.workstation.intended_use.should_auto_run`); each image and model is decided once."""
        key = self.key(source, k)
        if key is None or key in self.reading or key in self._auto_tried:
            return None
        self._auto_tried.add(key)
        return should_auto_run(self.package.card, source.instance(k))

    # -- run / cancel ------------------------------------------------------------------------------------
    @property
    def job(self) -> AiJob | None:
        """The run the reader waits for (None when none, or once it finished or was cancelled)."""
        with self._lock:
            return self._job

    @property
    def busy(self) -> bool:
        """True while a run that has not been cancelled is under way."""
        return self.job is not None

    def pending(self) -> bool:
        """True while any work of this controller (runs, cancelled ones included, model scans) is unfinished."""
        with self._lock:
            return any(not f.done() for f in self._outstanding)

    def run(self, source: Any, k: int, packages: Sequence[Any] | None = None) -> AiJob:
        """Score frame ``k`` of ``source`` (a :class:`~medviewer.workstation.frames.FrameSource`) in a worker with
        ``packages`` -- default :meth:`route`: the selected model and every other installed model whose intended
        use the header meets -- one after the other, the first first: decode once (the viewer's pixels,
        :meth:`FrameSource.decode`), render (:func:`medviewer.imaging.display_image`), then per model predict,
        apply its intended-use policy and keep the result in the reading session. A previous run still under
        way is cancelled. Events: ``started`` now, then from the worker ``prediction_ready`` per model (or
        ``failed``, with the model's name when several run), and ``finished`` once. ``job.future`` gives the
        first model's entry (the first that succeeded); ``job.entries`` all of them.

        Raises
        ------
        MedViewerError
            No model is selected (and none given).
        """
        if packages is None:
            if self.package is None:
                raise MedViewerError("no model selected")
            packages = self.route(source, k)
        packages = list(packages)
        if not packages:
            raise MedViewerError("no model to run")
        package = packages[0]
        keys = [self.reading.prediction_key(source, k, p.sha256) for p in packages]
        job = AiJob(keys[0], package, k, packages=packages, keys=keys)
        inst, frame = source.frames[k]
        spacing = source.spacing(k)
        with self._lock:
            previous, self._job = self._job, job
        if previous is not None:
            self._cancel(previous)

        def one(pkg: Any, key: PredictionKey, img: Any) -> PredictionEntry | None:
            session = self.session(pkg)
            pred = session.predict([img], [spacing])[0]
            self.policy(pkg).apply(inst, pred, img)
            note = (session.fallback_warning, True) if session.fallback_warning else (session.notice, False)
            entry = PredictionEntry(key, pred, session.provider, note, pkg)
            with self._lock:  # a cancel is atomic with keeping the result
                if job.cancelled:
                    return None
                if self._job is job and len(job.entries) + 1 >= len(packages):
                    self._job = None
            job.entries.append(entry)
            self.reading.add_prediction(entry)
            self.events.prediction_ready.emit(entry)
            return entry

        def work() -> PredictionEntry | None:
            from medviewer.imaging import check_not_blank, display_image

            try:
                if job.cancelled:
                    return None
                self.session(package)  # the first model's session (an error here is the run's error)
                stored = source.decode(k)
                img = display_image(inst, frame=frame, stored=stored)  # what the reader sees
                # a constant image is refused, as `medviewer infer` refuses it: never "no finding" on a blank
                check_not_blank(img, getattr(inst, "path", ""), frame if len(source) > 1 else None, stored)
                errors: list[str] = []
                for pkg, key in zip(packages, keys, strict=True):
                    if job.cancelled:
                        return None
                    try:
                        one(pkg, key, img)
                    except Exception as exc:  # one model failing does not stop the others
                        if len(packages) == 1:
                            raise
                        errors.append(f"{pkg.card.name}: {error_line(exc)}")
                if errors and not job.entries:
                    raise MedViewerError("; ".join(errors))
                if errors and not job.cancelled:  # said once, after the models that worked
                    self.events.failed.emit(job, "; ".join(errors))
                return job.entries[0] if job.entries else None
            except Exception as exc:
                with self._lock:
                    mine = self._job is job
                    if mine:
                        self._job = None
                if not job.cancelled:
                    self.events.failed.emit(job, error_line(exc))
                raise
            finally:
                with self._lock:
                    if self._job is job:
                        self._job = None
                self.events.finished.emit(job)

        fut = self._runner.submit(work)
        job.future = fut
        self._track(fut)
        self.events.started.emit(job)
        return job

    def cancel(self) -> bool:
        """Cancel the current run (its result, when it comes, is dropped); emits ``cancelled``. False if none."""
        with self._lock:
            job, self._job = self._job, None
        if job is None:
            return False
        self._cancel(job)
        return True

    def _cancel(self, job: AiJob) -> None:
        with self._lock:
            job._cancel.set()
        job.future.cancel()  # not started yet: never runs
        self.events.cancelled.emit(job)

    # -- many images (medviewer infer) -----------------------------------------------------------------
    def score(self, items: Sequence[Any], *, progress: Callable[[Any], None] | None = None, **kwargs: Any) -> list[Any]:
        """Score many instances / frames with the selected model through the same session cache and intended-use
        policy as :meth:`run`: :func:`medviewer.inference.score_instances` (batched, decoding overlapped);
        ``kwargs`` are passed on (``batch_size``, ``workers``, ``regions``, ``on_done``, ...)."""
        from medviewer.inference.batch import score_instances

        return score_instances(self.session(), items, policy=self.policy(), progress=progress, **kwargs)

    # -- lifetime --------------------------------------------------------------------------------------
    def _track(self, fut: Future) -> Future:
        with self._lock:
            self._outstanding = {f for f in self._outstanding if not f.done()}
            self._outstanding.add(fut)
        return fut

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no work is pending (or ``timeout`` seconds passed); True when idle."""
        import time

        end = None if timeout is None else time.monotonic() + timeout
        while self.pending():
            with self._lock:
                futs = [f for f in self._outstanding if not f.done()]
            for f in futs:
                try:
                    f.exception(timeout=None if end is None else max(0.0, end - time.monotonic()))
                except CancelledError:
                    pass
                except TimeoutError:
                    return False
        return True

    def shutdown(self, timeout: float = 3.0) -> None:
        """Cancel the current run and wait up to ``timeout`` seconds for the workers (application closing)."""
        self.cancel()
        self.wait(timeout)
        self._runner.shutdown(wait=False, cancel_futures=True)
        self._loader.shutdown(wait=False, cancel_futures=True)
